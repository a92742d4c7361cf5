"""tagrun.client against answers a real server rarely gives (httpx's MockTransport): every
error status typed, garbled answers, fields a newer or older server adds or lacks, log
chunks that end mid-line, long polls given time, and the token kept out of sight."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import tagrun.client
from tagrun.client import (
    APIError,
    AsyncClient,
    BadRequest,
    Client,
    ConfigError,
    Conflict,
    Forbidden,
    Job,
    NotFound,
    PayloadTooLarge,
    ServerError,
    TooManyRequests,
    Unauthorized,
    UnexpectedResponse,
)

TOKEN = "tr_secret-token-never-shown"
JOB = {"id": 7, "workspace": "default", "status": "queued", "tag": "bash", "language": "bash",
       "script": None, "args": {}, "priority": 0, "attempt": 0, "max_attempts": 3,
       "result": None, "error": None, "created_at": "2025-01-02T03:04:05.123456+00:00",
       "started_at": None, "finished_at": None}
Handler = Callable[[httpx.Request], httpx.Response]


def offline(handler: Handler) -> Client:
    return Client("http://tagrun.test", TOKEN, transport=httpx.MockTransport(handler))


def answering(status: int, body: Any = None, **headers: str) -> Client:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return offline(lambda request: httpx.Response(status, content=content, headers=headers))


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(("status", "kind"), [
    (400, BadRequest), (401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict),
    (413, PayloadTooLarge), (429, TooManyRequests), (500, ServerError), (503, ServerError),
    (418, APIError),
])
def test_each_status_is_its_own_error(status: int, kind: type[APIError]) -> None:
    with answering(status, error("some_code", "the server's own words"),
                   **{"Retry-After": "3"}) as client, pytest.raises(kind) as caught:
        client.get_job(7)
    assert type(caught.value) is kind
    assert (caught.value.status, caught.value.code) == (status, "some_code")
    assert str(caught.value) == "the server's own words"
    assert repr(caught.value) == \
        f"{kind.__name__}({status}, 'some_code', \"the server's own words\")"
    assert caught.value.retry_after == 3.0


def test_an_error_page_not_from_tagrun_still_says_what_came_back() -> None:
    with answering(502, b"<html>Bad Gateway</html>") as client, \
            pytest.raises(ServerError) as caught:
        client.get_job(7)
    assert caught.value.code is None
    assert str(caught.value) == "502 from GET /api/w/default/jobs/7: <html>Bad Gateway</html>"


def test_a_success_that_is_not_json_is_unexpected() -> None:
    with answering(200, b"<html>captive portal</html>") as client, \
            pytest.raises(UnexpectedResponse, match="GET /api/w/default/jobs/7"):
        client.get_job(7)


def test_a_job_is_read_leniently() -> None:
    newer = {**JOB, "status": "succeeded", "a_field_of_tomorrow": {"x": 1},
             "pending_reason": {"code": "delayed", "message": "due later",
                                "until": "2030-01-01T00:00:00+00:00", "more": 1}}
    job = Job.from_api(newer)
    assert (job.id, job.done, job.succeeded) == (7, True, True)
    assert job.created_at == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert job.pending_reason is not None
    assert job.pending_reason.until == datetime(2030, 1, 1, tzinfo=UTC)
    assert job.raw["a_field_of_tomorrow"] == {"x": 1}
    older = Job.from_api({"id": 8, "status": "running"})
    assert (older.attempt, older.error, older.created_at, older.done) == (0, None, None, False)


def test_submit_sends_only_what_was_given() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=JOB)

    run_at = datetime(2030, 1, 1, 12, tzinfo=UTC)
    with offline(handler) as client:
        client.submit("echo hi", language="bash", run_at=run_at, secrets=("DB",),
                      idempotency_key="once")
    assert json.loads(seen[0].content) == {"content": "echo hi", "language": "bash",
                                           "run_at": "2030-01-01T12:00:00+00:00",
                                           "secrets": ["DB"]}
    assert seen[0].headers["Idempotency-Key"] == "once"
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_long_poll_gets_time_to_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**JOB, "status": "failed"})

    with offline(handler) as client:
        assert client.wait(7).status == "failed"
    assert seen[0].url.params["wait_s"] == "25.0"
    assert seen[0].extensions["timeout"]["read"] == 30.0 + 25.0


def chunks_then_done(*chunks: str) -> Handler:
    """A job's log in these chunks, the last one final; the job itself between reads."""
    left = list(chunks)
    offset = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal offset
        if not request.url.path.endswith("/logs"):
            return httpx.Response(200, json=JOB)  # a follower's pause after an empty chunk
        assert int(request.url.params["offset"]) == offset
        data = left.pop(0)
        offset += len(data)
        return httpx.Response(200, json={"data": data, "offset": offset, "done": not left})
    return handler


def test_followed_logs_come_as_whole_lines() -> None:
    handler = chunks_then_done("one\ntw", "", "o\r\nthr", "ee")
    with offline(handler) as client:
        assert list(client.logs(7, follow=True)) == ["one", "two", "three"]


def test_async_follows_the_same_way() -> None:
    async def lines() -> list[str]:
        transport = httpx.MockTransport(chunks_then_done("a\nb", "\n", "c\n"))
        async with AsyncClient("http://tagrun.test", TOKEN, transport=transport) as client:
            return [line async for line in client.logs(7, follow=True)]

    assert asyncio.run(lines()) == ["a", "b", "c"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("TAGRUN_URL", "TAGRUN_TOKEN", "TAGRUN_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


@pytest.mark.parametrize(("env", "kwargs", "says"), [
    ({}, {}, "no token: pass token= or set TAGRUN_TOKEN"),
    ({"TAGRUN_TOKEN": "two words"}, {}, "TAGRUN_TOKEN holds spaces"),
    ({"TAGRUN_URL": "tagrun:8000"}, {"token": "t"}, "TAGRUN_URL='tagrun:8000' must start with"),
    ({}, {"url": "ftp://x", "token": "t"}, "url='ftp://x' must start with http://"),
    ({"TAGRUN_WORKSPACE": "Prod"}, {"token": "t"}, "TAGRUN_WORKSPACE='Prod' is not a workspace"),
])
def test_a_bad_setting_names_its_source(clean_env: pytest.MonkeyPatch, env: dict[str, str],
                                        kwargs: dict[str, str], says: str) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Client(**kwargs)
    assert says in str(caught.value)
    assert "two words" not in str(caught.value)


def test_defaults_and_no_token_in_sight(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TAGRUN_TOKEN", TOKEN)
    with Client() as client:
        assert (client.url, client.workspace) == ("http://127.0.0.1:8000", "default")
        assert TOKEN not in repr(client) and TOKEN not in repr(client._settings)
    with answering(401, error("unauthorized", "missing or invalid credentials")) as client, \
            pytest.raises(Unauthorized) as caught:
        client.list_jobs()
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)


def test_the_public_surface_is_sorted_and_complete() -> None:
    assert tagrun.client.__all__ == sorted(tagrun.client.__all__)
    assert all(hasattr(tagrun.client, name) for name in tagrun.client.__all__)
    sync = {n for n in dir(Client) if not n.startswith("_")}
    asynchronous = {n for n in dir(AsyncClient) if not n.startswith("_")}
    assert sync - {"close"} == asynchronous - {"aclose"}
