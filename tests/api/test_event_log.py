"""The event log as a log shipper reads it: every line of a server's JSON log is one event
whose name docs/events.md lists, and that list names every event the code logs."""

from __future__ import annotations

import ast
import json
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import SUPERADMIN, TagrunProcess, api_client, wait_until

ROOT = Path(__file__).resolve().parents[2]
EVENT_NAME = re.compile(r"[a-z_]+(?:\.[a-z_]+)+")
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def documented() -> set[str]:
    return set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", (ROOT / "docs" / "events.md").read_text()))


def logged_in_code() -> dict[str, set[str]]:
    """Event names passed as the message of a logging call in server/, agent/ or shared/:
    `log.info(name, ...)` and the like, or `event(log, level, name, fields)` (logfmt)."""
    found: dict[str, set[str]] = {}
    for folder in ("server", "agent", "shared"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                if isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS \
                        and node.args:
                    name = node.args[0]
                elif isinstance(node.func, ast.Name) and node.func.id == "event" \
                        and len(node.args) >= 3:
                    name = node.args[2]
                else:
                    continue
                for part in ast.walk(name):  # also `"a" if x else "b"`
                    if isinstance(part, ast.Constant) and isinstance(part.value, str) \
                            and EVENT_NAME.fullmatch(part.value):
                        found.setdefault(part.value, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_event_the_code_logs_is_documented() -> None:
    names = logged_in_code()
    assert {"job.succeeded", "agent.token_refused", "server.started"} <= set(names)
    missing = {name: sorted(files) for name, files in names.items() if name not in documented()}
    assert not missing, f"add these events to docs/events.md: {missing}"


def events_of(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines()]  # every line is a JSON event


def test_every_line_of_a_server_log_is_a_documented_event(start_process: Any,
                                                           database_url: str) -> None:
    proc: TagrunProcess = start_process("standalone", database_url,
                                        env={"TAGRUN_LOG_FORMAT": "json"}).wait_healthy()
    with api_client(proc.url) as api:
        job = api.post("/api/w/default/jobs", json={"language": "bash", "content": "exit 3",
                                                    "max_attempts": 1}).json()
        assert api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 20}).json()[
            "status"] == "failed"
        refused = httpx.post(f"{proc.url}/api/agent_workers/claim", json={"name": "x"},
                             headers={"Authorization": "Bearer not-a-jwt"})
        assert refused.status_code == 401
    assert proc.stop() == 0
    events = events_of(proc.log_text())
    names = {e["event"] for e in events}
    assert names <= documented(), f"not in docs/events.md: {names - documented()}"
    [started] = [e for e in events if e["event"] == "server.started"]
    assert started["superadmin_token"] == "TAGRUN_SUPERADMIN_TOKEN"  # where it is, not what
    assert {"server.started", "http.server", "job.submitted", "job.claimed", "job.failed",
            "job.dead_lettered", "agent.token_refused", "server.stopping"} <= names
    uvicorn = [e for e in events if e["event"] == "http.server"]
    assert any("Uvicorn running on" in e["detail"] for e in uvicorn)
    assert all({"ts", "level", "logger"} <= set(e) for e in events)
    assert SUPERADMIN not in proc.log_text()


def test_a_long_poll_answered_401_for_a_revoked_token_is_logged(server: TagrunProcess,
                                                                api: httpx.Client) -> None:
    minted = api.post("/api/agent_tokens", json={
        "group": "revoked-poll", "tags": [f"rp-{uuid.uuid4().hex[:8]}"]}).json()
    marker = '"reason": "agent token revoked", "path": "/api/agent_workers/claim"'
    before = server.log_text().count(marker)
    answers: list[int] = []

    def long_poll() -> None:
        with api_client(server.url, minted["token"]) as agent:
            answers.append(agent.post("/api/agent_workers/claim",
                                      json={"name": "revoked-poll", "wait_s": 20}).status_code)
    poller = threading.Thread(target=long_poll)
    poller.start()
    wait_until(lambda: any(a["name"] == "revoked-poll"
                           for a in api.get("/api/workers").json()["agents"]), 10,
               message="the long-poll to reach the server")
    assert api.delete(f"/api/agent_tokens/{minted['jti']}").status_code == 200
    poller.join(15)
    assert answers == [401]
    wait_until(lambda: server.log_text().count(marker) > before, 5,
               message="agent.token_refused for the revoked long-poll")
    assert minted["token"] not in server.log_text()
