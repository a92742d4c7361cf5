"""Schedules' rules: what a valid schedule is, the job a fire makes, and how a schedule is
shown. Used by the schedule routes, the scheduler and the UI."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from tagrun.server.config import LeaseBounds
from tagrun.server.cron import Cron, CronError, zone
from tagrun.server.errors import InvalidInput, NotFound
from tagrun.server.models import JobIn, Path, SignatureIn, TagTemplate, TimeoutS, Version
from tagrun.server.services.jobs import ScriptCache, new_job, signature_view
from tagrun.server.services.maintenance import DESCRIPTIONS, maintenance_job
from tagrun.server.store import NewJob, Store
from tagrun.server.store._base import iso
from tagrun.server.store.schedules import ScheduleFields, ScheduleRecord, ScheduleRunRecord

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
BUILTIN_PREFIX = "tagrun."
OVERLAPS = ("queue", "skip", "replace")
NEXT_FIRES_SHOWN = 5
Text = Annotated[str, msgspec.Meta(max_length=200)]


class ScheduleIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Text
    cron: Text
    script: Path
    timezone: Text = "UTC"
    args: dict[str, Any] = {}
    overlap: Text = "queue"
    enabled: bool = True
    timeout_s: TimeoutS | None = None
    tag: TagTemplate | None = None
    # Fire this version of the script rather than its latest (a signed schedule does).
    script_version: Version | None = None
    # Its runs' signature (docs/signing.md): made when the schedule was, args included.
    signature: SignatureIn | None = None


class SchedulePatch(msgspec.Struct, forbid_unknown_fields=True):
    cron: Text | msgspec.UnsetType = msgspec.UNSET
    timezone: Text | msgspec.UnsetType = msgspec.UNSET
    script: Path | msgspec.UnsetType = msgspec.UNSET
    args: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    overlap: Text | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    timeout_s: TimeoutS | None | msgspec.UnsetType = msgspec.UNSET
    tag: TagTemplate | None | msgspec.UnsetType = msgspec.UNSET
    script_version: Version | None | msgspec.UnsetType = msgspec.UNSET
    signature: SignatureIn | None | msgspec.UnsetType = msgspec.UNSET


BUILTIN_CHANGES = {"cron", "timezone", "enabled"}
TIMES = {"cron", "timezone", "enabled"}  # a change of these takes a new next fire time
# Checked again when changed; a change of what runs (SIGNED_FIELDS) without a new signature
# drops the old one, which no longer matches.
JOB_FIELDS = {"script", "args", "tag", "timeout_s", "enabled", "script_version"}
SIGNED_FIELDS = {"script", "args", "tag", "timeout_s", "script_version"}


def utc_now() -> datetime:
    return datetime.now(UTC)


def cron_of(expression: str, timezone: str) -> Cron:
    try:
        zone(timezone)
    except CronError as exc:
        raise InvalidInput(str(exc), code="unknown_timezone") from None
    try:
        return Cron(expression, timezone)
    except CronError as exc:
        raise InvalidInput(str(exc), code="invalid_cron") from None


def next_fire(schedule: ScheduleFields, now: datetime) -> datetime | None:
    cron = cron_of(schedule.cron, schedule.timezone)
    next_fire_at = cron.next_after(now)
    if next_fire_at is None:
        raise InvalidInput(f"cron {schedule.cron!r} never fires", code="invalid_cron")
    return next_fire_at if schedule.enabled else None


def new_schedule(body: ScheduleIn, now: datetime) -> ScheduleFields:
    """The schedule a create writes, with its first fire time (InvalidInput if it has
    none to take)."""
    schedule = ScheduleFields(
        name=body.name, cron=body.cron, timezone=body.timezone, script_path=body.script,
        args=body.args, overlap=body.overlap, enabled=body.enabled, timeout_s=body.timeout_s,
        tag=body.tag, next_fire_at=None, script_version=body.script_version,
        signature=body.signature.stored("schedule") if body.signature else None)
    return msgspec.structs.replace(schedule, next_fire_at=next_fire(schedule, now))


def changed_schedule(current: ScheduleRecord, changes: dict[str, Any], now: datetime
                     ) -> ScheduleRecord:
    """`current` with `changes` (by column name) made; a change of its times takes a new next
    fire time."""
    schedule = msgspec.structs.replace(current, **changes)
    if TIMES & set(changes):
        schedule = msgspec.structs.replace(schedule, next_fire_at=next_fire(schedule, now))
    return schedule


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise InvalidInput(f"name {name!r} is not valid: 1-100 characters, lowercase "
                           "letters, digits and _ . -, starting with a letter or digit")
    if name.startswith(BUILTIN_PREFIX):
        raise InvalidInput(f"name {name!r}: names starting with {BUILTIN_PREFIX!r} are "
                           "kept for built-in schedules")


def check_overlap(overlap: str) -> None:
    if overlap not in OVERLAPS:
        raise InvalidInput(f"overlap {overlap!r} is not one of {', '.join(OVERLAPS)}",
                           code="invalid_overlap")


async def check_job(
    store: Store, workspace: str, schedule: ScheduleFields, leases: LeaseBounds,
) -> None:
    """The schedule's script exists and its tag resolves with its args, as a fire needs."""
    if schedule.builtin is not None:
        return
    try:
        await schedule_job(store, workspace, schedule, leases)
    except NotFound:
        raise InvalidInput(f"unknown script {schedule.script_path!r} in workspace "
                           f"{workspace!r}; deploy it first", code="unknown_script") from None


