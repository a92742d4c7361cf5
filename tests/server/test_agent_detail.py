"""`GET /api/workers/{name}`: one agent as an operator looks it up (its record, token, the jobs
it runs and ran, its state history), against a real server, with agents simulated over the
agent API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest

from tagrun.server import responses as out
from tests.server.test_api_auth import assert_error, new_token
from tests.support.database import query
from tests.support.processes import TagrunProcess, api_client, wait_until

CLAIM = "/api/agent_workers/claim"
SESSION = {"Tagrun-Agent-Session": "s" * 32}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Sim:
    """An agent simulated over the agent API: it claims, and reports what it is told to."""

    def __init__(self, client: httpx.Client, name: str) -> None:
        self.client, self.name = client, name

    def claim(self, wait_s: float = 0) -> list[dict[str, Any]]:
        """One job at most (or none, after `wait_s`)."""
        response = self.client.post(CLAIM, json={"name": self.name, "wait_s": wait_s})
        assert response.status_code == 200, response.text
        jobs: list[dict[str, Any]] = response.json()["jobs"]
        return jobs

    def complete(self, job: dict[str, Any], status: str) -> None:
        body: dict[str, Any] = {"name": self.name, "attempt": job["attempt"], "status": status}
        if status == "failed":
            body["error"] = {"kind": "script_error", "message": "exit status 3"}
        response = self.client.post(
            f"/api/w/{job['workspace']}/agent_workers/jobs/{job['id']}/complete", json=body)
        assert response.status_code == 200, response.text


@pytest.fixture
def group() -> str:
    return unique("grp")


@pytest.fixture
def tag() -> str:
    return unique("tag")


@pytest.fixture
def token(api: httpx.Client, group: str, tag: str) -> dict[str, Any]:
    response = api.post("/api/agent_tokens", json={"group": group, "tags": [tag],
                                                   "label": "rack 3, build box"})
    assert response.status_code == 201, response.text
    minted: dict[str, Any] = response.json()
    return minted


@pytest.fixture
def sim(server: TagrunProcess, token: dict[str, Any]) -> Iterator[Sim]:
    with api_client(server.url, token["token"]) as client:
        client.headers.update(SESSION)
        agent = Sim(client, unique("host"))
        assert agent.claim() == []  # its first claim records it
        yield agent


def submit(api: httpx.Client, tag: str, content: str) -> int:
    response = api.post("/api/w/default/jobs", json={"language": "bash", "content": content,
                                                     "tag": tag, "max_attempts": 1})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def detail(api: httpx.Client, name: str) -> dict[str, Any]:
    response = api.get(f"/api/workers/{name}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    # Every field the OpenAPI document names, of its type (the list's own fields are checked
    # against the document by tests/api/test_openapi.py).
    fields = out.AgentDetail.__struct_fields__
    msgspec.convert({k: v for k, v in found.items() if k in fields}, out.AgentDetail)
    return found


def test_an_agent_s_page_has_its_record_token_and_jobs(
        api: httpx.Client, sim: Sim, token: dict[str, Any], group: str, tag: str) -> None:
    ok, bad, held = (submit(api, tag, f"echo {n}") for n in ("ok", "bad", "held"))
    for job_id, status in ((ok, "succeeded"), (bad, "failed")):
        [job] = sim.claim(wait_s=5)
        assert job["id"] == job_id
        sim.complete(job, status)
    [running] = sim.claim(wait_s=5)
    assert running["id"] == held

    found = detail(api, sim.name)
    listed = next(a for a in api.get("/api/workers", params={"name": sim.name}).json()["agents"]
                  if a["name"] == sim.name)
    assert set(listed) <= set(found)  # everything the list says of it, and more
    for key in ("name", "kind", "group", "tags", "ip", "version", "connected_at", "verify"):
        assert found[key] == listed[key], key
    assert (found["kind"], found["group"], found["tags"]) == ("agent", group, [tag])
    assert (found["jti"], found["token_label"]) == (token["jti"], "rack 3, build box")
    # Busy is written with the next flush of agents seen (within 5 s of the claim).
    wait_until(lambda: detail(api, sim.name)["state"] == "busy", 10,
               message="the agent to show busy")

    [current] = found["current_jobs"]
    assert (current["id"], current["workspace"], current["tag"], current["attempt"]) == (
        held, "default", tag, 1)
    assert current["started_at"] is not None and current["script"] is None
    recent = found["recent_jobs"]
    assert [(j["id"], j["status"]) for j in recent] == [(bad, "failed"), (ok, "succeeded")]
    for job in recent:
        assert job["finished_at"] is not None and job["duration_s"] >= 0
    assert found["history"] == []
    assert "token" not in found  # the token itself is never shown again


def test_pause_resume_and_drain_are_written_in_its_history(
        api: httpx.Client, sim: Sim, group: str) -> None:
    before = datetime.now(UTC)
    assert api.post(f"/api/workers/{sim.name}/pause",
                    json={"note": "disk swap", "for_s": 600}).status_code == 200
    assert detail(api, sim.name)["state"] == "paused"
    assert api.post(f"/api/workers/{sim.name}/resume").status_code == 200
    assert api.post(f"/api/pools/{group}/pause", json={"note": "rack move"}).status_code == 200
    assert api.post(f"/api/pools/{group}/resume").status_code == 200
    assert api.post(f"/api/workers/{sim.name}/drain",
                    json={"note": "retire host"}).status_code == 200

    found = detail(api, sim.name)
    assert found["state"] == "draining"
    history = found["history"]
    assert [(e["scope"], e["what"], e["note"], e["by"]) for e in history] == [
        ("agent", "drain_requested", "retire host", "superadmin"),
        ("group", "resumed", None, "superadmin"),
        ("group", "paused", "rack move", "superadmin"),
        ("agent", "resumed", None, "superadmin"),
        ("agent", "paused", "disk swap", "superadmin"),
    ]
    assert history[2]["name"] == group and history[0]["name"] == sim.name
    paused = history[-1]
    until = datetime.fromisoformat(paused["until"])
    assert 590 <= (until - before).total_seconds() <= 660  # the pause's own timeout
    assert all(e["until"] is None for e in history[:-1])
    times = [datetime.fromisoformat(e["at"]) for e in history]
    assert times == sorted(times, reverse=True) and times[-1] >= before.replace(microsecond=0)


def test_history_keeps_the_last_100_lines_of_an_agent(
        api: httpx.Client, server: TagrunProcess, sim: Sim) -> None:
    for n in range(53):  # 106 lines
        assert api.post(f"/api/workers/{sim.name}/pause",
                        json={"note": f"round {n}"}).status_code == 200
        assert api.post(f"/api/workers/{sim.name}/resume").status_code == 200
    history = detail(api, sim.name)["history"]
    assert len(history) == 100
    assert (history[0]["what"], history[1]["note"]) == ("resumed", "round 52")
    assert history[-1]["note"] == "round 3"  # the six oldest lines are gone
    assert server.database_url is not None
    [row] = query(server.database_url,
                  "SELECT count(*) AS n FROM worker_events WHERE name = $1", sim.name)
    assert row["n"] == 100  # deleted, not only hidden


@pytest.mark.parametrize("name", ["nobody-here", "no%20such%20agent", "x" * 300, "%E2%9C%93"])
def test_an_unknown_or_malformed_name_is_404(api: httpx.Client, name: str) -> None:
    error = assert_error(api.get(f"/api/workers/{name}"), 404, "not_found")
    assert "no agent or worker named" in error["message"]


def test_a_workspace_token_may_not_read_an_agent(
        server: TagrunProcess, api: httpx.Client, sim: Sim) -> None:
    workspace_token = new_token(api, "default")["token"]
    with api_client(server.url, workspace_token) as client:
        for path in ("/api/workers", f"/api/workers/{sim.name}"):
            assert_error(client.get(path), 403)
    with api_client(server.url, "not-a-token") as nobody:
        assert_error(nobody.get(f"/api/workers/{sim.name}"), 401)
