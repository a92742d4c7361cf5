"""A direct worker (server/worker.py) against a real database: delayed jobs on time, and
logs that survive a database blip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tagrun.server.listener import Listener
from tagrun.server.store import NewJob, Store, create_pool
from tagrun.server.store.jobs import JobRecord
from tagrun.server.worker import Worker, WorkerSettings

Scenario = Callable[[Store, Listener], Awaitable[None]]


def run(database_url: str, scenario: Scenario) -> None:
    async def go() -> None:
        pool = await create_pool(database_url, size=4)
        listener = Listener(database_url)
        await listener.start()
        try:
            await scenario(Store(pool), listener)
        finally:
            await listener.close()
            await pool.close()
    asyncio.run(go())


def settings(**changes: Any) -> WorkerSettings:
    base: dict[str, Any] = {"name": "w-test", "tags": ("t",), "slots": 2, "lease_s": 30,
                            "heartbeat_s": 1, "poll_interval_s": 5.0}
    return WorkerSettings(**{**base, **changes})


def bash(content: str, *, run_at: datetime | None = None, max_attempts: int = 1) -> NewJob:
    return NewJob(None, None, "bash", content, {}, "t", 0, run_at, None, max_attempts)


async def until_final(store: Store, job_id: int, timeout: float = 20) -> JobRecord:
    async with asyncio.timeout(timeout):
        while (job := await store.get_job("default", job_id)).status in ("queued", "running"):
            await asyncio.sleep(0.05)
    return job


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def running(worker: Worker, body: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await body()
    finally:
        stop.set()
        await task


def test_retries_and_delayed_jobs_start_when_due_not_at_the_next_poll(
    database_url: str,
) -> None:
    """The backoff decides when a retry runs: with a 5 s poll, delays of 0.25-0.5 s and
    0.5-1 s are kept (they used to be rounded up to the poll), and a job with a run_at
    starts at it."""
    async def scenario(store: Store, listener: Listener) -> None:
        worker = Worker(store, listener, settings(retry_backoff_s=0.5))

        async def body() -> None:
            [failing] = await store.insert_jobs("default", [bash("exit 3", max_attempts=3)])
            final = await until_final(store, failing)
            attempts = final.attempts
            assert [(a["attempt"], a["error"]["kind"]) for a in attempts] == [
                (1, "script_error"), (2, "script_error"), (3, "script_error")]
            gaps = [seconds(attempts[i + 1]["started_at"]) - seconds(attempts[i]["finished_at"])
                    for i in range(2)]
            assert 0.25 <= gaps[0] < 0.5 + 0.4 and 0.5 <= gaps[1] < 1.0 + 0.4, gaps

            run_at = datetime.now(UTC) + timedelta(seconds=0.8)
            [delayed] = await store.insert_jobs("default", [bash("echo ok", run_at=run_at)])
            done = await until_final(store, delayed)
            late = seconds(done.attempts[0]["started_at"]) - run_at.timestamp()
            assert done.status == "succeeded" and 0 <= late < 0.4, late
        await running(worker, body)
    run(database_url, scenario)


class BlippingStore(Store):
    """A real store whose first log writes fail as if the database had just restarted."""

    failures = 2

    async def append_logs(self, *args: Any, **kwargs: Any) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("connection reset: the database is restarting")
        return await super().append_logs(*args, **kwargs)


def test_logs_survive_a_database_blip(database_url: str) -> None:
    async def scenario(store: Store, listener: Listener) -> None:
        blipping = BlippingStore(store.pool)
        worker = Worker(blipping, listener, settings())

        async def body() -> None:
            [job_id] = await blipping.insert_jobs("default", [bash(
                "echo first; sleep 0.5; echo second; sleep 0.5; echo third")])
            final = await until_final(store, job_id)
            assert (final.status, final.result) == ("succeeded", "third")
            logs = await store.read_logs("default", job_id, 0)
            assert logs["data"] == "first\nsecond\nthird\n" and logs["done"]
            assert blipping.failures == 0
        await running(worker, body)
    run(database_url, scenario)
