"""One LISTEN connection per process: wakes waiters when jobs are queued or finish.

Waiters live in memory (they are re-created on reconnect); nothing here is the only copy
of any state. After a lost connection every waiter is woken, so each re-checks the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

import asyncpg

from tagrun.server.store import (
    CANCEL_CHANNEL,
    CAPPED_CHANNEL,
    DATABASE_ERRORS,
    DONE_CHANNEL,
    FLEET_CHANNEL,
    JOBS_CHANNEL,
)

log = logging.getLogger("tagrun.listener")


class TagWaiter:
    """An event set whenever a job is queued with one of `tags`."""

    def __init__(self, listener: Listener, tags: Iterable[str]) -> None:
        self.tags = frozenset(tags)
        self.event = asyncio.Event()
        self._listener = listener

    async def wait(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        woken = self.event.is_set()
        self.event.clear()
        return woken

    def close(self) -> None:
        self._listener._drop(self)


class Listener:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._by_tag: dict[str, set[TagWaiter]] = defaultdict(set)
        self._done: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._cancel_callbacks: list[Callable[[int], None]] = []
        self._queued_callbacks: list[Callable[[str | None], None]] = []
        self._capped_callbacks: list[Callable[[], None]] = []
        self._fleet_callbacks: list[Callable[[], None]] = []
        self._finished_callbacks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = asyncio.Event()

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._keep_connected(), name="listener")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 2)

    def waiter(self, tags: Iterable[str]) -> TagWaiter:
        waiter = TagWaiter(self, tags)
        for tag in waiter.tags:
            self._by_tag[tag].add(waiter)
        return waiter

    def _drop(self, waiter: TagWaiter) -> None:
        for tag in waiter.tags:
            waiters = self._by_tag.get(tag)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_tag[tag]

    @contextlib.contextmanager
    def watching_done(self, job_id: int) -> Iterator[asyncio.Event]:
        """An event set when job `job_id` reaches a final state (or may have: after a
        reconnect). Watch before reading the job, so that no finish falls in between."""
        event = asyncio.Event()
        self._done[job_id].add(event)
        try:
            yield event
        finally:
            events = self._done.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._done[job_id]

    def on_queued(self, callback: Callable[[str | None], None]) -> None:
        """Call `callback(tag)` when jobs are queued with `tag`; `callback(None)` after a
        reconnect, when any tag may have jobs that nobody was told about."""
        self._queued_callbacks.append(callback)

    def on_capped(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when caps change or a job of a capped script is queued (any
        replica), before the matching `on_queued` calls."""
        self._capped_callbacks.append(callback)

    def on_fleet(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when an agent or group is paused, resumed or asked to drain (any
        replica), and after a reconnect (such a change may have been missed)."""
        self._fleet_callbacks.append(callback)

    def _on_fleet(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        for callback in self._fleet_callbacks:
            callback()

    def on_finished(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever a job reaches a final state (any replica)."""
        self._finished_callbacks.append(callback)

    def wake_tag_waiters(self) -> None:
        """Wake every tag waiter: there may be jobs they could now claim."""
        for waiters in self._by_tag.values():
            for waiter in waiters:
                waiter.event.set()

    def _on_capped(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        for callback in self._capped_callbacks:
            callback()

    def on_cancel(self, callback: Callable[[int], None]) -> None:
        """Call `callback(job_id)` when a running job is asked to stop (any replica)."""
        self._cancel_callbacks.append(callback)

    def _on_cancel(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):
            job_id = int(str(payload))
            for callback in self._cancel_callbacks:
                callback(job_id)

    def _on_jobs(self, _conn: object, _pid: int, _channel: str, tag: object) -> None:
        for waiter in self._by_tag.get(str(tag), ()):
            waiter.event.set()
        for callback in self._queued_callbacks:
            callback(str(tag))

    def _on_done(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """Jobs ended: the payload names one, or several comma-separated (a batch of
        completions, store/completions.py)."""
        for callback in self._finished_callbacks:
            callback()
        if not self._done:
            return
        for item in str(payload).split(","):
            with contextlib.suppress(ValueError):
                for event in self._done.get(int(item), ()):
                    event.set()

    def _wake_all(self) -> None:
        self.wake_tag_waiters()
        for capped in self._capped_callbacks:
            capped()
        for fleet in self._fleet_callbacks:
            fleet()
        for events in self._done.values():
            for event in events:
                event.set()
        for callback in self._queued_callbacks:
            callback(None)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(JOBS_CHANNEL, self._on_jobs)
        await conn.add_listener(DONE_CHANNEL, self._on_done)
        await conn.add_listener(CANCEL_CHANNEL, self._on_cancel)
        await conn.add_listener(CAPPED_CHANNEL, self._on_capped)
        await conn.add_listener(FLEET_CHANNEL, self._on_fleet)
        self._conn = conn
        self.connected.set()

    async def _keep_connected(self) -> None:
        delay = 0.2
        while not self._closing:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                await asyncio.sleep(1.0)
                continue
            self.connected.clear()
            self._wake_all()  # notifications may have been missed: everyone re-checks
            try:
                await self._connect()
                log.info("listener.reconnected")
                delay = 0.2
                self._wake_all()  # and again: nothing sent while we were away was heard
            except DATABASE_ERRORS as exc:
                log.warning("listener.reconnect_failed", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
