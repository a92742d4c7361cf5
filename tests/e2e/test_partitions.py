"""An agent cut off from the server (the fault proxy cuts every connection and refuses new
ones) keeps running its jobs for as long as their lease, as last renewed, lasts: a partition
shorter than the lease costs nothing (the log waits on disk and arrives whole, the job
succeeds once), and past the lease the agent kills the job itself, so that the run the
server starts elsewhere is the only one."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    agent_token,
    api_client,
    process_alive,
    wait_until,
)
from tests.support.proxy import Proxy

# The server's own lease is short: a job that asks for nothing loses it within seconds, so
# what carries the first job through the partition is its own, longer lease_s.
SERVER = {"TAGRUN_LEASE_S": "4", "TAGRUN_HEARTBEAT_S": "1", "TAGRUN_RETRY_BACKOFF_S": "0.2"}


@pytest.fixture
def server(start_process: Any, database_url: str) -> TagrunProcess:
    return start_process("server", database_url, env=SERVER).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(server.url) as client:
        yield client


def holder(database_url: str, job_id: int) -> tuple[str, bool] | None:
    from tests.support.database import query

    rows = query(database_url, "SELECT worker, ack_by IS NULL AS acked FROM jobs "
                               "WHERE id = $1 AND status = 'running'", job_id)
    return (rows[0]["worker"], rows[0]["acked"]) if rows else None


def test_a_partition_shorter_than_the_jobs_lease_costs_nothing(
    server: TagrunProcess, api: httpx.Client, database_url: str, tmp_path: Path
) -> None:
    go, printed, release = tmp_path / "go", tmp_path / "printed", tmp_path / "release"
    lines = 20_000  # about 2.2 MB: more than the agent holds in memory, so it spools
    content = (f'echo start; while [ ! -f {go} ]; do sleep 0.05; done; '
               f'for i in $(seq 1 {lines}); do echo "tick $i $(printf "%0100d" 0)"; done; '
               f'touch {printed}; while [ ! -f {release} ]; do sleep 0.05; done; echo end')
    proxy = Proxy(server.port)
    work = tmp_path / "work"
    work.mkdir()
    agent = AgentProcess(proxy.url, agent_token(api, ["site-a"], "site"), tmp_path, name="site-a",
                         env={"AGENT_WORK_DIR": str(work)})
    try:
        job = api.post("/api/w/default/jobs", json={
            "language": "bash", "tag": "site-a", "content": content, "lease_s": 60}).json()
        wait_until(lambda: holder(database_url, job["id"]) == ("site-a", True),
                   message="the agent to hold and acknowledge the job")
        proxy.partition()
        cut_at = time.monotonic()
        go.touch()
        wait_until(printed.exists, 60, message="the job to print its 20,000 lines")
        spools = wait_until(lambda: list(work.glob(f"tagrun-agent-*/job{job['id']}-1-*.log")),
                            message="the log to wait in a spool file")
        assert stat.S_IMODE(spools[0].stat().st_mode) == 0o600
        # Longer than the server's own 4 s lease: only the job's lease_s keeps it.
        wait_until(lambda: time.monotonic() - cut_at > 6, message="the partition to last 6 s")
        assert proxy.refused > 0  # the agent kept trying
        proxy.heal()
        release.touch()
        final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 60}).json()
        assert (final["status"], final["attempt"], final["result"]) == ("succeeded", 1, "end")
        log = api.get(f"/api/w/default/jobs/{job['id']}/logs").json()["data"]
        expected = "start\n" + "".join(f"tick {i} {'0' * 100}\n" for i in range(1, lines + 1)) \
            + "end\n"
        assert log == expected
        assert not spools[0].exists()
        assert '"event": "job.lease_ran_out"' not in agent.log_text()
    finally:
        proxy.close()
        agent.kill()


def test_past_its_lease_the_cut_off_agent_kills_the_job_and_the_run_elsewhere_counts(
    server: TagrunProcess, api: httpx.Client, database_url: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    content = (f'echo $$ >> {pids}; n=$(wc -l < {pids}); '
               f'if [ "$n" -eq 1 ]; then while true; do echo "tick"; sleep 0.2; done; fi; '
               f'echo "second run"')
    proxy = Proxy(server.port)
    token = agent_token(api, ["site-b"], "site")
    cut_off = AgentProcess(proxy.url, token, tmp_path, name="cut-off")
    other = None
    try:
        job = api.post("/api/w/default/jobs", json={
            "language": "bash", "tag": "site-b", "content": content, "lease_s": 6}).json()
        wait_until(lambda: holder(database_url, job["id"]) == ("cut-off", True),
                   message="the first agent to hold and acknowledge the job")
        wait_until(lambda: "tick" in api.get(f"/api/w/default/jobs/{job['id']}/logs")
                   .json()["data"], message="the first run's output to arrive")
        first_pid = int(pids.read_text().split()[0])
        proxy.partition()
        cut_off.wait_logged("job.lease_ran_out", timeout=30)
        wait_until(lambda: not process_alive(first_pid), message="the first run to be killed")
        other = AgentProcess(server.url, token, tmp_path, name="other")
        final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 30}).json()
        assert (final["status"], final["attempt"], final["worker"], final["result"]) == (
            "succeeded", 2, "other", "second run")
        assert final["attempts"][0]["error"]["kind"] == "lease_expired"
        log_before_heal = api.get(f"/api/w/default/jobs/{job['id']}/logs").json()["data"]
        healed_at = datetime.now(UTC)
        proxy.heal()
        # Back in reach, the cut-off agent sends nothing of the dropped run.
        wait_until(lambda: seen_since(api, "cut-off", healed_at), 30,
                   message="the cut-off agent to reach the server again")
        after = api.get(f"/api/w/default/jobs/{job['id']}").json()
        assert (after["status"], after["attempt"], after["result"]) == (
            "succeeded", 2, "second run")
        log = api.get(f"/api/w/default/jobs/{job['id']}/logs").json()["data"]
        assert log == log_before_heal and log.endswith("second run\n")
        assert cut_off.proc.poll() is None
    finally:
        proxy.close()
        cut_off.kill()
        if other is not None:
            other.kill()


def seen_since(api: httpx.Client, name: str, since: datetime) -> bool:
    agents = api.get("/api/workers").json()["agents"]
    return any(a["name"] == name and a["last_seen"] and
               datetime.fromisoformat(a["last_seen"]) > since for a in agents)
