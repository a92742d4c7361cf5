"""A real server and real `tagrun-agent` processes, as a user runs them."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.database import query
from tests.support.processes import AgentProcess, TagrunProcess, api_client, wait_until

FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}


@pytest.fixture
def fast_server(start_process, database_url: str) -> TagrunProcess:
    return start_process("standalone", database_url, env=FAST).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(fast_server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(fast_server.url) as client:
        yield client


@pytest.fixture
def start_agent(fast_server: TagrunProcess, api: httpx.Client, tmp_path: Path
                ) -> Iterator[Callable[..., tuple[AgentProcess, dict[str, object]]]]:
    agents: list[AgentProcess] = []

    def start(tags: list[str], **env: str) -> tuple[AgentProcess, dict[str, object]]:
        minted = api.post("/api/agent_tokens", json={"group": "edge", "tags": tags}).json()
        agent = AgentProcess(fast_server.url, minted["token"], tmp_path,
                             name=f"agent-{uuid.uuid4().hex[:6]}", env=env)
        agents.append(agent)
        return agent, minted

    yield start
    for agent in agents:
        agent.kill()


def run(api: httpx.Client, body: dict[str, object], wait_s: float = 30) -> dict[str, object]:
    job = api.post("/api/w/default/jobs", json=body).json()
    return api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": wait_s}).json()  # type: ignore[no-any-return]


def test_agent_runs_bash_and_python_jobs(api: httpx.Client, start_agent) -> None:
    agent, minted = start_agent(["edge-linux"], AGENT_SLOTS="2")
    agent.wait_logged("agent.started")
    bash = run(api, {"language": "bash", "tag": "edge-linux",
                     "content": 'echo "line one"; echo "{\\"host\\": \\"edge\\"}"'})
    assert (bash["status"], bash["result"], bash["worker"]) == ("succeeded", {"host": "edge"},
                                                                agent.name)
    logs = api.get(f"/api/w/default/jobs/{bash['id']}/logs").json()
    assert "line one" in logs["data"] and logs["done"]
    python = run(api, {"language": "python", "tag": "edge-linux", "args": {"n": 20},
                       "content": "def main(n):\n    print('working')\n"
                                  "    return {'double': n * 2}\n"})
    assert (python["status"], python["result"]) == ("succeeded", {"double": 40})
    fleet = api.get("/api/workers").json()
    [me] = [a for a in fleet["agents"] if a["name"] == agent.name]
    assert (me["kind"], me["group"], me["tags"]) == ("agent", "edge", ["edge-linux"])
    assert me["jobs_executed"] == 2
    assert str(minted["token"]) not in agent.log_text()


IDENTITY_SCRIPT = ('printf \'{"id":"%s","ws":"%s","attempt":"%s","tag":"%s","worker":"%s"}\' '
                   '"$TAGRUN_JOB_ID" "$TAGRUN_WORKSPACE" "$TAGRUN_JOB_ATTEMPT" "$TAGRUN_JOB_TAG" '
                   '"$TAGRUN_WORKER"')


def test_a_job_knows_its_id_workspace_attempt_tag_and_worker(api: httpx.Client, start_agent
                                                             ) -> None:
    agent, _ = start_agent(["edge-env"])
    on_agent = run(api, {"language": "bash", "tag": "edge-env", "content": IDENTITY_SCRIPT})
    assert on_agent["result"] == {"id": str(on_agent["id"]), "ws": "default", "attempt": "1",
                                  "tag": "edge-env", "worker": agent.name}
    inline = run(api, {"language": "bash", "content": IDENTITY_SCRIPT})
    assert inline["result"] == {"id": str(inline["id"]), "ws": "default", "attempt": "1",
                                "tag": "bash", "worker": inline["worker"]}


def test_cancel_kills_the_job_on_the_agent(api: httpx.Client, start_agent, tmp_path: Path
                                           ) -> None:
    agent, _ = start_agent(["edge-cancel"])
    pids = tmp_path / "pid"
    job = api.post("/api/w/default/jobs", json={
        "language": "bash", "tag": "edge-cancel", "content": f"echo $$ > {pids}; sleep 300"
    }).json()
    wait_until(pids.exists, message="the job to start on the agent")
    api.post(f"/api/w/default/jobs/{job['id']}/cancel")
    final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 15}).json()
    assert final["status"] == "cancelled"
    import psutil
    wait_until(lambda: not psutil.pid_exists(int(pids.read_text())), 5,
               message="the job's process to be killed")
    assert agent.proc.poll() is None


def test_revoked_token_stops_the_agent_with_status_3(api: httpx.Client, start_agent) -> None:
    agent, minted = start_agent(["edge-revoke"])
    agent.wait_logged("agent.started")
    wait_until(lambda: any(a["name"] == agent.name
                           for a in api.get("/api/workers").json()["agents"]),
               message="the agent to connect")
    api.delete(f"/api/agent_tokens/{minted['jti']}")
    assert agent.wait_exit(15) == 3
    assert str(minted["token"]) not in agent.log_text()


def test_sigterm_lets_the_running_job_finish(api: httpx.Client, start_agent, tmp_path: Path
                                             ) -> None:
    agent, _ = start_agent(["edge-drain"], AGENT_DRAIN_TIMEOUT_S="30")
    go = tmp_path / "go"
    job = api.post("/api/w/default/jobs", json={
        "language": "bash", "tag": "edge-drain",
        "content": f"echo started; while [ ! -f {go} ]; do sleep 0.05; done; echo finished"
    }).json()
    wait_until(lambda: "started" in api.get(f"/api/w/default/jobs/{job['id']}/logs").json()
               ["data"], message="the job to start")
    agent.proc.send_signal(signal.SIGTERM)
    agent.wait_logged("agent.draining")
    later = api.post("/api/w/default/jobs", json={"language": "bash", "tag": "edge-drain",
                                                  "content": "echo too late"}).json()
    go.touch()
    assert agent.wait_exit(20) == 0
    final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 5}).json()
    assert (final["status"], final["result"]) == ("succeeded", "finished")
    assert api.get(f"/api/w/default/jobs/{later['id']}").json()["status"] == "queued"


def test_two_replicas_share_jobs_tokens_and_revocations(
    start_process, database_url: str, tmp_path: Path
) -> None:
    """A job submitted on one replica reaches an agent long-polling another (NOTIFY reaches
    every replica), and a token revoked on one is refused by the other within 5 s."""
    first = start_process("server", database_url, env=FAST).wait_healthy()
    second = start_process("server", database_url, env=FAST).wait_healthy()
    with api_client(first.url) as api_first, api_client(second.url) as api_second:
        minted = api_first.post("/api/agent_tokens",
                                json={"group": "edge", "tags": ["replicated"]}).json()
        agent = AgentProcess(second.url, minted["token"], tmp_path, name="on-second")
        try:
            agent.wait_logged("agent.started")
            wait_until(lambda: any(a["name"] == "on-second"
                                   for a in api_first.get("/api/workers").json()["agents"]),
                       message="the agent to show on the other replica")
            done = run(api_first, {"language": "bash", "tag": "replicated",
                                   "content": "echo across"}, wait_s=15)
            assert (done["status"], done["worker"]) == ("succeeded", "on-second")
            revoked_at = time.monotonic()
            api_first.delete(f"/api/agent_tokens/{minted['jti']}")
            assert agent.wait_exit(15) == 3
            assert time.monotonic() - revoked_at < 5, "revocation took over 5 s to reach it"
            with api_client(second.url, minted["token"]) as revoked:
                claim = revoked.post("/api/agent_workers/claim", json={"name": "x", "wait_s": 0})
                assert claim.status_code == 401
            assert api_second.get("/api/health").status_code == 200
        finally:
            agent.kill()


def _worker_row_version(database_url: str, name: str) -> str:
    """The row version (xmin) of an agent's record: it changes whenever the row is written."""
    [row] = query(database_url, "SELECT xmin::text AS v FROM workers WHERE name = $1", name)
    return str(row["v"])


