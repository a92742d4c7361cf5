"""A claim answer lost on its way to the agent costs seconds, not a lease: the job goes back
to the queue after TAGRUN_CLAIM_ACK_S without using an attempt, and a late acknowledgement is
refused. Real server, real agents, a proxy that cuts the connection as the answer passes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    agent_token,
    api_client,
    wait_until,
)
from tests.support.proxy import Proxy

ACK_S = 2.0
LEASE_S = 60.0  # far longer than the test may take: nothing here may wait for a lease
CLAIM = "/api/agent_workers/claim"
ACKS = {"Tagrun-Agent-Features": "ack"}


@pytest.fixture
def server(start_process: Any, database_url: str) -> TagrunProcess:
    return start_process("server", database_url, env={  # type: ignore[no-any-return]
        "TAGRUN_CLAIM_ACK_S": str(ACK_S), "TAGRUN_LEASE_S": str(LEASE_S)}).wait_healthy()


@pytest.fixture
def api(server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(server.url) as client:
        yield client


def token_for(api: httpx.Client, tag: str) -> str:
    return agent_token(api, [tag])


def submit(api: httpx.Client, tag: str, content: str) -> int:
    job = api.post("/api/w/default/jobs", json={"language": "bash", "tag": tag,
                                                 "content": content}).json()
    return int(job["id"])


def finished(api: httpx.Client, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = api.get(f"/api/w/default/jobs/{job_id}",
                                  params={"wait_s": LEASE_S / 2}).json()
    assert job["status"] == "succeeded", job
    return job


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_claim_answer_lost_on_the_way_is_run_again_within_the_ack_window(
    api: httpx.Client, server: TagrunProcess, tmp_path: Path
) -> None:
    tag = f"ack-{uuid.uuid4().hex[:6]}"
    proxy = Proxy(server.port)
    proxy.cut_next_answer(b'"log_offset"')  # only a claim answer with a job holds this
    agent = AgentProcess(proxy.url, token_for(api, tag), tmp_path, name="unlucky")
    try:
        job_id = submit(api, tag, 'echo "ran as attempt $TAGRUN_JOB_ATTEMPT"')
        job = finished(api, job_id)
    finally:
        agent.kill()
        proxy.close()
    assert proxy.cuts == 1, "the proxy never saw the claim answer"
    # Run once, as attempt 1: the lost hand-out used no attempt and left no failure behind.
    assert job["attempt"] == 1 and [a["status"] for a in job["attempts"]] == ["succeeded"]
    assert api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"] \
        == "ran as attempt 1\n"
    assert seconds(job["finished_at"]) - seconds(job["created_at"]) < LEASE_S / 2
    server.wait_logged("job.claim_unacknowledged")
    assert f'"job_id": {job_id}, "status": "queued"' in server.log_text()


def test_an_agent_acknowledges_a_silent_long_job_in_time(
    api: httpx.Client, server: TagrunProcess, tmp_path: Path
) -> None:
    """No output and longer than the ack window: the agent's first heartbeat, sent early for
    the purpose, is what keeps the job its own."""
    tag = f"ack-{uuid.uuid4().hex[:6]}"
    agent = AgentProcess(server.url, token_for(api, tag), tmp_path, name="lucky")
    try:
        job_id = submit(api, tag, f"sleep {ACK_S * 2}; echo done")
        job = finished(api, job_id)
    finally:
        agent.kill()
    assert (job["attempt"], job["result"], job["worker"]) == (1, "done", "lucky")
    assert "job.claim_unacknowledged" not in server.log_text()
    assert '"event": "job.abandoned"' not in agent.log_text()


def test_a_late_acknowledgement_is_refused_and_changes_nothing(
    api: httpx.Client, server: TagrunProcess
) -> None:
    tag = f"ack-{uuid.uuid4().hex[:6]}"
    token = token_for(api, tag)
    job_id = submit(api, tag, "echo hi")
    with api_client(server.url, token) as silent:
        silent.headers.update(ACKS)
        [job] = silent.post(CLAIM, json={"name": "silent", "wait_s": 5}).json()["jobs"]
        assert (job["id"], job["attempt"], job["ack_s"]) == (job_id, 1, ACK_S)

        def requeued() -> bool:
            state = api.get(f"/api/w/default/jobs/{job_id}").json()
            return bool(state["status"] == "queued")
        wait_until(requeued, 15, message="the unacknowledged job to be requeued")
        assert api.get(f"/api/w/default/jobs/{job_id}").json()["attempt"] == 0
        late = silent.post("/api/agent_workers/heartbeat", json={
            "name": "silent", "running": [{"id": job_id, "attempt": 1}]}).json()
        assert late == {"cancel": [], "lost": [job_id], "drain": False}
        logs = silent.post(f"/api/w/default/agent_workers/jobs/{job_id}/logs", json={
            "name": "silent", "attempt": 1, "offset": 0, "data": "late\n"})
        assert logs.status_code == 409 and logs.json()["error"]["code"] == "lease_lost"
    with api_client(server.url, token) as other:  # no ack feature: nothing asked of it
        [again] = other.post(CLAIM, json={"name": "other", "wait_s": 5}).json()["jobs"]
        assert (again["id"], again["attempt"], again["ack_s"]) == (job_id, 1, None)
    assert api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"] == ""


def test_a_job_no_agent_ever_acknowledges_ends(api: httpx.Client, server: TagrunProcess) -> None:
    """A job that (say) kills every agent it reaches before the agent can answer: its lost
    hand-outs use no attempt up to max_attempts of them, then they do, and it ends."""
    tag = f"ack-{uuid.uuid4().hex[:6]}"
    job = api.post("/api/w/default/jobs", json={"language": "bash", "tag": tag,
                                                 "content": "echo hi", "max_attempts": 1})
    job_id = job.json()["id"]
    with api_client(server.url, token_for(api, tag)) as silent:
        silent.headers.update(ACKS)
        for handout in (1, 2):
            [claimed] = silent.post(CLAIM, json={"name": "silent", "wait_s": 10}).json()["jobs"]
            assert (claimed["id"], claimed["attempt"]) == (job_id, 1), handout
            wait_until(lambda: api.get(f"/api/w/default/jobs/{job_id}").json()["status"]
                       != "running", 15, message=f"hand-out {handout} to be taken back")
    final = api.get(f"/api/w/default/jobs/{job_id}").json()
    assert (final["status"], final["attempt"]) == ("failed", 1)
    assert final["error"] == {"kind": "lost_worker", "message": (
        "handed to agents 2 times, and none acknowledged it (was each one lost as the job "
        "started?)")}
