"""Real processes together: a server, direct workers, the embedded PostgreSQL, signals."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import psutil

from tests.support.database import DatabaseFactory
from tests.support.processes import api_client, wait_until


def _finished(api: object, ids: list[int]) -> list[dict[str, object]]:
    jobs = []
    for job_id in ids:
        job = api.get(f"/api/w/default/jobs/{job_id}", params={"wait_s": 30}).json()  # type: ignore[attr-defined]
        jobs.append(job)
    return jobs


def test_server_and_two_workers_run_each_job_exactly_once(
    start_process, database_url: str, tmp_path: Path
) -> None:
    server = start_process("server", database_url).wait_healthy()
    workers = [
        start_process("worker", database_url, env={"WORKER_NAME": f"w{i}", "WORKER_SLOTS": "4"})
        for i in (1, 2)
    ]
    for worker in workers:
        worker.wait_logged("worker.started")
    ran = tmp_path / "ran.txt"
    script = f'n=$(cat "$TAGRUN_ARGS_FILE"); echo "$n" >> {ran}; echo "$n"'
    with api_client(server.url) as api:
        batch = [{"language": "sh", "content": script, "args": {"n": i}} for i in range(1000)]
        ids = api.post("/api/w/default/jobs/batch", json={"jobs": batch}).json()["ids"]
        jobs = _finished(api, ids)
    assert Counter(j["status"] for j in jobs) == {"succeeded": 1000}
    assert {j["attempt"] for j in jobs} == {1}
    runs = Counter(ran.read_text().splitlines())
    assert len(runs) == 1000 and set(runs.values()) == {1}, "a job ran twice or not at all"
    by_worker = Counter(j["worker"] for j in jobs)
    assert set(by_worker) == {"w1", "w2"}, f"both workers should have worked: {by_worker}"
    for proc in (*workers, server):
        assert proc.stop() == 0


def test_a_worker_never_runs_more_jobs_at_once_than_its_slots(
    start_process, database_url: str, tmp_path: Path
) -> None:
    """A job whose process has ended frees its slot while its outcome is written (the next
    claim overlaps the report): the slots still bound the processes running at once."""
    server = start_process("server", database_url).wait_healthy()
    worker = start_process("worker", database_url, env={"WORKER_NAME": "w2slots",
                                                        "WORKER_SLOTS": "2"})
    worker.wait_logged("worker.started")
    running, seen = tmp_path / "running", tmp_path / "seen.txt"
    running.mkdir()
    script = (f'touch {running}/$$; ls {running} | wc -l >> {seen}; sleep 0.05; '
              f'rm {running}/$$')
    with api_client(server.url) as api:
        batch = [{"language": "sh", "content": script} for _ in range(40)]
        ids = api.post("/api/w/default/jobs/batch", json={"jobs": batch}).json()["ids"]
        jobs = _finished(api, ids)
    assert Counter(j["status"] for j in jobs) == {"succeeded": 40}
    counts = [int(n) for n in seen.read_text().split()]
    assert len(counts) == 40 and max(counts) <= 2, counts


def test_two_processes_migrate_an_empty_database_at_once(
    start_process, databases: DatabaseFactory
) -> None:
    empty = databases.new(migrated=False)
    first, second = start_process("server", empty), start_process("server", empty)
    first.wait_healthy()
    second.wait_healthy()
    with api_client(second.url) as api:
        assert api.get("/api/w/default/jobs").status_code == 200


def test_embedded_postgres_stops_with_the_server(start_process, tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        data_dir = tmp_path / sig.name
        proc = start_process("standalone", None, data_dir=data_dir).wait_healthy()
        postmaster = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        assert psutil.pid_exists(postmaster)
        with api_client(proc.url) as api:
            job = api.post("/api/w/default/jobs", json={"language": "bash", "content": "echo"})
            assert job.status_code == 201
        proc.proc.send_signal(sig)
        assert proc.proc.wait(20) == 0
        wait_until(lambda p=postmaster: not psutil.pid_exists(p), 10,
                   message="the embedded postgres to stop")


def test_killed_worker_job_is_run_again_elsewhere(
    start_process, database_url: str, tmp_path: Path
) -> None:
    fast_leases = {"TAGRUN_LEASE_S": "2", "TAGRUN_HEARTBEAT_S": "0.5"}
    server = start_process("server", database_url, env=fast_leases).wait_healthy()
    doomed = start_process("worker", database_url, env={**fast_leases, "WORKER_NAME": "doomed"})
    doomed.wait_logged("worker.started")
    with api_client(server.url) as api:
        pids = tmp_path / "pids"
        job = api.post("/api/w/default/jobs", json={
            "language": "bash", "content": f'echo $$ >> {pids}; sleep 600'}).json()
        wait_until(lambda: api.get(f"/api/w/default/jobs/{job['id']}").json()["status"]
                   == "running", message="the job to start")
        wait_until(pids.exists, message="the job's shell to start")
        doomed.kill()
        # A worker killed with -9 cannot stop its job's processes; end them ourselves.
        os.killpg(int(pids.read_text().split()[0]), signal.SIGKILL)
        survivor = start_process("worker", database_url,
                                 env={**fast_leases, "WORKER_NAME": "survivor"})
        survivor.wait_logged("worker.started")
        requeued = wait_until(
            lambda: (j := api.get(f"/api/w/default/jobs/{job['id']}").json())["attempt"] == 2
            and j["status"] == "running" and j, 20, message="the job to be re-run")
        assert requeued["worker"] == "survivor"
        assert requeued["error"]["kind"] == "lease_expired"
        api.post(f"/api/w/default/jobs/{job['id']}/cancel")
        final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 20}).json()
        assert final["status"] == "cancelled"


def test_a_second_signal_exits_at_once_and_still_stops_the_embedded_postgres(
    start_process, tmp_path: Path
) -> None:
    proc = start_process("standalone", None, data_dir=tmp_path / "d").wait_healthy()
    postmaster = int((tmp_path / "d" / "pg" / "postmaster.pid").read_text().split()[0])
    pids = tmp_path / "pids"
    with api_client(proc.url) as api:  # a job that would hold the graceful drain for minutes
        api.post("/api/w/default/jobs",
                 json={"language": "bash", "content": f"echo $$ > {pids}; sleep 300"})
    wait_until(pids.exists, message="the job to start")
    job_shell = int(pids.read_text())
    proc.proc.send_signal(signal.SIGTERM)
    proc.wait_logged("server.stopping")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(15) == 130
    wait_until(lambda: not psutil.pid_exists(postmaster), 10,
               message="the embedded postgres to stop")
    wait_until(lambda: not psutil.pid_exists(job_shell), 10, message="the job to be killed")