def test_an_idle_agent_costs_no_row_writes_and_goes_stale_when_its_replica_dies(
    start_process, database_url: str, tmp_path: Path
) -> None:
    """An agent that only long-polls is kept alive by the replica holding it marking itself
    alive, not by rewriting the agent's record: the record is untouched for longer than the
    stale threshold while every replica shows the agent live. When that replica is killed,
    the others show the agent stale and log `agent.stale`."""
    env = {**FAST, "TAGRUN_STALE_AFTER_S": "6"}
    holder = start_process("server", database_url, env=env).wait_healthy()
    other = start_process("server", database_url, env=env).wait_healthy()
    with api_client(holder.url) as api_holder, api_client(other.url) as api_other:
        minted = api_holder.post("/api/agent_tokens",
                                 json={"group": "edge", "tags": ["held"]}).json()
        agent = AgentProcess(holder.url, minted["token"], tmp_path, name="held-agent")
        try:
            def listed() -> dict[str, Any] | None:
                return next((a for a in api_other.get("/api/workers").json()["agents"]
                             if a["name"] == "held-agent"), None)
            first = wait_until(listed, message="the agent to show on the other replica")
            holder.wait_logged("agent.connected")
            version = _worker_row_version(database_url, "held-agent")
            started = datetime.fromisoformat(first["last_seen"])

            def live_for_a_while() -> bool:
                now = listed()
                assert now is not None and not now["stale"], now
                return datetime.fromisoformat(now["last_seen"]) - started > timedelta(seconds=8)
            wait_until(live_for_a_while, 20, interval=0.5,
                       message="the agent's last_seen to move on by 8 s")
            assert _worker_row_version(database_url, "held-agent") == version, \
                "an idle agent's record was rewritten"

            holder.kill()  # kill -9: it never says its agents are gone
            wait_until(lambda: (a := listed()) is not None and a["stale"], 30,
                       message="the other replica to show the agent stale")
            other.wait_logged("agent.stale", timeout=15)
        finally:
            agent.kill()


