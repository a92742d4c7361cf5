"""Outcomes reported several per request when jobs finish together, each answered alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tagrun.agent.client import AgentClient
from tagrun.agent.completions import MAX_BATCHED_BYTES, Completions
from tagrun.agent.errors import ServerAnswer
from tests.agent.fakes import TOKEN, FakeServer, error

BATCH = "/api/agent_workers/complete"


def run(fake: FakeServer, jobs: list[dict[str, Any]]) -> list[str | BaseException]:
    """Complete `jobs` at once, as jobs finishing together on one agent would."""
    async def main() -> list[str | BaseException]:
        client = AgentClient("http://tagrun.test", TOKEN, "agent-1", transport=fake.transport())
        completions = Completions(client)
        try:
            return await asyncio.gather(*(
                completions.complete("default", j["id"], 1, j.get("status", "succeeded"),
                                     j.get("result"), j.get("error")) for j in jobs),
                return_exceptions=True)
        finally:
            await client.aclose()
    return asyncio.run(main())


def test_a_lone_job_uses_its_own_route() -> None:
    fake = FakeServer()
    assert run(fake, [{"id": 1, "result": {"n": 1}}]) == ["succeeded"]
    assert fake.paths() == ["/api/w/default/agent_workers/jobs/1/complete"]
    assert fake.completions[1]["result"] == {"n": 1}


def test_jobs_finishing_together_share_requests() -> None:
    fake = FakeServer()
    answers = run(fake, [{"id": i, "result": i} for i in range(1, 51)])
    assert answers == ["succeeded"] * 50
    assert sorted(fake.completions) == list(range(1, 51))
    assert {i: c["result"] for i, c in fake.completions.items()} == {i: i for i in range(1, 51)}
    assert fake.paths() == [BATCH]  # all finished before the first report left: one request


def test_a_refusal_reaches_only_its_job() -> None:
    fake = FakeServer()
    fake.override = lambda path, body: error(409, "lease_lost") if path.endswith(
        "/jobs/3/complete") else None
    answers = run(fake, [{"id": i} for i in range(1, 6)])
    assert answers[:2] == ["succeeded"] * 2 and answers[3:] == ["succeeded"] * 2
    assert isinstance(answers[2], ServerAnswer) and answers[2].lease_lost
    assert 3 not in fake.completions


def test_a_large_result_goes_alone() -> None:
    fake = FakeServer()
    big = "x" * (MAX_BATCHED_BYTES + 1)
    answers = run(fake, [{"id": 1}, {"id": 2, "result": big}, {"id": 3}])
    assert answers == ["succeeded"] * 3
    assert "/api/w/default/agent_workers/jobs/2/complete" in fake.paths()
    assert all(2 not in [j["id"] for j in body["jobs"]]
               for path, body in fake.requests if path == BATCH)


@pytest.mark.parametrize("status", [400, 413])
def test_a_refused_batch_is_sent_again_job_by_job(status: int) -> None:
    fake = FakeServer()
    fake.override = lambda path, body: error(status, "invalid_input") if path == BATCH else None
    answers = run(fake, [{"id": i} for i in range(1, 5)])
    assert answers == ["succeeded"] * 4
    assert sorted(fake.completions) == [1, 2, 3, 4]
    assert fake.paths().count(BATCH) == 1


def test_a_batch_refused_as_a_whole_is_reported_to_each_job() -> None:
    fake = FakeServer()
    fake.override = lambda path, body: error(403, "forbidden")
    answers = run(fake, [{"id": i} for i in range(1, 4)])
    assert [a.status for a in answers if isinstance(a, ServerAnswer)] == [403, 403, 403]
    assert fake.paths().count(BATCH) == 1 and not fake.completions
