"""Retries, dead letter, idempotency, backpressure and log caps, as a user meets them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import AgentProcess, TagrunProcess, api_client


@pytest.fixture
def limited(start_process, database_url: str) -> TagrunProcess:
    return start_process("standalone", database_url, env={  # type: ignore[no-any-return]
        "TAGRUN_MAX_QUEUED": "5", "TAGRUN_MAX_LOG_BYTES": "2000",
        "TAGRUN_RETRY_BACKOFF_S": "0.5"}).wait_healthy()


@pytest.fixture
def api(limited: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(limited.url) as client:
        yield client


def test_failing_job_is_retried_with_growing_delays_then_dead_lettered_and_replayed(
    api: httpx.Client, tmp_path
) -> None:
    marker = tmp_path / "fixed"
    job = api.post("/api/w/default/jobs", json={
        "language": "bash", "max_attempts": 3,
        "content": f'[ -f {marker} ] && echo fixed && exit 0; echo "broken"; exit 2'}).json()
    final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 30}).json()
    assert (final["status"], final["attempt"]) == ("failed", 3)
    attempts = final["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert all(a["error"]["kind"] == "script_error" and a["worker"] for a in attempts)
    gaps = [_seconds(attempts[i + 1]["started_at"]) - _seconds(attempts[i]["finished_at"])
            for i in range(2)]
    # Base 0.5 s: 0.25-0.5 s, then 0.5-1 s (jitter), not rounded up to the 2 s poll.
    assert 0.2 <= gaps[0] < 0.9 and 0.5 <= gaps[1] < 1.4, f"backoff should grow: {gaps}"
    dead = api.get("/api/w/default/jobs", params={"status": "failed"}).json()["jobs"]
    assert job["id"] in [j["id"] for j in dead]
    marker.touch()
    replay = api.post(f"/api/w/default/jobs/{job['id']}/retry").json()
    assert replay["status"] in ("queued", "running")  # a worker may take it at once
    replayed = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 30}).json()
    assert (replayed["status"], replayed["result"]) == ("succeeded", "fixed")
    assert len(replayed["attempts"]) == 4  # history is kept across the replay


def _seconds(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_same_idempotency_key_returns_the_first_job(api: httpx.Client) -> None:
    body = {"language": "identity", "args": {"n": 1}}
    first = api.post("/api/w/default/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = api.post("/api/w/default/jobs", json={**body, "args": {"n": 2}},
                     headers={"Idempotency-Key": "k-1"})
    other = api.post("/api/w/default/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    assert again.json()["args"] == {"n": 1}
    api.post("/api/workspaces", json={"id": "idem-other"})
    elsewhere = api.post("/api/w/idem-other/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert elsewhere.status_code == 201  # keys are per workspace


def test_concurrent_requests_with_one_key_make_one_job(api: httpx.Client, limited) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def submit(_: int) -> httpx.Response:
        with api_client(limited.url) as client:
            return client.post("/api/w/default/jobs", json={"language": "identity"},
                               headers={"Idempotency-Key": "race"})
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(submit, range(4)))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in responses}) == 1


def test_submits_past_max_queued_get_429_with_retry_after(api: httpx.Client) -> None:
    body = {"language": "bash", "content": "echo", "tag": "nobody-serves-this"}
    codes = [api.post("/api/w/default/jobs", json=body).status_code for _ in range(5)]
    assert codes == [201] * 5
    refused = api.post("/api/w/default/jobs", json=body)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "too_many_requests"
    batch = api.post("/api/w/default/jobs/batch", json={"jobs": [body]})
    assert batch.status_code == 429


def test_logs_are_capped_with_a_marker_and_say_so(
    api: httpx.Client, limited: TagrunProcess, tmp_path: Path
) -> None:
    """On the in-process worker and on an agent: the log stops at the cap with a marker, and
    the job view, an event and a metric say it was truncated, so none passes as whole."""
    tag = f"capped-{uuid.uuid4().hex[:6]}"
    token = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()["token"]
    agent = AgentProcess(limited.url, token, tmp_path, name="capped")
    content = "for i in $(seq 1 500); do echo line-$i; done; echo done"
    try:
        jobs = [api.post("/api/w/default/jobs", json={"language": "bash", "content": content,
                                                       **extra}).json()
                for extra in ({}, {"tag": tag})]
        whole = api.post("/api/w/default/jobs", json={"language": "bash",
                                                      "content": "echo short"}).json()
        for job in jobs:
            final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 20}).json()
            assert (final["status"], final["result"], final["log_truncated"]) \
                == ("succeeded", "done", True)
            logs = api.get(f"/api/w/default/jobs/{job['id']}/logs").json()
            assert logs["done"] and "log truncated" in logs["data"]
            assert "line-1\n" in logs["data"] and "line-500" not in logs["data"]
            assert len(logs["data"]) < 2200
            limited.wait_logged("job.log_truncated")
            assert f'"event": "job.log_truncated", "logger": "tagrun.events", "job_id": ' \
                   f'{job["id"]}' in limited.log_text()
        short = api.get(f"/api/w/default/jobs/{whole['id']}", params={"wait_s": 20}).json()
        assert (short["result"], short["log_truncated"]) == ("short", False)
    finally:
        agent.kill()
    metrics = httpx.get(f"{limited.url}/metrics").text
    assert "tagrun_job_logs_truncated_total 2.0" in metrics