def test_job_of_a_killed_agent_finishes_on_another_after_its_lease(
    api: httpx.Client, start_agent, tmp_path: Path, database_url: str
) -> None:
    doomed, _ = start_agent(["edge-kill"])
    pids = tmp_path / "pids"
    job = api.post("/api/w/default/jobs", json={
        "language": "bash", "tag": "edge-kill",
        "content": f'echo $$ >> {pids}; [ "$(wc -l < {pids})" -gt 1 ] || sleep 300; echo ok'
    }).json()
    wait_until(pids.exists, message="the job to start on the first agent")
    # Killed once it acknowledged the job (before that, the job would go back unused:
    # tests/e2e/test_claim_ack.py), so the kill costs an attempt.
    wait_until(lambda: query(database_url, "SELECT ack_by FROM jobs WHERE id = $1",
                             job["id"])[0]["ack_by"] is None, message="the acknowledgement")
    doomed.proc.kill()  # kill -9: no drain, no release, no completion
    doomed.proc.wait()
    os.killpg(int(pids.read_text().split()[0]), signal.SIGKILL)  # what -9 left behind
    survivor, _ = start_agent(["edge-kill"])
    final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 30}).json()
    assert (final["status"], final["attempt"], final["worker"], final["result"]) == (
        "succeeded", 2, survivor.name, "ok")


def test_an_agent_killed_is_reported_stale_once(start_process, database_url: str,
                                                 tmp_path: Path) -> None:
    import json

    server = start_process("server", database_url,
                           env={**FAST, "TAGRUN_STALE_AFTER_S": "6"}).wait_healthy()
    with api_client(server.url) as api:
        minted = api.post("/api/agent_tokens",
                          json={"group": "edge", "tags": ["stale"]}).json()
        agent = AgentProcess(server.url, minted["token"], tmp_path, name="gone")
        agent.wait_logged("agent.started")
        api.post("/api/w/default/jobs", json={"language": "bash", "tag": "stale",
                                              "content": "sleep 60"})
        wait_until(lambda: any(a["name"] == "gone" and not a["stale"] and a["active_count"] == 1
                               for a in api.get("/api/workers").json()["agents"]),
                   message="the agent to show as live, running its job")
        agent.kill()  # kill -9: it never says goodbye

        def stale_events() -> list[dict[str, object]]:
            lines = [json.loads(line) for line in server.log_text().splitlines()
                     if line.startswith("{")]
            return [e for e in lines if e["event"] == "agent.stale"]
        [event] = wait_until(stale_events, 20, message="agent.stale in the server's log")
        assert (event["agent"], event["group"], event["tags"]) == ("gone", "edge", ["stale"])
        gone = [a for a in api.get("/api/workers").json()["agents"] if a["name"] == "gone"]
        assert gone and gone[0]["stale"]
        assert gone[0]["active_count"] == 0  # a stale agent runs nothing the server counts
        assert len(stale_events()) == 1
