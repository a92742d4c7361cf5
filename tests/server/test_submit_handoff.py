"""A job submitted while an agent's claim waits idle for its tag is leased by the submit
itself (one statement, no NOTIFY and claim after it), and keeps every rule a claim keeps:
the acknowledgement window, the agent's tags, its local policy, paused tags."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.test_agent_api import CLAIM, mint, unique_tag, waiters
from tests.support.database import query
from tests.support.processes import TagrunProcess, api_client, wait_until

ACK_S = 1.0
ACKS = {"Tagrun-Agent-Features": "ack"}


@pytest.fixture
def server(start_process: Any, database_url: str) -> TagrunProcess:
    # The safety-net poll is slow: only the submit itself, or its NOTIFY, can hand a job out.
    return start_process("server", database_url, env={  # type: ignore[no-any-return]
        "TAGRUN_POLL_INTERVAL_S": "60", "TAGRUN_CLAIM_ACK_S": str(ACK_S)}).wait_healthy()


@pytest.fixture
def api(server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(server.url) as client:
        yield client


class Claim(threading.Thread):
    """One long-poll claim in the background; `jobs` is its answer."""

    def __init__(self, server: TagrunProcess, token: str, name: str, wait_s: float,
                 **body: Any) -> None:
        super().__init__(daemon=True)
        self.jobs: list[dict[str, Any]] | None = None
        self._args = (server.url, token, {"name": name, "slots": 1, "wait_s": wait_s, **body})

    def run(self) -> None:
        url, token, body = self._args
        with api_client(url, token) as client:
            r = client.post(CLAIM, json=body, headers=ACKS, timeout=body["wait_s"] + 30)
            r.raise_for_status()
            self.jobs = r.json()["jobs"]


def waiting_claim(server: TagrunProcess, api: httpx.Client, token: str, name: str,
                  wait_s: float = 30, **body: Any) -> Claim:
    before = waiters(api)
    claim = Claim(server, token, name, wait_s, **body)
    claim.start()
    wait_until(lambda: waiters(api) > before, timeout=15)
    return claim


def submit(api: httpx.Client, tag: str, language: str = "bash") -> dict[str, Any]:
    r = api.post("/api/w/default/jobs", json={"language": language, "tag": tag,
                                               "content": "true"})
    assert r.status_code == 201, r.text
    return dict(r.json())


def row(database_url: str, job_id: int) -> dict[str, Any]:
    [found] = query(database_url, "SELECT status, attempt, worker, created_at, started_at, "
                    "ack_by FROM jobs WHERE id = $1", job_id)
    return found


def test_a_job_submitted_to_a_waiting_agent_is_leased_by_its_submit_and_acked_as_claimed(
    server: TagrunProcess, api: httpx.Client, database_url: str
) -> None:
    tag = unique_tag()
    token = str(mint(api, [tag])["token"])
    claim = waiting_claim(server, api, token, "idle-1")
    job = submit(api, tag)
    claim.join(30)
    assert [j["id"] for j in claim.jobs or []] == [job["id"]]
    # The submit answered the job as it stands: already running on the waiting agent.
    assert (job["status"], job["attempt"], job["worker"]) == ("running", 1, "idle-1")
    leased = row(database_url, job["id"])
    # Leased in the statement that created it, and on the acknowledgement's condition.
    assert leased["started_at"] == leased["created_at"] and leased["ack_by"] is not None
    # Never acknowledged (the answer "lost"): back in the queue after the window, the
    # attempt unused, for the next claim, which runs it as attempt 1.
    wait_until(lambda: row(database_url, job["id"])["status"] == "queued", timeout=20)
    assert row(database_url, job["id"])["attempt"] == 0
    with api_client(server.url, token) as agent:
        again = agent.post(CLAIM, json={"name": "idle-2", "slots": 1, "wait_s": 5}).json()
        assert [(j["id"], j["attempt"]) for j in again["jobs"]] == [(job["id"], 1)]
        done = agent.post(f"/api/w/default/agent_workers/jobs/{job['id']}/complete", json={
            "name": "idle-2", "attempt": 1, "status": "succeeded", "result": {"ok": True}})
        assert done.status_code == 200, done.text
    final = api.get(f"/api/w/default/jobs/{job['id']}").json()
    assert (final["status"], final["result"], final["worker"]) == (
        "succeeded", {"ok": True}, "idle-2")
    assert [a["status"] for a in final["attempts"]] == ["succeeded"]


def test_a_waiting_agent_is_not_handed_a_job_its_policy_refuses(
    server: TagrunProcess, api: httpx.Client, database_url: str
) -> None:
    tag = unique_tag()
    token = str(mint(api, [tag])["token"])
    claim = waiting_claim(server, api, token, "python-only", wait_s=3,
                          policy={"languages": ["python"]})
    job = submit(api, tag, language="bash")
    assert job["status"] == "queued"
    claim.join(30)
    assert claim.jobs == []
    assert row(database_url, job["id"])["status"] == "queued"
    python = submit(api, tag, language="python")  # within its policy: its next claim's
    claim = Claim(server, token, "python-only", 10, policy={"languages": ["python"]})
    claim.start()
    claim.join(30)
    assert [j["id"] for j in claim.jobs or []] == [python["id"]]


def test_a_waiting_agent_is_not_handed_a_job_of_a_paused_tag(
    server: TagrunProcess, api: httpx.Client, database_url: str
) -> None:
    paused, served = unique_tag(), unique_tag()
    token = str(mint(api, [paused, served])["token"])
    # The pause holds in this server before its answer (other replicas hear of it by NOTIFY):
    # the claim that follows is made without the paused tag.
    assert api.post(f"/api/tags/{paused}/pause", json={"note": "test"}).status_code == 200
    claim = waiting_claim(server, api, token, "two-tags", wait_s=3)
    job = submit(api, paused)
    assert job["status"] == "queued"
    claim.join(30)
    assert claim.jobs == []
    assert row(database_url, job["id"])["status"] == "queued"
    other = submit(api, served)
    assert other["status"] == "queued"  # no claim waits now: it takes the queue


def test_a_waiting_agent_is_not_handed_a_job_of_a_tag_its_token_lacks(
    server: TagrunProcess, api: httpx.Client, database_url: str
) -> None:
    mine, theirs = unique_tag(), unique_tag()
    token = str(mint(api, [mine])["token"])
    claim = waiting_claim(server, api, token, "other-tag", wait_s=3)
    job = submit(api, theirs)  # the only claim waiting on this server is not of its tag
    assert job["status"] == "queued" and job["worker"] is None
    claim.join(30)
    assert claim.jobs == []
    assert row(database_url, job["id"])["status"] == "queued"


def test_a_pause_holds_on_its_server_from_its_answer_on(
    server: TagrunProcess, api: httpx.Client
) -> None:
    """Right after a pause is answered, a claim to the same server gets nothing of the tag,
    however quickly it comes: the server applied the pause itself, not only when its NOTIFY
    came back. Twenty times, each on a tag of its own with a job queued."""
    for n in range(20):
        tag = unique_tag()
        token = str(mint(api, [tag])["token"])
        job = submit(api, tag)
        with api_client(server.url, token) as agent:
            assert api.post(f"/api/tags/{tag}/pause", json={"note": "t"}).status_code == 200
            r = agent.post(CLAIM, json={"name": f"quick-{n}", "slots": 1, "wait_s": 0})
            r.raise_for_status()
            assert r.json()["jobs"] == [], f"job {job['id']} of paused tag {tag} was handed out"


def test_an_agent_version_window_holds_on_its_server_from_its_answer_on(
    server: TagrunProcess, api: httpx.Client
) -> None:
    """Right after the minimum agent version is raised, a claim to the same server from an
    older agent is refused; right after it is lifted, the next is served. Ten times each."""
    token = str(mint(api, [unique_tag()])["token"])
    old = {"User-Agent": "tagrun-agent/1.0"}
    with api_client(server.url, token) as agent:
        for n in range(10):
            raised = api.put("/api/settings", json={"key": "min_agent_version",
                                                    "value": "99.0"})
            assert raised.status_code == 200, raised.text
            r = agent.post(CLAIM, json={"name": f"old-{n}", "slots": 1, "wait_s": 0},
                           headers=old)
            assert r.status_code == 426, (n, r.status_code, r.text)
            lifted = api.put("/api/settings", json={"key": "min_agent_version", "value": ""})
            assert lifted.status_code == 200, lifted.text
            r = agent.post(CLAIM, json={"name": f"new-{n}", "slots": 1, "wait_s": 0},
                           headers=old)
            assert r.status_code == 200, (n, r.status_code, r.text)
