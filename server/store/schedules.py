"""Cron schedules, their fires, and the statements of the built-in maintenance schedules.

One job per fire time, however many schedulers run: a fire locks its schedule row while the
row still shows the fire's due time (a replica that lost the race skips it, or finds the row
moved on), and `schedule_fires` has one row per (schedule, fire time) by its primary key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from tagrun.server.errors import Conflict, NotFound
from tagrun.server.job_states import FINAL_STATES
from tagrun.server.store._base import (
    CANCEL_CHANNEL,
    DONE_CHANNEL,
    StoreBase,
    translated_errors,
)
from tagrun.server.store.jobs import CANCEL_JOB, INSERT_JOBS, NewJob, _columns, _late_columns

# What every statement returning schedules returns: the fields of ScheduleRecord.
SCHEDULE_COLUMNS = """id, workspace, name, cron, timezone, script_path, args, overlap, enabled,
    timeout_s, tag, builtin, next_fire_at, script_version, signature, created_at, updated_at"""
INSERT_SCHEDULE = f"""
INSERT INTO schedules (workspace, name, cron, timezone, script_path, args, overlap, enabled,
                       timeout_s, tag, next_fire_at, script_version, signature, builtin)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING {SCHEDULE_COLUMNS}"""
SEED_BUILTIN = """
INSERT INTO schedules (workspace, name, cron, timezone, args, overlap, builtin, next_fire_at)
VALUES ('default', $1, $2, 'UTC', '{}', 'skip', $3, $4)
ON CONFLICT (workspace, name) DO NOTHING"""
GET_SCHEDULE = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE workspace = $1 AND name = $2"""
LIST_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE workspace = $1 AND name > $2
ORDER BY name LIMIT $3"""
# $12: the schedule's times changed (cron, time zone, enabled): take the new next fire time.
UPDATE_SCHEDULE = f"""
UPDATE schedules SET cron = $3, timezone = $4, script_path = $5, args = $6, overlap = $7,
    enabled = $8, timeout_s = $9, tag = $10, script_version = $13, signature = $14,
    next_fire_at = CASE WHEN $12 THEN $11 ELSE next_fire_at END, updated_at = now()
WHERE workspace = $1 AND name = $2 RETURNING {SCHEDULE_COLUMNS}"""
DELETE_SCHEDULE = """
DELETE FROM schedules WHERE workspace = $1 AND name = $2 AND builtin IS NULL RETURNING id"""
LAST_RUNS = """
SELECT s.id AS schedule_id, f.fire_at, f.outcome, f.job_id, f.message,
       j.status, j.started_at, j.finished_at
FROM unnest($1::bigint[]) AS s(id)
CROSS JOIN LATERAL (
    SELECT * FROM schedule_fires WHERE schedule_id = s.id ORDER BY fire_at DESC LIMIT $2
) f
LEFT JOIN jobs j ON j.id = f.job_id
ORDER BY s.id, f.fire_at DESC"""
DUE_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE enabled AND next_fire_at IS NOT NULL
ORDER BY next_fire_at LIMIT $1"""
LOCK_DUE = """
SELECT id FROM schedules WHERE id = $1 AND enabled AND next_fire_at = $2
FOR UPDATE SKIP LOCKED"""
# Runs of a schedule share its concurrency key: queued ones are in `queue`, running ones in
# `running` (both lookups use an index on the key).
ACTIVE_RUNS = """
SELECT job_id AS id, false AS cancelling FROM queue WHERE concurrency_key = $1
UNION ALL
SELECT j.id, j.cancel_requested FROM running r JOIN jobs j ON j.id = r.job_id
WHERE r.concurrency_key = $1 AND j.status = 'running'
ORDER BY id"""
INSERT_FIRE = """
INSERT INTO schedule_fires (schedule_id, fire_at, outcome, job_id, message)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (schedule_id, fire_at) DO NOTHING RETURNING fire_at"""
ADVANCE = "UPDATE schedules SET next_fire_at = $3 WHERE id = $1 AND next_fire_at = $2"

# Built-in maintenance, in batches so that no statement holds many locks for long.
DELETE_OLD_JOBS = """
WITH old AS (
    SELECT j.id FROM ended e JOIN jobs j ON j.id = e.job_id
    WHERE e.finished_at < $1 AND e.status = ANY($3::text[])
    ORDER BY e.finished_at LIMIT $2 FOR UPDATE OF j SKIP LOCKED
)
DELETE FROM jobs j USING old WHERE j.id = old.id"""
DELETE_OLD_FIRES = """
DELETE FROM schedule_fires WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM schedule_fires WHERE created_at < $1 LIMIT $2))"""
DELETE_EXPIRED_AGENT_TOKENS = "DELETE FROM agent_tokens WHERE expires_at < $1"
DELETE_STALE_WORKERS = """
WITH processes AS (DELETE FROM server_processes WHERE last_seen < $1)
DELETE FROM workers w USING workers_seen s WHERE s.name = w.name AND s.seen_at < $1"""

