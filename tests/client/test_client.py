"""tagrun.client against a real server, as a Python program uses it: jobs submitted, their
logs followed while they run, waited for; scripts, schedules and secrets; errors typed by
what the server said (or that no server answered); the environment honoured; async alike."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tagrun.client import (
    AsyncClient,
    BadRequest,
    Client,
    ConfigError,
    Conflict,
    NotFound,
    TransportError,
    Unauthorized,
    WaitTimeout,
)
from tagrun.server.vault import new_key
from tests.support.processes import SUPERADMIN, TagrunProcess, free_port


@pytest.fixture
def client(server: TagrunProcess) -> Iterator[Client]:
    with Client(server.url, SUPERADMIN) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- jobs ----------------------------------------------------------------------------------

def test_submit_follow_logs_and_wait(client: Client) -> None:
    job = client.submit('echo first; echo second; echo \'{"answer": 42}\'', language="bash",
                        args={"ignored": True})
    assert (job.workspace, job.language, job.tag, job.args) == ("default", "bash", "bash",
                                                                {"ignored": True})
    assert isinstance(job.created_at, datetime)

    assert list(client.logs(job, follow=True)) == ["first", "second", '{"answer": 42}']
    done = client.wait(job, timeout=60)
    assert done.succeeded and done.done
    assert done.result == {"answer": 42}
    assert (done.id, done.attempt, done.error) == (job.id, 1, None)
    assert isinstance(done.finished_at, datetime)


def test_follow_yields_lines_while_the_job_still_runs(client: Client, tmp_path: Path) -> None:
    # The job cannot end before the test has read its first line: following is live.
    gate = tmp_path / "gate"
    job = client.submit(f"echo started; until [ -e {gate} ]; do sleep 0.05; done; "
                        "printf 'released, no newline'", language="bash", timeout_s=60)
    lines = []
    for line in client.logs(job.id, follow=True):
        lines.append(line)
        if line == "started":
            assert client.get_job(job).status == "running"
            gate.touch()
    assert lines == ["started", "released, no newline"]
    assert client.wait(job.id).result == "released, no newline"
    assert list(client.logs(job)) == lines  # not following: the whole log, once


def test_a_failed_job_says_why(client: Client) -> None:
    job = client.submit("echo about-to-fail; exit 3", language="bash", max_attempts=1)
    done = client.wait(job, timeout=60)
    assert done.status == "failed" and not done.succeeded
    assert done.error is not None and done.error.kind == "script_error"
    assert "about-to-fail" in list(client.logs(done))


def test_wait_timeout_says_why_the_job_waits(client: Client) -> None:
    job = client.submit("echo never", language="bash", tag=unique("nobody"))
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        client.wait(job, timeout=0.5)
    assert time.monotonic() - started >= 0.5
    assert isinstance(caught.value, TimeoutError)
    last = caught.value.job
    assert last.status == "queued"
    assert last.pending_reason is not None and last.pending_reason.code == "no_live_worker"
    assert last.pending_reason.message in str(caught.value)
    assert client.cancel(job).status == "cancelled"


def test_cancel_retry_list_and_batch(client: Client) -> None:
    tag = unique("parked")
    job = client.submit("echo parked", language="bash", tag=tag, priority=5)
    assert [j.id for j in client.list_jobs(tag=tag, status="queued")] == [job.id]
    assert client.cancel(job).status == "cancelled"
    assert client.retry(job).status == "queued"
    client.cancel(job)

    ids = client.batch([{"language": "identity", "args": {"n": n}} for n in range(3)])
    assert len(ids) == 3 and ids == sorted(ids)
    assert [client.wait(i, timeout=60).result for i in ids] == [{"n": 0}, {"n": 1}, {"n": 2}]
    newest = client.list_jobs(tag="identity", limit=2)
    assert [j.id for j in newest] == [ids[2], ids[1]]
    assert [j.id for j in client.list_jobs(tag="identity", limit=1, before=ids[1])] == [ids[0]]


def test_an_idempotency_key_returns_the_first_job(client: Client) -> None:
    key = unique("key")
    first = client.submit("echo once", language="bash", idempotency_key=key)
    again = client.submit("echo twice", language="bash", idempotency_key=key)
    assert again.id == first.id


# --- errors --------------------------------------------------------------------------------

def test_errors_are_typed_by_what_the_server_said(client: Client, server: TagrunProcess
                                                  ) -> None:
    with pytest.raises(NotFound) as missing:
        client.get_job(987654321)
    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    assert "987654321" in str(missing.value)

    with pytest.raises(BadRequest) as bad:
        client.submit("echo x", language="bash", priority=5000)
    assert bad.value.status == 400 and "priority" in str(bad.value)

    done = client.wait(client.submit("echo x", language="bash"), timeout=60)
    with pytest.raises(Conflict) as finished:
        client.cancel(done)
    assert finished.value.code == "job_finished"

    wrong = "tr_not-a-real-token-5f3a"
    with Client(server.url, wrong) as stranger, pytest.raises(Unauthorized) as refused:
        stranger.list_jobs()
    assert refused.value.status == 401
    assert wrong not in repr(stranger)
    assert wrong not in str(refused.value) and wrong not in repr(refused.value)


def test_nothing_listening_is_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "tr_any") as client, pytest.raises(TransportError) as caught:
        client.submit("echo x", language="bash")
    assert url in str(caught.value)
    assert caught.value.reason == "ConnectError"


# --- the environment -----------------------------------------------------------------------

def test_tagrun_url_and_token_are_honoured(server: TagrunProcess,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAGRUN_WORKSPACE", raising=False)
    monkeypatch.setenv("TAGRUN_URL", server.url + "/")
    monkeypatch.setenv("TAGRUN_TOKEN", SUPERADMIN)
    with Client() as client:
        assert client.url == server.url
        assert client.wait(client.submit("echo env", language="bash"), 60).result == "env"

    monkeypatch.delenv("TAGRUN_TOKEN")
    with pytest.raises(ConfigError, match="TAGRUN_TOKEN"):
        Client()
    monkeypatch.setenv("TAGRUN_URL", "localhost:8000")
    with pytest.raises(ConfigError) as bad_url:
        Client(token="tr_x")
    assert "TAGRUN_URL='localhost:8000'" in str(bad_url.value)


# --- scripts, schedules, secrets -----------------------------------------------------------

def test_scripts_and_schedules(client: Client) -> None:
    path = f"f/client/{unique('hello')}"
    script = client.deploy_script(path, "echo v1", language="bash", lease_s=600)
    assert (script.path, script.version, script.lease_s) == (path, 1, 600)
    assert client.deploy_script(path, "echo v2", language="bash").version == 2
    assert client.get_script(path).content == "echo v2"
    assert path in [s.path for s in client.list_scripts(limit=1000)]
    assert client.wait(client.submit(script=path), 60).result == "v2"

    name = unique("nightly")
    schedule = client.create_schedule(name, cron="0 3 * * *", script=path,
                                      timezone="Europe/Paris", overlap="skip")
    assert (schedule.timezone, schedule.overlap, schedule.enabled) == ("Europe/Paris", "skip",
                                                                       True)
    assert schedule.next_fires
    assert {f.astimezone(ZoneInfo("Europe/Paris")).hour for f in schedule.next_fires} == {3}
    assert client.disable_schedule(name).enabled is False
    assert client.update_schedule(name, cron="0 4 * * *").cron == "0 4 * * *"
    assert name in [s.name for s in client.list_schedules(limit=1000)]
    client.delete_schedule(name)
    with pytest.raises(NotFound):
        client.get_schedule(name)


def test_secrets_never_show_their_value(start_process: Any, database_url: str) -> None:
    server = start_process("standalone", database_url,
                           env={"TAGRUN_SECRETS_KEY": new_key()}).wait_healthy()
    value = "s3cret-value-never-shown"
    with Client(server.url, SUPERADMIN) as client:
        secret = client.set_secret("DB_PASSWORD", value, allowed_tags=["deploy"])
        assert (secret.name, secret.allowed_tags) == ("DB_PASSWORD", ("deploy",))
        assert client.scope_secret("DB_PASSWORD", None).allowed_tags is None
        listed = client.list_secrets()
        assert [s.name for s in listed] == ["DB_PASSWORD"]
        assert value not in repr(listed) and value not in str([s.raw for s in listed])
        client.delete_secret("DB_PASSWORD")
        assert client.list_secrets() == []
        with pytest.raises(NotFound):
            client.delete_secret("DB_PASSWORD")


# --- asyncio -------------------------------------------------------------------------------

def test_the_async_client_does_the_same(server: TagrunProcess) -> None:
    async def run() -> None:
        async with AsyncClient(server.url, SUPERADMIN) as client:
            job = await client.submit("echo one; echo two", language="bash")
            assert [line async for line in client.logs(job, follow=True)] == ["one", "two"]
            done = await client.wait(job, timeout=60)
            assert (done.status, done.result) == ("succeeded", "two")

            parked = await client.submit("echo x", language="bash", tag=unique("nobody"))
            with pytest.raises(WaitTimeout):
                await client.wait(parked, timeout=0.2)
            assert (await client.cancel(parked)).status == "cancelled"
            with pytest.raises(NotFound):
                await client.get_job(987654321)

    asyncio.run(run())
