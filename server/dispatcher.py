"""Hands jobs to long-polling agents, with no database query per idle agent.

Waiting agents are held in memory, grouped by their token's tag set. A NOTIFY for a tag (or
the one safety-net poll per process) makes the dispatcher lease jobs to the waiters of the
matching groups, many agents per statement. A tag whose last claim came back short is known
empty until a NOTIFY says otherwise, so agents arriving for it cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tagrun.server import events
from tagrun.server.errors import Unauthorized
from tagrun.server.listener import Listener
from tagrun.server.store import Store

log = logging.getLogger("tagrun.dispatcher")

MAX_SLOTS_PER_CLAIM = 500
Job = dict[str, Any]


@dataclass(eq=False)
class Waiter:
    name: str
    tags: tuple[str, ...]
    slots: int
    jti: str
    future: asyncio.Future[list[Job]] = field(default_factory=asyncio.Future)
    claiming: bool = False


class Dispatcher:
    def __init__(self, store: Store, listener: Listener, *, lease_s: float, poll_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._groups: dict[tuple[str, ...], list[Waiter]] = defaultdict(list)
        self._empty: set[str] = set()  # tags whose last claim came back short
        self._generation: dict[str, int] = defaultdict(int)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        listener.on_queued(self._on_queued)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._groups.values())

    def waiting_names(self) -> set[str]:
        return {w.name for group in self._groups.values() for w in group}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for group in self._groups.values():
            for waiter in group:
                if not waiter.future.done():
                    waiter.future.set_result([])

    async def claim(
        self, name: str, tags: tuple[str, ...], slots: int, wait_s: float, jti: str
    ) -> list[Job]:
        waiter = Waiter(name, tuple(sorted(set(tags))), slots, jti)
        self._groups[waiter.tags].append(waiter)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), max(wait_s, 0.05))
        except TimeoutError:
            if waiter.claiming:  # a claim for it is in flight: take its answer
                return await waiter.future
            return []
        except asyncio.CancelledError:  # the agent went away: give back what it was given
            self._release_later(waiter)
            raise
        finally:
            self._drop(waiter)

    def _release_later(self, waiter: Waiter) -> None:
        if not waiter.claiming:
            if not waiter.future.done():
                waiter.future.cancel()
            return

        async def release() -> None:  # the claim in flight will still hand it jobs
            with contextlib.suppress(Exception, asyncio.CancelledError):
                jobs = await waiter.future
                await self.store.release_jobs(waiter.name, [(j["id"], j["attempt"]) for j in jobs])
                log.info("dispatcher.released", extra={"agent": waiter.name,
                                                       "jobs": [j["id"] for j in jobs]})

        task = asyncio.get_running_loop().create_task(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def revoke(self, jti: str) -> None:
        for group in self._groups.values():
            for waiter in group:
                if waiter.jti == jti and not waiter.future.done() and not waiter.claiming:
                    waiter.future.set_exception(Unauthorized("agent token revoked"))

    def _drop(self, waiter: Waiter) -> None:
        group = self._groups.get(waiter.tags)
        if group is not None and waiter in group:
            group.remove(waiter)
            if not group:
                del self._groups[waiter.tags]

    def _on_queued(self, tag: str | None) -> None:
        if tag is None:
            self._empty.clear()
        else:
            self._generation[tag] += 1
            self._empty.discard(tag)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                self._empty.clear()  # the safety net: one look per tag set per poll
            self._wake.clear()
            for tags in list(self._groups):
                if not all(t in self._empty for t in tags):
                    await self._serve(tags)

    async def _serve(self, tags: tuple[str, ...]) -> None:
        waiters = [w for w in self._groups.get(tags, []) if not w.future.done()]
        slots: list[str] = []
        chosen: list[Waiter] = []
        for waiter in waiters:
            if len(slots) + waiter.slots > MAX_SLOTS_PER_CLAIM:
                break
            slots += [waiter.name] * waiter.slots
            chosen.append(waiter)
            waiter.claiming = True
        if not chosen:
            return
        generations = {t: self._generation[t] for t in tags}
        try:
            jobs = await self.store.claim_for_slots(tags, slots, self.lease_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("dispatcher.claim_failed", extra={"error": str(exc)})
            jobs = []
            await asyncio.sleep(0.5)
            self._wake.set()
        finally:
            for waiter in chosen:
                waiter.claiming = False
        self._hand_out(chosen, jobs)
        if len(jobs) < len(slots):
            self._empty |= {t for t in tags if self._generation[t] == generations[t]}
        else:
            self._wake.set()  # every slot filled: there may be more

    def _hand_out(self, chosen: list[Waiter], jobs: list[Job]) -> None:
        by_holder: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            by_holder[job["worker"]].append(job)
        for job in jobs:
            events.job_claimed(job)
        for waiter in chosen:
            mine = by_holder[waiter.name][: waiter.slots]
            del by_holder[waiter.name][: waiter.slots]
            if mine and not waiter.future.done():
                waiter.future.set_result(mine)
            elif mine:
                log.warning("dispatcher.waiter_gone", extra={"agent": waiter.name,
                                                              "jobs": [j["id"] for j in mine]})
