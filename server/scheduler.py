"""The scheduler: every server process runs one, and the database decides who fires what.

Each tick reads the enabled schedules soonest first and fires those due. A fire locks its
schedule row only while it still shows the due time read (SKIP LOCKED: a replica that lost
the race moves on) and records (schedule, fire time) under a primary key, in the transaction
that queues the job: one job per fire time, whatever the number of replicas or their timing.

Catch-up: a schedule whose due time passed while no scheduler ran fires once, for the latest
fire time missed, then carries on from the next time after now; the fires missed before that
are not replayed.

The clock is injectable: tests fire schedules at chosen times without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from tagrun.server import events
from tagrun.server.config import LeaseBounds
from tagrun.server.cron import Cron, CronError
from tagrun.server.errors import TagrunError
from tagrun.server.services.maintenance import BUILTINS
from tagrun.server.services.schedules import concurrency_key, schedule_job, utc_now
from tagrun.server.store import NewJob, Store
from tagrun.server.store._base import iso
from tagrun.server.store.schedules import Fire, Fired, ScheduleRecord
from tagrun.shared import tracing

log = logging.getLogger("tagrun.scheduler")

Clock = Callable[[], datetime]
TICK_S = 1.0  # the longest sleep: a new or changed schedule is seen within it
MIN_SLEEP_S = 0.02
BATCH = 100
# A fire this late was missed while no scheduler ran: logged as a catch-up even when it was
# the only fire time missed (a daily schedule of a server down over its hour).
LATE = timedelta(seconds=10)


class Scheduler:
    def __init__(
        self, store: Store, leases: LeaseBounds, *, clock: Clock = utc_now,
        tick_s: float = TICK_S,
    ) -> None:
        self.store, self.leases, self.clock, self.tick_s = store, leases, clock, tick_s
        self._crons: dict[tuple[str, str], Cron] = {}
        self._seeded = False

    def cron(self, expression: str, timezone: str) -> Cron:
        key = (expression, timezone)
        if key not in self._crons:
            if len(self._crons) > 10_000:
                self._crons.clear()
            self._crons[key] = Cron(expression, timezone)
        return self._crons[key]

    async def seed_builtins(self) -> None:
        """Create the built-in maintenance schedules that do not exist yet (every start)."""
        now = self.clock()
        for builtin in BUILTINS:
            await self.store.seed_builtin_schedule(
                builtin.name, builtin.cron, builtin.task, Cron(builtin.cron).next_after(now))
        self._seeded = True

    async def run(self, stop: asyncio.Event) -> None:
        delay = MIN_SLEEP_S
        while not stop.is_set():
            try:
                if not self._seeded:
                    await self.seed_builtins()
                delay = await self.tick()
            except Exception:  # noqa: BLE001 - the database may be away: try again later
                log.exception("scheduler.tick_failed")
                delay = self.tick_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def tick(self) -> float:
        """Fire every due schedule; returns how long to sleep before the next tick."""
        now = self.clock()
        schedules = await self.store.due_schedules(BATCH)
        if len(schedules) == BATCH and _due(schedules[-1]) <= now:
            soonest: datetime | None = now  # more may be due: come back at once
        else:
            soonest = next((_due(s) for s in schedules if _due(s) > now), None)
        for schedule in schedules:
            if _due(schedule) > now:
                break
            fired = await self.fire(schedule, now)
            if fired is not None and fired.next_fire_at is not None:
                soonest = min(soonest or fired.next_fire_at, fired.next_fire_at)
        if soonest is None:
            return self.tick_s
        wait = (soonest - self.clock()).total_seconds()
        return max(MIN_SLEEP_S, min(self.tick_s, wait))

    async def fire(self, schedule: ScheduleRecord, now: datetime) -> Fired | None:
        workspace, due = schedule.workspace, _due(schedule)
        job: NewJob | None = None
        error = None
        try:
            cron = self.cron(schedule.cron, schedule.timezone)
            fire_at, next_fire_at = cron.latest(due, now), cron.next_after(now)
        except CronError as exc:  # stored before a library change refused it: stop it here
            fire_at, next_fire_at, error = due, None, str(exc)
        if error is None:
            try:
                job = await schedule_job(self.store, workspace, schedule, self.leases)
            except TagrunError as exc:
                error = f"no job made: {exc.message}"
        span = _fire_span(schedule, fire_at) if job is not None else None
        if span is not None and job is not None:
            job = dataclasses.replace(job, traceparent=span.traceparent)
        fire = Fire(schedule.id, workspace, due, fire_at, next_fire_at, schedule.overlap,
                    concurrency_key(workspace, schedule.name), job, error)
        try:
            fired = await self.store.fire_schedule(fire)
        except TagrunError as exc:  # the database refused the job: record why, move on
            job = None
            fired = await self.store.fire_schedule(dataclasses.replace(
                fire, job=None, error=f"no job made: {exc.message}"))
        if span is not None:
            span.set("tagrun.schedule.outcome", fired.outcome if fired else "not_fired")
            if fired is not None and fired.job_id is not None:
                span.set("tagrun.job.id", fired.job_id)
            span.end()
        if fired is not None:
            self._log(schedule, fire_at, fired, late=now - fire_at > LATE)
            if job is not None and fired.job_id is not None:
                events.job_submitted(workspace, [fired.job_id], [job.tag])
        return fired

    def _log(self, schedule: ScheduleRecord, fire_at: datetime, fired: Fired, *,
             late: bool) -> None:
        fields = {"workspace": schedule.workspace, "schedule": schedule.name,
                  "fire_at": iso(fire_at), "outcome": fired.outcome, "job_id": fired.job_id}
        if fire_at != schedule.next_fire_at or late:
            log.warning("schedule.caught_up", extra={
                **fields, "missed_since": iso(schedule.next_fire_at)})
        if fired.outcome == "error":
            log.warning("schedule.fire_failed", extra={**fields, "error": fired.message})
        elif fired.outcome == "skipped":
            log.info("schedule.skipped", extra={**fields, "reason": fired.message})
        else:
            log.info("schedule.fired", extra={**fields, "cancelled": fired.cancelled})


def _due(schedule: ScheduleRecord) -> datetime:
    """A due schedule's next fire time: never None, as DUE_SCHEDULES reads only those set."""
    assert schedule.next_fire_at is not None
    return schedule.next_fire_at


def _fire_span(schedule: ScheduleRecord, fire_at: datetime) -> tracing.Span | None:
    """The root span of a scheduled job's trace (docs/tracing.md), when this server traces."""
    tracer = tracing.tracer()
    if tracer is None:
        return None
    return tracer.start("tagrun.schedule_fire", None, {
        "tagrun.workspace": schedule.workspace, "tagrun.schedule": schedule.name,
        "tagrun.schedule.fire_at": iso(fire_at)}, kind="producer")
