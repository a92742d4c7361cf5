from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from tenacity import stop_after_attempt

from tagrun.agent.client import AgentClient, RetryPolicy
from tagrun.agent.errors import GaveUp, ServerAnswer, TokenRefused
from tagrun.shared.version import __version__
from tests.agent.conftest import CapturedLog
from tests.agent.fakes import TOKEN, error

Answer = httpx.Response | Exception


class Script:
    """Answers requests from a list, in order; records what was sent and every back-off."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def ok(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=body)


def call(script: Script, method: Callable[[AgentClient], Awaitable[Any]],
         base_url: str = "http://tagrun.test") -> Any:
    async def main() -> Any:
        client = AgentClient(base_url, TOKEN, "agent-1", transport=httpx.MockTransport(
            script.handler), retry=RetryPolicy(bounded_stop=stop_after_attempt(4),
                                               sleep=script.sleep))
        try:
            return await method(client)
        finally:
            await client.aclose()
    return asyncio.run(main())


def test_claim_retries_transient_failures_then_succeeds(agent_log: CapturedLog) -> None:
    script = Script(
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        error(502, "bad_gateway"),
        httpx.Response(503, text="<html>maintenance</html>"),
        httpx.Response(200, text="<html>a proxy's login page</html>"),
        error(408, "timeout"),
        httpx.Response(429, headers={"Retry-After": "0"}, json={}),
        ok({"jobs": [{"id": 1}]}),
    )

    assert call(script, lambda c: c.claim(2, 25)) == [{"id": 1}]

    assert len(script.requests) == 8
    assert len(script.sleeps) == 7 and script.sleeps[6] == 0  # Retry-After: 0
    assert all(0 <= s <= 10 for s in script.sleeps)
    assert agent_log.names().count("agent.retrying") == 7
    assert TOKEN not in agent_log.getvalue()


def test_retry_after_is_honoured() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "7"}, json={}), ok({"jobs": []}))

    call(script, lambda c: c.claim(1, 25))

    assert script.sleeps == [7.0]


def test_claim_and_heartbeat_retry_beyond_the_bound_of_other_calls() -> None:
    failures: list[Answer] = [error(503, "unavailable")] * 20
    claim = Script(*failures, ok({"jobs": []}))
    beat = Script(*failures, ok({"cancel": [], "lost": []}))

    assert call(claim, lambda c: c.claim(1, 25)) == []
    assert call(beat, lambda c: c.heartbeat([(1, 1)])) == ([], [])

    assert len(claim.requests) == len(beat.requests) == 21


def test_a_heartbeat_that_acknowledges_jobs_retries_at_short_intervals() -> None:
    """After a short cut the acknowledgement must land within the server's ack window
    (5 s), not after a backoff grown long meanwhile: the job would run twice."""
    failures: list[Answer] = [httpx.ConnectError("connection refused")] * 12
    plain = Script(*failures, ok({"cancel": [], "lost": []}))
    acking = Script(*failures, ok({"cancel": [], "lost": []}))

    call(plain, lambda c: c.heartbeat([(1, 1)]))
    call(acking, lambda c: c.heartbeat([(1, 1)], acknowledges=True))

    assert len(acking.requests) == 13 and all(0 <= s <= 0.5 for s in acking.sleeps)
    assert max(plain.sleeps) > 0.5  # an ordinary heartbeat backs off as before


def test_completion_gives_up_after_its_bound() -> None:
    script = Script(error(503, "unavailable"))

    with pytest.raises(GaveUp, match="503"):
        call(script, lambda c: c.complete("default", 1, 1, "succeeded", None, None))

    assert len(script.requests) == 4


@pytest.mark.parametrize("reason", ["agent token revoked", "agent token expired",
                                    "not a valid agent token"])
def test_401_says_why_the_token_was_refused(reason: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        call(Script(error(401, "unauthorized", reason)), lambda c: c.claim(1, 25))
    assert str(refused.value) == f"the server refused the agent token: {reason}"
    with pytest.raises(TokenRefused) as bare:
        call(Script(httpx.Response(401, text="<html>no</html>")), lambda c: c.claim(1, 25))
    assert "HTTP 401" in str(bare.value)


@pytest.mark.parametrize("method", ["claim", "heartbeat", "logs", "complete", "release"])
def test_401_raises_token_refused_at_once(method: str) -> None:
    script = Script(error(401, "unauthorized", "token revoked"))
    calls: dict[str, Callable[[AgentClient], Awaitable[Any]]] = {
        "claim": lambda c: c.claim(1, 25),
        "heartbeat": lambda c: c.heartbeat([(1, 1)]),
        "logs": lambda c: c.append_logs("default", 1, 1, 0, "x"),
        "complete": lambda c: c.complete("default", 1, 1, "succeeded", None, None),
        "release": lambda c: c.release([(1, 1)]),
    }

    with pytest.raises(TokenRefused) as refused:
        call(script, calls[method])

    assert len(script.requests) == 1
    assert TOKEN not in str(refused.value)


def test_409_is_a_server_answer_not_retried() -> None:
    script = Script(error(409, "lease_lost", "job 1 is not held by agent-1"))

    with pytest.raises(ServerAnswer) as answer:
        call(script, lambda c: c.complete("default", 1, 2, "failed", None, None))

    assert answer.value.lease_lost
    assert (answer.value.status, answer.value.code) == (409, "lease_lost")
    assert len(script.requests) == 1


def test_a_redirect_is_a_server_answer_naming_the_target() -> None:
    script = Script(httpx.Response(301, headers={"Location": "https://tagrun.test/"}))

    with pytest.raises(ServerAnswer, match="https://tagrun.test/"):
        call(script, lambda c: c.claim(1, 25))


def test_request_bodies_and_headers_follow_the_contract() -> None:
    script = Script(ok({"jobs": []}))

    async def every_call(c: AgentClient) -> None:
        await c.claim(3, 20)
        await c.heartbeat([(1, 2), (5, 1)])
        await c.release([(5, 1)])
        await c.append_logs("team-a", 5, 1, 10, "héllo\n")
        await c.complete("team-a", 5, 1, "failed", None, {"kind": "timeout", "message": "t"})
    call(script, every_call, base_url="https://tagrun.test/prefix")

    assert [(r.method, str(r.url)) for r in script.requests] == [
        ("POST", "https://tagrun.test/prefix/api/agent_workers/claim"),
        ("POST", "https://tagrun.test/prefix/api/agent_workers/heartbeat"),
        ("POST", "https://tagrun.test/prefix/api/agent_workers/release"),
        ("POST", "https://tagrun.test/prefix/api/w/team-a/agent_workers/jobs/5/logs"),
        ("POST", "https://tagrun.test/prefix/api/w/team-a/agent_workers/jobs/5/complete"),
    ]
    assert script.bodies() == [
        {"name": "agent-1", "slots": 3, "wait_s": 20},
        {"name": "agent-1", "running": [{"id": 1, "attempt": 2}, {"id": 5, "attempt": 1}]},
        {"name": "agent-1", "jobs": [{"id": 5, "attempt": 1}]},
        {"name": "agent-1", "attempt": 1, "offset": 10, "data": "héllo\n"},
        # An outcome leaves out fields at their default (a null result, retryable): a server
        # older than a field refuses it.
        {"name": "agent-1", "attempt": 1, "status": "failed",
         "error": {"kind": "timeout", "message": "t"}},
    ]
    for request in script.requests:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["user-agent"] == f"tagrun-agent/{__version__}"
        assert request.headers["content-type"] == "application/json"


def test_a_claim_may_take_its_wait_plus_a_grace_to_answer() -> None:
    script = Script(ok({"jobs": []}))

    call(script, lambda c: c.claim(1, 25))

    timeout = script.requests[0].extensions["timeout"]
    assert timeout["read"] == 40 and timeout["connect"] == 10


def test_answers_are_read() -> None:
    script = Script(ok({"cancel": [3], "lost": [4, 5]}))
    assert call(script, lambda c: c.heartbeat([(3, 1), (4, 1), (5, 1)])) == ([3], [4, 5])

    script = Script(ok({"offset": 13}))
    assert call(script, lambda c: c.append_logs("default", 1, 1, 10, "abc")) == 13

    script = Script(ok({"released": [5]}))
    assert call(script, lambda c: c.release([(5, 1)])) == [5]


def test_a_body_holding_text_no_utf_8_can_carry_still_goes_out_escaped() -> None:
    """Undecodable bytes become lone surrogates in Python, which UTF-8 cannot carry: such a
    body is sent escaped (\\uXXXX), as the standard library's json writes it (the server refuses it
    with a clear answer), rather than raising in the agent."""
    script = Script(ok({"jobs": []}))

    async def claim(c: AgentClient) -> None:
        c.name = "agent-\udcff"
        await c.claim(1, 20)
    call(script, claim)

    assert b'"agent-\\udcff"' in script.requests[0].content
    assert script.bodies() == [{"name": "agent-\udcff", "slots": 1, "wait_s": 20}]