LAST_RUNS_SHOWN = 10


class ScheduleFields(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as a create writes it and a change rewrites it: what its fires are made
    from. `name` and `builtin` are written at creation only (a change finds the row by its
    name; built-in schedules are seeded by the scheduler, never created through here)."""

    name: str
    cron: str
    timezone: str
    script_path: str | None  # None: a built-in schedule
    args: dict[str, Any]
    overlap: str  # 'queue' | 'skip' | 'replace'
    enabled: bool
    timeout_s: float | None
    tag: str | None
    next_fire_at: datetime | None  # None: it never fires again
    script_version: int | None = None  # None: the script's latest at each fire
    signature: dict[str, Any] | None = None  # who signed its runs (docs/signing.md)
    builtin: str | None = None  # the maintenance task of a built-in schedule


class ScheduleRecord(ScheduleFields, frozen=True, kw_only=True):
    """A stored schedule: the columns of SCHEDULE_COLUMNS."""

    id: int
    workspace: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ScheduleRecord:
        return cls(**row)


class ScheduleRunRecord(msgspec.Struct, frozen=True):
    """One fire of a schedule and the job it made, if any (the columns of LAST_RUNS)."""

    schedule_id: int
    fire_at: datetime
    outcome: str  # 'job' | 'skipped' | 'error'
    job_id: int | None
    message: str | None
    status: str | None  # its job's; None: it made no job, or the job was deleted since
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ScheduleRunRecord:
        return cls(**row)


@dataclass(frozen=True)
class Fire:
    """What one fire of a schedule should do, decided by the scheduler."""

    schedule_id: int
    workspace: str
    due: datetime  # the schedule's next_fire_at as read: the fire happens only if it still is
    fire_at: datetime
    next_fire_at: datetime | None
    overlap: str
    concurrency_key: str
    job: NewJob | None  # None: no job could be made, `error` says why
    error: str | None = None


@dataclass(frozen=True)
class Fired:
    outcome: str  # 'job' | 'skipped' | 'error' | 'duplicate'
    job_id: int | None = None
    message: str | None = None
    cancelled: list[int] = field(default_factory=list)
    next_fire_at: datetime | None = None


class _AlreadyFired(Exception):
    pass


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids)


class Schedules(StoreBase):
    async def create_schedule(self, workspace: str, fields: ScheduleFields) -> ScheduleRecord:
        try:
            row = await self.fetchrow(
                INSERT_SCHEDULE, workspace, fields.name, fields.cron, fields.timezone,
                fields.script_path, fields.args, fields.overlap, fields.enabled,
                fields.timeout_s, fields.tag, fields.next_fire_at, fields.script_version,
                fields.signature, fields.builtin)
        except Conflict:
            raise Conflict(f"schedule {fields.name!r} already exists in workspace "
                           f"{workspace!r}", code="schedule_exists") from None
        assert row is not None
        return ScheduleRecord.from_row(row)

    async def seed_builtin_schedule(
        self, name: str, cron: str, task: str, next_fire_at: datetime | None
    ) -> None:
        await self.execute(SEED_BUILTIN, name, cron, task, next_fire_at)

    async def get_schedule(self, workspace: str, name: str) -> ScheduleRecord:
        row = await self.fetchrow(GET_SCHEDULE, workspace, name)
        if row is None:
            raise NotFound(f"no schedule {name!r} in workspace {workspace!r}",
                           code="schedule_not_found")
        return ScheduleRecord.from_row(row)

    async def list_schedules(self, workspace: str, after: str, limit: int
                             ) -> list[ScheduleRecord]:
        return [ScheduleRecord.from_row(r)
                for r in await self.fetch(LIST_SCHEDULES, workspace, after, limit)]

    async def update_schedule(
        self, workspace: str, name: str, fields: ScheduleFields, *, reschedule: bool
    ) -> ScheduleRecord:
        row = await self.fetchrow(
            UPDATE_SCHEDULE, workspace, name, fields.cron, fields.timezone,
            fields.script_path, fields.args, fields.overlap, fields.enabled,
            fields.timeout_s, fields.tag, fields.next_fire_at, reschedule,
            fields.script_version, fields.signature)
        if row is None:
            raise NotFound(f"no schedule {name!r} in workspace {workspace!r}",
                           code="schedule_not_found")
        return ScheduleRecord.from_row(row)

    async def delete_schedule(self, workspace: str, name: str) -> None:
        if await self.fetchval(DELETE_SCHEDULE, workspace, name) is None:
            schedule = await self.get_schedule(workspace, name)  # NotFound if it never was
            if schedule.builtin is not None:
                raise Conflict(f"schedule {name!r} is built-in maintenance and cannot be "
                               "deleted; disable it instead", code="schedule_builtin")

    async def last_runs(self, schedule_ids: Sequence[int], limit: int = LAST_RUNS_SHOWN
                        ) -> dict[int, list[ScheduleRunRecord]]:
        """The latest fires of each schedule, newest first."""
        runs: dict[int, list[ScheduleRunRecord]] = {i: [] for i in schedule_ids}
        for row in await self.fetch(LAST_RUNS, list(schedule_ids), limit):
            run = ScheduleRunRecord.from_row(row)
            runs[run.schedule_id].append(run)
        return runs

    async def due_schedules(self, limit: int) -> list[ScheduleRecord]:
        """Enabled schedules by next fire time, soonest first."""
        return [ScheduleRecord.from_row(r) for r in await self.fetch(DUE_SCHEDULES, limit)]

    async def fire_schedule(self, fire: Fire) -> Fired | None:
        """Record `fire` and make its job, applying the overlap policy, in one transaction.

        None: another scheduler holds or already moved the schedule (or it was disabled,
        changed or deleted meanwhile)."""
        async with translated_errors(), self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if await conn.fetchval(LOCK_DUE, fire.schedule_id, fire.due) is None:
                        return None
                    fired = dataclasses.replace(await _apply(conn, fire),
                                                next_fire_at=fire.next_fire_at)
                    recorded = await conn.fetchval(
                        INSERT_FIRE, fire.schedule_id, fire.fire_at, fired.outcome,
                        fired.job_id, fired.message)
                    if recorded is None:
                        raise _AlreadyFired()  # rolls back the job and any cancel
                    await conn.execute(ADVANCE, fire.schedule_id, fire.due, fire.next_fire_at)
                    return fired
            except _AlreadyFired:
                # Only after clocks disagree (one replica fired early, another rescheduled
                # from a slower clock): the time has its job; move on.
                await conn.execute(ADVANCE, fire.schedule_id, fire.due, fire.next_fire_at)
                return Fired("duplicate", next_fire_at=fire.next_fire_at)

    # --- built-in maintenance -------------------------------------------------------------

    async def delete_old_jobs(self, finished_before: datetime, batch: int) -> int:
        return _count(await self.execute(DELETE_OLD_JOBS, finished_before, batch,
                                         list(FINAL_STATES)))

    async def delete_old_fires(self, created_before: datetime, batch: int) -> int:
        return _count(await self.execute(DELETE_OLD_FIRES, created_before, batch))

    async def delete_expired_agent_tokens(self, expired_before: datetime) -> int:
        return _count(await self.execute(DELETE_EXPIRED_AGENT_TOKENS, expired_before))

    async def delete_stale_workers(self, seen_before: datetime) -> int:
        return _count(await self.execute(DELETE_STALE_WORKERS, seen_before))


async def _apply(conn: Any, fire: Fire) -> Fired:
    if fire.job is None:
        return Fired("error", message=fire.error)
    rows = await conn.fetch(ACTIVE_RUNS, fire.concurrency_key)
    active = [r["id"] for r in rows]
    message = None
    cancelled: list[int] = []
    if active and fire.overlap == "skip":
        return Fired("skipped", message=f"run {_ids(active)} was still queued or running")
    if active and fire.overlap == "replace":
        for job_id in (r["id"] for r in rows if not r["cancelling"]):
            if await conn.fetchrow(CANCEL_JOB, fire.workspace, job_id, DONE_CHANNEL,
                                   CANCEL_CHANNEL) is not None:
                cancelled.append(job_id)
        message = f"replaced run {_ids(cancelled)}" if cancelled else None
    elif active:
        message = f"waits for run {_ids(active)}"
    [row] = await conn.fetch(INSERT_JOBS, *_columns([fire.job]), fire.workspace,
                             *_late_columns([fire.job]))
    return Fired("job", job_id=int(row["id"]), message=message, cancelled=cancelled)


def _count(status: str) -> int:
    return int(status.split()[-1])
