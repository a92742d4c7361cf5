"""Schedules in real time: real server processes, real workers, real cron seconds.

These tests sleep to let cron seconds pass: the passing of real time is what they test. Waits
for anything else poll with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.database import DatabaseFactory
from tests.support.processes import SUPERADMIN, TagrunProcess, api_client, wait_until

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def standalone(databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[TagrunProcess]:
    """A standalone server (scheduler + in-process worker) of this module's own."""
    proc = TagrunProcess("standalone", database_url=databases.new(),
                         data_dir=tmp_path_factory.mktemp("schedules"))
    proc.wait_healthy()
    yield proc
    proc.stop()


@pytest.fixture
def api(standalone: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(standalone.url) as client:
        yield client


def workspace_with_script(api: httpx.Client, content: str, language: str = "sh") -> str:
    ws = f"cron-{uuid.uuid4().hex[:10]}"
    assert api.post("/api/workspaces", json={"id": ws}).status_code == 201
    assert api.post(f"/api/w/{ws}/scripts", json={
        "path": "f/job", "language": language, "content": content}).status_code == 201
    return ws


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def let_it_fire(api: httpx.Client, ws: str, seconds: float, **fields: Any) -> None:
    """Create schedule `s`, let real cron seconds pass, then disable it."""
    created = api.post(f"/api/w/{ws}/schedules", json={"name": "s", "script": "f/job", **fields})
    assert created.status_code == 201, created.text
    time.sleep(seconds)  # real time passing is the behaviour under test
    assert api.patch(f"/api/w/{ws}/schedules/s", json={"enabled": False}).status_code == 200


def fires(api: httpx.Client, ws: str) -> list[dict[str, Any]]:
    view = api.get(f"/api/w/{ws}/schedules/s", params={"runs": 1000}).json()
    return list(reversed(view["last_runs"]))


def finished_jobs(api: httpx.Client, ws: str, ids: list[int]) -> list[dict[str, Any]]:
    jobs = [api.get(f"/api/w/{ws}/jobs/{i}", params={"wait_s": 20}).json() for i in ids]
    assert all(j["status"] in FINAL for j in jobs), [j["status"] for j in jobs]
    return jobs


def assert_every_second_recorded(found: list[dict[str, Any]]) -> None:
    times = [when(f["fire_at"]) for f in found]
    assert all(b - a == timedelta(seconds=1) for a, b in zip(times, times[1:], strict=False)), \
        f"a fire time is missing or repeated: {[f['fire_at'] for f in found]}"


def assert_never_overlapping(jobs: list[dict[str, Any]]) -> None:
    ran = sorted((when(j["started_at"]), when(j["finished_at"])) for j in jobs
                 if j["started_at"])
    for (_, end), (start, _) in zip(ran, ran[1:], strict=False):
        assert start >= end, f"two runs of one schedule overlapped: {ran}"


def test_a_six_field_schedule_every_two_seconds(api: httpx.Client) -> None:
    ws = workspace_with_script(api, "", language="identity")
    let_it_fire(api, ws, 7.0, cron="*/2 * * * * *")
    found = fires(api, ws)
    times = [when(f["fire_at"]) for f in found]
    assert 3 <= len(times) <= 4, times
    assert all(t.second % 2 == 0 for t in times)
    assert all(b - a == timedelta(seconds=2) for a, b in zip(times, times[1:], strict=False))
    jobs = finished_jobs(api, ws, [f["job_id"] for f in found])
    assert {j["status"] for j in jobs} == {"succeeded"}
    for fire, job in zip(found, jobs, strict=True):
        late = (when(job["created_at"]) - when(fire["fire_at"])).total_seconds()
        assert 0 <= late < 1.0, f"job {job['id']} made {late:.2f}s after its fire time"


def test_queue_runs_one_after_another_and_loses_no_fire(api: httpx.Client) -> None:
    ws = workspace_with_script(api, "sleep 1.2")
    let_it_fire(api, ws, 4.0, cron="* * * * * *", overlap="queue")
    found = fires(api, ws)
    assert len(found) >= 3 and {f["status"] for f in found} != {"skipped"}
    assert all(f["job_id"] is not None for f in found), found
    assert_every_second_recorded(found)
    jobs = finished_jobs(api, ws, [f["job_id"] for f in found])
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert_never_overlapping(jobs)
    assert [j["id"] for j in sorted(jobs, key=lambda j: j["started_at"])] == \
        [f["job_id"] for f in found], "runs should start in the order of their fires"


def test_skip_drops_fires_while_a_run_is_active_and_records_them(api: httpx.Client) -> None:
    ws = workspace_with_script(api, "sleep 2.5")
    let_it_fire(api, ws, 5.0, cron="* * * * * *", overlap="skip")
    found = fires(api, ws)
    assert_every_second_recorded(found)
    skipped = [f for f in found if f["status"] == "skipped"]
    ran = [f for f in found if f["job_id"] is not None]
    assert len(skipped) >= 2 and len(ran) >= 2, found
    assert all("still queued or running" in f["message"] for f in skipped)
    jobs = finished_jobs(api, ws, [f["job_id"] for f in ran])
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert_never_overlapping(jobs)


def test_replace_cancels_the_running_run_and_kills_its_process(
        api: httpx.Client, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    ws = workspace_with_script(api, f"echo $$ >> {pids}; exec sleep 30")
    let_it_fire(api, ws, 4.0, cron="* * * * * *", overlap="replace")
    found = fires(api, ws)
    assert_every_second_recorded(found)
    assert all(f["job_id"] is not None for f in found), found
    last = found[-1]["job_id"]
    api.post(f"/api/w/{ws}/jobs/{last}/cancel")  # the schedule is disabled; end its last run
    jobs = finished_jobs(api, ws, [f["job_id"] for f in found])
    replaced = [j for j in jobs if j["id"] != last]
    assert {j["status"] for j in replaced} == {"cancelled"}
    ran = [j for j in replaced if j["started_at"]]
    assert len(ran) >= 1, "at least one replaced run had started"
    assert all(j["error"]["kind"] == "cancelled" for j in jobs)
    assert any(f["message"] and f["message"].startswith("replaced run") for f in found)
    assert_never_overlapping(jobs)
    started = [int(p) for p in pids.read_text().split()]
    # A run cancelled within milliseconds of its start may die before it writes its pid.
    assert 1 <= len(started) <= len([j for j in jobs if j["started_at"]])

    def all_dead() -> bool:
        return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in started)
    wait_until(all_dead, 10, message="the processes of replaced runs to be killed")


def test_two_replicas_make_one_job_per_fire_time(
        start_process: Any, database_url: str) -> None:
    replicas = [start_process("server", database_url) for _ in range(2)]
    worker = start_process("worker", database_url, env={"WORKER_NAME": "w1"})
    for replica in replicas:
        replica.wait_healthy()
    worker.wait_logged("worker.started")
    with api_client(replicas[0].url) as api:
        ws = workspace_with_script(api, "", language="identity")
        let_it_fire(api, ws, 5.0, cron="* * * * * *")
        found = fires(api, ws)
        assert 4 <= len(found) <= 6, found
        assert_every_second_recorded(found)
        jobs = api.get(f"/api/w/{ws}/jobs", params={"limit": 1000}).json()["jobs"]
        assert sorted(j["id"] for j in jobs) == sorted(f["job_id"] for f in found), \
            "every job of the schedule belongs to exactly one fire time"
        finished = finished_jobs(api, ws, [j["id"] for j in jobs])
        assert {j["status"] for j in finished} == {"succeeded"}
    logged = sum(line.count('"event": "schedule.fired"') for r in replicas
                 for line in r.log_text().splitlines() if ws in line)
    assert logged == len(found), "a fire was recorded by two replicas"


# --- the CLI ----------------------------------------------------------------------------------


def tagrun(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGRUN_")}
    env.update({"TAGRUN_URL": url, "TAGRUN_TOKEN": SUPERADMIN, "NO_COLOR": "1"})
    return subprocess.run([str(Path(sys.executable).parent / "tagrun"), *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_create_list_get_enable_disable_delete(
        api: httpx.Client, standalone: TagrunProcess) -> None:
    ws = workspace_with_script(api, "", language="identity")
    url = standalone.url
    created = tagrun(url, "schedule", "create", "yearly", "-w", ws, "--cron", "0 0 0 1 1 *",
                     "--script", "f/job", "--timezone", "Europe/Paris", "--overlap", "skip")
    assert created.returncode == 0, created.stderr
    assert "yearly (enabled)" in created.stdout and "Next fires:" in created.stdout
    listed = tagrun(url, "schedule", "list", "-w", ws)
    assert "yearly" in listed.stdout and "Europe/Paris" in listed.stdout
    assert "tagrun.job-retention" in tagrun(url, "schedule", "list").stdout
    assert '"overlap": "skip"' in tagrun(url, "schedule", "get", "yearly", "-w", ws,
                                         "-o", "json").stdout
    assert "disabled" in tagrun(url, "schedule", "disable", "yearly", "-w", ws).stdout
    assert "enabled" in tagrun(url, "schedule", "enable", "yearly", "-w", ws).stdout
    assert tagrun(url, "schedule", "delete", "yearly", "-w", ws).returncode == 0
    refused = tagrun(url, "schedule", "delete", "tagrun.job-retention")
    assert refused.returncode != 0 and "cannot be deleted" in refused.stderr
    bad = tagrun(url, "schedule", "create", "bad", "-w", ws, "--cron", "61 * * * *",
                 "--script", "f/job")
    assert bad.returncode != 0 and "61 * * * *" in bad.stderr
    assert "Traceback" not in bad.stderr + refused.stderr
