"""An agent's state is true at once: an agent that stops cleanly says so as its last act and
shows `stopped` by the time its process has exited; a revoked token shows `token_revoked` the
moment the revocation returns; the same word in the API, the CLI and the metrics."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_cli import ok, run_cli
from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    agent_token,
    api_client,
    wait_until,
)


def listed(api: httpx.Client, name: str) -> dict[str, Any] | None:
    return next((a for a in api.get("/api/workers").json()["agents"] if a["name"] == name),
                None)


def metric(url: str, state: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^tagrun_agents{{state="{state}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else -1.0


def test_an_agent_stopped_cleanly_shows_stopped_as_it_exits_and_live_when_back(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        token = agent_token(api, ["calm"])
        agent = AgentProcess(server.url, token, tmp_path, name="calm-1")
        try:
            wait_until(lambda: (a := listed(api, "calm-1")) is not None
                       and a["state"] == "live", message="the agent to show live")
            agent.proc.send_signal(signal.SIGTERM)
            assert agent.wait_exit() == 0
            # No waiting: its goodbye was answered before it exited.
            gone = listed(api, "calm-1")
            assert gone is not None
            assert (gone["state"], gone["stop_reason"], gone["stale"]) == (
                "stopped", "stopped", False)
            assert gone["stopped_at"] is not None
            fleet = api.get("/api/workers").json()
            assert not any(p["live_agents"] for p in fleet["pools"] if p["group"] == "edge")
            table = ok(run_cli("workers", url=server.url)).stdout
            [row] = [line for line in table.splitlines() if line.startswith("calm-1")]
            assert "stopped" in row.split()
            wait_until(lambda: metric(server.url, "stopped") == 1.0,
                       message="tagrun_agents{state=\"stopped\"} 1 (the metrics cache 1 s)")
        finally:
            agent.kill()

        back = AgentProcess(server.url, token, tmp_path, name="calm-1")
        try:
            wait_until(lambda: (a := listed(api, "calm-1")) is not None
                       and a["state"] == "live", message="the restarted agent to show live")
            assert listed(api, "calm-1")["stopped_at"] is None  # type: ignore[index]
        finally:
            back.kill()


def test_a_revoked_token_shows_token_revoked_the_moment_it_is_revoked(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        token = agent_token(api, ["doomed"])
        [jti] = [t["jti"] for t in api.get("/api/agent_tokens").json()["agent_tokens"]]
        agent = AgentProcess(server.url, token, tmp_path, name="doomed-1")
        try:
            wait_until(lambda: (a := listed(api, "doomed-1")) is not None
                       and a["state"] == "live", message="the agent to show live")
            assert api.delete(f"/api/agent_tokens/{jti}").status_code == 200
            assert listed(api, "doomed-1")["state"] == "token_revoked"  # type: ignore[index]
            fleet = api.get("/api/workers").json()
            assert not any(t["live_workers"] for t in fleet["tags"] if t["tag"] == "doomed")
            assert agent.wait_exit() == 3  # it learns on its next request, and exits
            assert listed(api, "doomed-1")["state"] == "token_revoked"  # type: ignore[index]
        finally:
            agent.kill()


def test_an_agent_cannot_say_goodbye_for_another(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        victim = AgentProcess(server.url, agent_token(api, ["v"]), tmp_path, name="victim-1")
        try:
            wait_until(lambda: (a := listed(api, "victim-1")) is not None
                       and a["state"] == "live", message="the victim to show live")
            with api_client(server.url, agent_token(api, ["a"])) as attacker:
                forged = attacker.post("/api/agent_workers/goodbye", json={"name": "victim-1"})
                assert forged.status_code == 404, forged.text
                assert forged.json()["error"]["code"] == "not_found"
                bad = attacker.post("/api/agent_workers/goodbye",
                                    json={"name": "victim-1", "reason": "Bye Now"})
                assert bad.status_code == 400 and "reason" in bad.json()["error"]["message"]
            with api_client(server.url, "not-a-token") as nobody:
                assert nobody.post("/api/agent_workers/goodbye",
                                   json={"name": "victim-1"}).status_code == 401
            assert listed(api, "victim-1")["state"] == "live"  # type: ignore[index]
            assert victim.proc.poll() is None
        finally:
            victim.kill()


def test_a_direct_worker_stopped_cleanly_shows_stopped(
        start_process: Any, database_url: str) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    worker: TagrunProcess = start_process("worker", database_url,
                                          env={"WORKER_NAME": "direct-1"})
    with api_client(server.url) as api:
        wait_until(lambda: (a := listed(api, "direct-1")) is not None
                   and a["state"] == "live", message="the direct worker to show live")
        assert worker.stop() == 0
        gone = listed(api, "direct-1")
        assert gone is not None and gone["state"] == "stopped", gone
