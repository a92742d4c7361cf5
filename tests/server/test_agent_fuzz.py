"""Property-based hostile input on the agent routes, with a valid agent token: never a 5xx,
and no job the agent does not hold is ever changed."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.test_api_bad_input import assert_error, json_values, scalars
from tests.support.processes import TagrunProcess, api_client, wait_until

# Mostly plausible values, so that many requests get past validation to the job checks.
NAMES = st.one_of(st.just("fz-agent"), st.just("fz-agent"),
                  st.sampled_from(["", "x" * 200, "bad name", "é", "-x"]) | st.text(max_size=8))
ATTEMPTS = st.one_of(st.just(1), st.just(1), st.integers(-2, 1002) | st.integers() | scalars)
STATUSES = st.one_of(st.just("succeeded"), st.just("succeeded"),
                     st.sampled_from(["failed", "cancelled", "running", "queued", ""]))
ERRORS = st.one_of(st.none(), st.none(), st.fixed_dictionaries(
    {"kind": st.sampled_from(["script_error", "timeout", "BAD KIND", ""]) | st.text(max_size=5)},
    optional={"message": st.text(max_size=40) | json_values}), json_values)


def either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, good, json_values)


def held(ids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(either(st.fixed_dictionaries({"id": ids, "attempt": either(ATTEMPTS)})),
                    max_size=4)


def routes(ids: st.SearchStrategy[Any]) -> list[tuple[str, st.SearchStrategy[Any]]]:
    outcome = st.fixed_dictionaries(
        {"attempt": either(ATTEMPTS), "status": either(STATUSES)},
        optional={"result": json_values, "error": ERRORS, "name": either(NAMES)})
    return [
        # wait_s always small and present: a claim with none would be held for 25 s.
        ("/api/agent_workers/claim", st.fixed_dictionaries(
            {"name": either(NAMES), "wait_s": st.floats(0, 0.05)},
            optional={"slots": either(st.integers(-5, 200))})),
        ("/api/agent_workers/heartbeat", st.fixed_dictionaries(
            {"name": either(NAMES)}, optional={"running": either(held(ids))}) | json_values),
        ("/api/agent_workers/release", st.fixed_dictionaries(
            {"name": either(NAMES)}, optional={"jobs": either(held(ids))}) | json_values),
        ("/api/agent_workers/complete", st.fixed_dictionaries(
            {"name": either(NAMES), "jobs": either(st.lists(
                either(st.builds(lambda i, o: {**o, "id": i}, ids, outcome)), max_size=4))})
         | json_values),
        ("logs", either(st.fixed_dictionaries(
            {"attempt": either(ATTEMPTS), "offset": either(st.integers(-5, 2**63)),
             "data": either(st.text(max_size=50))}, optional={"name": either(NAMES)}))),
        ("complete", either(outcome)),
    ]


def test_random_agent_requests_are_never_5xx_and_change_no_foreign_job(
    server: TagrunProcess, api: httpx.Client
) -> None:
    mine, theirs = f"fz-{uuid.uuid4().hex[:8]}", f"fz-{uuid.uuid4().hex[:8]}"
    token = api.post("/api/agent_tokens", json={"group": "fz", "tags": [mine]}).json()["token"]
    other = api.post("/api/agent_tokens", json={"group": "fz", "tags": [theirs]}).json()["token"]
    # A job another agent holds, running; and one that has finished.
    running = api.post("/api/w/default/jobs", json={"language": "identity", "tag": theirs,
                                                    "args": {"keep": 1}}).json()["id"]
    with api_client(server.url, other) as holder:
        [claimed] = holder.post("/api/agent_workers/claim",
                                json={"name": "holder", "wait_s": 5}).json()["jobs"]
    assert claimed["id"] == running
    done = api.post("/api/w/default/jobs", json={"language": "identity"}).json()["id"]
    wait_until(lambda: api.get(f"/api/w/default/jobs/{done}").json()["status"] == "succeeded")
    before = {i: api.get(f"/api/w/default/jobs/{i}").json() for i in (running, done)}
    ids = st.sampled_from([running, done, 0, -1, 2**62, 2**63]) | st.integers() | scalars
    statuses: dict[int, int] = {}
    with api_client(server.url, token) as agent:
        for path, strategy in routes(ids):
            for job_id in ((running, done) if path in ("logs", "complete") else (None,)):
                url = f"/api/w/default/agent_workers/jobs/{job_id}/{path}" if job_id else path
                post_random(agent, url, strategy, statuses)
    assert sum(statuses.values()) >= 200 and statuses.get(400, 0) >= 20, statuses
    # Valid requests were among them, and those about jobs it does not hold were refused.
    assert statuses.get(200, 0) >= 10 and statuses.get(409, 0) >= 5, statuses
    after = {i: api.get(f"/api/w/default/jobs/{i}").json() for i in (running, done)}
    assert after == before


def post_random(agent: httpx.Client, url: str, strategy: st.SearchStrategy[Any],
                statuses: dict[int, int]) -> None:
    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=strategy)
    def post(body: Any) -> None:
        try:
            content = json.dumps(body, allow_nan=False).encode()
        except ValueError:
            return
        response = agent.post(url, content=content, headers={"content-type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (url, body, response.text)
        if response.status_code >= 400:
            assert_error(response)
        else:
            assert isinstance(response.json(), dict)

    post()