def schedule_view(schedule: ScheduleRecord, runs: list[ScheduleRunRecord]) -> dict[str, Any]:
    """A schedule as the API answers it and the UI shows it, with its latest runs."""
    next_fires: list[datetime] = []
    first = schedule.next_fire_at
    if schedule.enabled and first is not None:
        try:
            later = Cron(schedule.cron, schedule.timezone).next_fires(
                first, NEXT_FIRES_SHOWN - 1)
        except CronError:
            later = []
        next_fires = [first, *later]
    builtin = schedule.builtin
    return {
        "name": schedule.name,
        "workspace": schedule.workspace,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "script": schedule.script_path,
        "script_version": schedule.script_version,
        "args": schedule.args,
        "overlap": schedule.overlap,
        "enabled": schedule.enabled,
        "timeout_s": schedule.timeout_s,
        "tag": schedule.tag,
        "signature": signature_view(schedule.signature),
        "builtin": builtin is not None,
        "description": DESCRIPTIONS.get(builtin) if builtin is not None else None,
        "next_fires": [iso(f) for f in next_fires],
        "last_runs": [run_view(r) for r in runs],
        "created_at": iso(schedule.created_at),
        "updated_at": iso(schedule.updated_at),
    }


def run_view(run: ScheduleRunRecord) -> dict[str, Any]:
    """One fire as shown: its job's status, or what happened instead (skipped, error);
    `deleted` when its job is gone."""
    status = (run.status or "deleted") if run.outcome == "job" else run.outcome
    return {"fire_at": iso(run.fire_at), "job_id": run.job_id, "status": status,
            "message": run.message, "started_at": iso(run.started_at),
            "finished_at": iso(run.finished_at)}


def concurrency_key(workspace: str, name: str) -> str:
    """Every run of a schedule carries this key with limit 1: runs never overlap, and under
    overlap `queue` a run waits for the previous one (older runs first)."""
    return f"schedule:{workspace}/{name}"


async def schedule_job(
    store: Store, workspace: str, schedule: ScheduleFields, leases: LeaseBounds,
) -> NewJob:
    """The job a fire queues: the script's latest version, the schedule's args, tag and
    timeout, resolved like a submitted job. InvalidInput or NotFound when it cannot be."""
    key = concurrency_key(workspace, schedule.name)
    if schedule.builtin is not None:
        return maintenance_job(schedule.builtin, key)
    signature = schedule.signature
    body = JobIn(script=schedule.script_path, args=schedule.args, tag=schedule.tag,
                 timeout_s=schedule.timeout_s, script_version=schedule.script_version,
                 signature=SignatureIn(str(signature.get("key_id")), str(signature.get("sig")),
                                       signature.get("unsigned_args") is True)
                 if signature else None)
    job = await new_job(body, workspace, ScriptCache(store, workspace), leases,
                        source="schedule")
    return dataclasses.replace(job, concurrency_key=key, concurrency_limit=1)
