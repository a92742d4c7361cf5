"""Hands jobs to long-polling agents, with no database query per idle agent.

Waiting agents are held in memory, grouped by their token's tag set. A NOTIFY for a tag (or
the one safety-net poll per process) makes the dispatcher lease jobs to the waiters of the
matching groups, many agents per statement. A tag whose last claim came back short is known
empty until a NOTIFY says otherwise, so agents arriving for it cost nothing.

A job submitted to this process while one of its claims waits idle for the job's tag is
inserted already leased to that claim (`insert_job`): one statement, and no NOTIFY and claim
after it, between the submit and the job in the agent's hands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tagrun.server import events
from tagrun.server.errors import Unauthorized
from tagrun.server.listener import Listener
from tagrun.server.store import DATABASE_ERRORS, ClaimedRow, ClaimFilter, NewJob, Store
from tagrun.server.store.jobs import JobRecord

log = logging.getLogger("tagrun.dispatcher")

MAX_SLOTS_PER_CLAIM = 500
CLOSED_CLAIM_PAUSE_S = 0.5  # a claim arriving while the server stops is answered after this
Job = ClaimedRow


@dataclass(eq=False)
class Waiter:
    name: str
    tags: tuple[str, ...]
    slots: int
    jti: str
    key: str  # the holder key its jobs are leased under
    ack_s: float | None = None  # it acknowledges each job within this, or the job is requeued
    future: asyncio.Future[list[Job]] = field(default_factory=asyncio.Future)
    claiming: bool = False
    revoked: bool = False  # its token was revoked while a claim for it was in flight
    expired: bool = False  # its wait ran out while a claim for it was in flight
    group: str = ""  # its token's group (a paused group's agents stop waiting)
    only: ClaimFilter | None = None  # its local policy and the jobs it refused

    @property
    def key_of_group(self) -> GroupKey:
        return self.tags, self.only


# Waiters are served together when they have the same tags and the same filter.
GroupKey = tuple[tuple[str, ...], ClaimFilter | None]


class Dispatcher:
    def __init__(self, store: Store, listener: Listener, *, lease_s: float, poll_s: float,
                 settled: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        # Waits for a re-read of the fleet controls under way (FleetControls.settled): the
        # waiting claims a pause ends must not be served, or handed a submit, meanwhile.
        self._settled = settled
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._groups: dict[GroupKey, list[Waiter]] = defaultdict(list)
        # Tags whose last claim came back short, for each filter: what an agent's policy
        # left in the queue may be another's.
        self._empty: dict[ClaimFilter | None, set[str]] = defaultdict(set)
        self._generation: dict[str, int] = defaultdict(int)
        self._due: dict[str, float] = {}  # tag -> loop time its next delayed job is due
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        listener.on_queued(self._on_queued)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._groups.values())

    @property
    def waiting_slots(self) -> int:
        """Free slots of the claims held open here."""
        return sum(w.slots for group in self._groups.values() for w in group)

    def waiting_names(self) -> set[str]:
        return {w.name for group in self._groups.values() for w in group}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatcher")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for group in self._groups.values():
            for waiter in group:
                if not waiter.future.done():
                    waiter.future.set_result([])

    @property
    def closed(self) -> bool:
        """The server is stopping: claims are answered without jobs."""
        return self._closed

    async def claim(
        self, name: str, tags: tuple[str, ...], slots: int, wait_s: float, jti: str,
        key: str | None = None, ack_s: float | None = None, group: str = "",
        only: ClaimFilter | None = None, current: Callable[[], bool] | None = None,
    ) -> list[Job]:
        """Jobs of `tags` for up to `slots`, waiting up to `wait_s`. `current()` False: what
        the caller chose the tags from changed before the wait began (after, end_waits
        answers it): answered at once without jobs, so that it asks again."""
        if self._closed:
            # The server is stopping: a claim that came in on a kept-alive connection after
            # the long-polls were ended would otherwise wait for nothing and hold uvicorn's
            # graceful shutdown until it cancels the request. Answer it empty, after a pause
            # so that the agent does not spin before its connection is closed.
            await asyncio.sleep(min(wait_s, CLOSED_CLAIM_PAUSE_S))
            return []
        waiter = Waiter(name, tuple(sorted(set(tags))), slots, jti, key or jti, ack_s,
                        group=group, only=only)
        if current is not None and not current():
            return []
        self._groups[waiter.key_of_group].append(waiter)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), max(wait_s, 0.05))
        except TimeoutError:
            if waiter.claiming:  # a claim for it is in flight: take its answer, even if none
                waiter.expired = True
                return await waiter.future
            if waiter.future.done() and not waiter.future.cancelled():
                # Answered as the wait ran out (wait_for gave up on the shield first): what it
                # was leased is its answer, else it would be leased to nobody until it expires.
                return waiter.future.result()
            return []
        except asyncio.CancelledError:  # the agent went away: give back what it was given
            self._release_later(waiter)
            raise
        finally:
            self._drop(waiter)

    async def insert_job(self, workspace: str, job: NewJob) -> JobRecord:
        """Insert a submitted job; leased at once when a claim here waits idle for its tag.
        An idle claim means no due job of its tags was queued when it last looked (or a
        NOTIFY would be serving it), so the job is the one its claim would take. A job not
        yet due or under a concurrency key is queued, for the claims to weigh as usual; so
        is every job for a claim with a local policy (the claim statement applies it)."""
        if self._settled is not None:
            await self._settled()
        waiter = None if self._closed or job.concurrency_key is not None \
            or job.run_at is not None else self._idle_for(job.tag)
        if waiter is None:
            return await self.store.insert_job(workspace, job)
        waiter.claiming = True
        # Shielded: once the job is leased, it reaches the claim (or is given back) even if
        # the submitter goes away meanwhile.
        return await asyncio.shield(self._insert_leased(waiter, workspace, job))

    async def _insert_leased(self, waiter: Waiter, workspace: str, job: NewJob) -> JobRecord:
        leased: Job | None = None
        try:
            made, leased = await self.store.insert_job_leased(
                workspace, job, waiter.name, waiter.key, waiter.ack_s, self.lease_s)
        finally:  # not leased (a cap may apply, or the insert failed): the claim waits on
            waiter.claiming = False
            self._hand_out([waiter], [leased] if leased is not None else [])
        return made

    def _idle_for(self, tag: str) -> Waiter | None:
        """The longest-waiting claim here without a local policy, of a tag set with `tag`,
        that no claim statement is serving."""
        for (tags, only), waiters in self._groups.items():
            if only is None and tag in tags:
                for waiter in waiters:
                    if not waiter.claiming and not waiter.future.done():
                        return waiter
        return None

    def _release_later(self, waiter: Waiter) -> None:
        if not waiter.claiming:
            if not waiter.future.done():
                waiter.future.cancel()
            elif not waiter.future.cancelled() and waiter.future.exception() is None \
                    and waiter.future.result():  # answered just as the agent went away
                self._release(waiter, waiter.future.result())
            return

        async def release() -> None:  # the claim in flight will still hand it jobs
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._released(waiter, await waiter.future)

        self._in_background(release())

    def _release(self, waiter: Waiter, jobs: list[Job]) -> None:
        self._in_background(self._released(waiter, jobs))

    async def _released(self, waiter: Waiter, jobs: list[Job]) -> None:
        with contextlib.suppress(*DATABASE_ERRORS):
            await self.store.release_jobs(waiter.name, [(j.id, j.attempt) for j in jobs],
                                          key=waiter.key)
            log.info("dispatcher.released", extra={"agent": waiter.name,
                                                   "jobs": [j.id for j in jobs]})

    def _in_background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def revoke(self, jti: str) -> None:
        for group in self._groups.values():
            for waiter in group:
                if waiter.jti != jti or waiter.future.done():
                    continue
                if waiter.claiming:  # answered when that claim returns
                    waiter.revoked = True
                else:
                    waiter.future.set_exception(Unauthorized("agent token revoked"))

    def end_waits(self, stopped: Callable[[str, str], bool]) -> None:
        """Answer at once, without jobs, the waiting claims of agents `stopped(name, group)`
        names (paused, draining): their next claim hears why. A claim already in flight
        still hands out what it leased."""
        for group in self._groups.values():
            for waiter in group:
                if not waiter.claiming and not waiter.future.done() \
                        and stopped(waiter.name, waiter.group):
                    waiter.future.set_result([])

    def _drop(self, waiter: Waiter) -> None:
        group = self._groups.get(waiter.key_of_group)
        if group is not None and waiter in group:
            group.remove(waiter)
            if not group:
                del self._groups[waiter.key_of_group]

    def room_freed(self) -> None:
        """A job finished while a cap may apply: jobs it held back may be claimable now."""
        if self._groups:
            self._empty.clear()
            self._wake.set()

    def _on_queued(self, tag: str | None) -> None:
        if tag is None:
            self._empty.clear()
        else:
            self._generation[tag] += 1
            self._forget_empty(tag)
        self._wake.set()

    def _forget_empty(self, tag: str) -> None:
        for empty in self._empty.values():
            empty.discard(tag)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.poll_s
        while True:
            # The sweep runs on its own clock: new claims wake the loop but never push the
            # sweep back, so jobs that nobody was notified about are found within poll_s.
            deadline = min([next_sweep, *self._due.values()])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(deadline - loop.time(), 0))
            self._wake.clear()
            now = loop.time()
            if now >= next_sweep:
                next_sweep = now + self.poll_s
                await self._sweep()
                now = loop.time()
            for tag, due in list(self._due.items()):
                if now >= due:  # a delayed job (run_at, retry backoff) is due
                    del self._due[tag]
                    self._forget_empty(tag)
            if self._settled is not None:
                await self._settled()
            for group in list(self._groups):
                tags, only = group
                empty = self._empty.get(only, set())
                if not all(t in empty for t in tags):
                    await self._serve(group)

    async def _sweep(self) -> None:
        """The safety net, once per poll: one statement looks at the queue for every tag
        waited on here (not one claim per tag set). The tag sets with a due job are served
        (a NOTIFY may have been missed), the others are known empty, and a job due later is
        given its due time."""
        tags = sorted({t for group_tags, _ in self._groups for t in group_tags})
        if not tags:
            return
        generations = {t: self._generation[t] for t in tags}
        try:
            next_s = await self.store.seconds_to_next_by_tag(tags)
        except DATABASE_ERRORS:
            self._empty.clear()  # serve every tag set: the claims will say
            return
        due = {t for t, s in next_s.items() if s <= 0}
        for empty in self._empty.values():
            empty -= due
        # A tag queued to while the statement ran was heard of after it: not known empty.
        quiet = {t for t in tags if t not in due and self._generation[t] == generations[t]}
        for _, only in self._groups:
            self._empty[only] |= quiet
        now = asyncio.get_running_loop().time()
        for tag, seconds in next_s.items():
            if seconds > 0:
                at = now + seconds + 0.005
                self._due[tag] = min(self._due.get(tag, at), at)

    async def _serve(self, group: GroupKey) -> None:
        tags, only = group
        waiters = [w for w in self._groups.get(group, [])
                   if not w.future.done() and not w.claiming]  # not being leased a submit
        slots: list[str] = []
        keys: list[str | None] = []
        acks: list[float | None] = []
        chosen: list[Waiter] = []
        for waiter in waiters:
            if len(slots) + waiter.slots > MAX_SLOTS_PER_CLAIM:
                break
            slots += [waiter.name] * waiter.slots
            keys += [waiter.key] * waiter.slots
            acks += [waiter.ack_s] * waiter.slots
            chosen.append(waiter)
            waiter.claiming = True
        if not chosen:
            return
        generations = {t: self._generation[t] for t in tags}
        try:
            jobs = await self.store.claim_for_slots(tags, slots, self.lease_s, keys=keys,
                                                    acks=acks, only=only)
        except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive any claim
            if isinstance(exc, DATABASE_ERRORS):
                log.warning("dispatcher.claim_failed", extra={"error": str(exc)})
            else:
                log.exception("dispatcher.claim_crashed")
            jobs = []
            await asyncio.sleep(0.5)
            self._wake.set()
        finally:
            for waiter in chosen:
                waiter.claiming = False
        self._hand_out(chosen, jobs)
        if len(jobs) < len(slots):
            empty = {t for t in tags if self._generation[t] == generations[t]}
            self._empty[only] |= empty
            await self._note_delayed(empty)
        else:
            self._wake.set()  # every slot filled: there may be more

    async def _note_delayed(self, tags: set[str]) -> None:
        """Remember when the next not-yet-due job of `tags` becomes due: no NOTIFY comes then."""
        if not tags:
            return
        try:
            seconds = await self.store.seconds_to_next_due(sorted(tags))
        except DATABASE_ERRORS:
            return  # the sweep will look again
        if seconds is not None and seconds > 0:  # <= 0: due but held back by a cap
            due = asyncio.get_running_loop().time() + max(seconds, 0.0) + 0.005
            for tag in tags:
                self._due[tag] = min(self._due.get(tag, due), due)

    def _hand_out(self, chosen: list[Waiter], jobs: list[Job]) -> None:
        by_holder: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for job in jobs:
            by_holder[job.worker, job.holder_key or ""].append(job)
        for job in jobs:
            events.job_claimed(job)
        for waiter in chosen:
            mine = by_holder[waiter.name, waiter.key][: waiter.slots]
            del by_holder[waiter.name, waiter.key][: waiter.slots]
            if waiter.future.done():
                if mine:
                    log.warning("dispatcher.waiter_gone", extra={
                        "agent": waiter.name, "jobs": [j.id for j in mine]})
                    self._release(waiter, mine)
            elif waiter.revoked:
                if mine:  # leased in the claim that raced the revocation: give them back
                    self._release(waiter, mine)
                waiter.future.set_exception(Unauthorized("agent token revoked"))
            elif mine:
                waiter.future.set_result(mine)
            elif waiter.expired:  # its long-poll is over: answer it now, with nothing
                waiter.future.set_result([])
