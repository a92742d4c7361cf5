"""User routes for cron schedules: create, list, read, change, delete.

Built-in maintenance schedules live in workspace `default`: listed with the others, changed
only by the superadmin (cron, timezone, enabled), never deleted.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.auth import authenticator
from tagrun.server.config import LeaseBounds
from tagrun.server.errors import Forbidden, InvalidInput, NotFound
from tagrun.server.http import JSON, query_int, read_body
from tagrun.server.maintenance import DESCRIPTIONS
from tagrun.server.scheduler import schedule_job, utc_now
from tagrun.server.store import Store
from tagrun.server.store._base import iso
from tagrun.server.store.schedules import LAST_RUNS_SHOWN
from tagrun.shared.cron import Cron, CronError, zone
from tagrun.shared.models import Path, TagTemplate, TimeoutS

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


class SchedulePatch(msgspec.Struct, forbid_unknown_fields=True):
    cron: Text | msgspec.UnsetType = msgspec.UNSET
    timezone: Text | msgspec.UnsetType = msgspec.UNSET
    script: Path | msgspec.UnsetType = msgspec.UNSET
    args: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    overlap: Text | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    timeout_s: TimeoutS | None | msgspec.UnsetType = msgspec.UNSET
    tag: TagTemplate | None | msgspec.UnsetType = msgspec.UNSET


BUILTIN_CHANGES = {"cron", "timezone", "enabled"}
TIMES = {"cron", "timezone", "enabled"}  # a change of these takes a new next fire time
JOB_FIELDS = {"script", "args", "tag", "timeout_s", "enabled"}  # checked again when changed


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _cron(expression: str, timezone: str) -> Cron:
    try:
        zone(timezone)
    except CronError as exc:
        raise InvalidInput(str(exc), code="unknown_timezone") from None
    try:
        return Cron(expression, timezone)
    except CronError as exc:
        raise InvalidInput(str(exc), code="invalid_cron") from None


def _next_fire(schedule: dict[str, Any], now: datetime) -> datetime | None:
    cron = _cron(schedule["cron"], schedule["timezone"])
    next_fire_at = cron.next_after(now)
    if next_fire_at is None:
        raise InvalidInput(f"cron {schedule['cron']!r} never fires", code="invalid_cron")
    return next_fire_at if schedule["enabled"] else None


def _check_overlap(overlap: str) -> None:
    if overlap not in OVERLAPS:
        raise InvalidInput(f"overlap {overlap!r} is not one of {', '.join(OVERLAPS)}",
                           code="invalid_overlap")


async def _check_job(
    store: Store, workspace: str, schedule: dict[str, Any], leases: LeaseBounds,
) -> None:
    """The schedule's script exists and its tag resolves with its args, as a fire needs."""
    if schedule["builtin"] is not None:
        return
    try:
        await schedule_job(store, workspace, schedule, leases)
    except NotFound:
        raise InvalidInput(f"unknown script {schedule['script_path']!r} in workspace "
                           f"{workspace!r}; deploy it first", code="unknown_script") from None


def schedule_view(schedule: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    next_fires: list[datetime] = []
    first = schedule["next_fire_at"]
    if schedule["enabled"] and first is not None:
        try:
            later = Cron(schedule["cron"], schedule["timezone"]).next_fires(
                first, NEXT_FIRES_SHOWN - 1)
        except CronError:
            later = []
        next_fires = [first, *later]
    builtin = schedule["builtin"]
    return {
        "name": schedule["name"],
        "workspace": schedule["workspace"],
        "cron": schedule["cron"],
        "timezone": schedule["timezone"],
        "script": schedule["script_path"],
        "args": schedule["args"],
        "overlap": schedule["overlap"],
        "enabled": schedule["enabled"],
        "timeout_s": schedule["timeout_s"],
        "tag": schedule["tag"],
        "builtin": builtin is not None,
        "description": DESCRIPTIONS.get(builtin) if builtin is not None else None,
        "next_fires": [iso(f) for f in next_fires],
        "last_runs": runs,
        "created_at": iso(schedule["created_at"]),
        "updated_at": iso(schedule["updated_at"]),
    }


async def _view(store: Store, schedule: dict[str, Any], runs: int = LAST_RUNS_SHOWN
                ) -> dict[str, Any]:
    last = await store.last_runs([schedule["id"]], runs)
    return schedule_view(schedule, last[schedule["id"]])


async def _named(request: Request) -> tuple[str, str]:
    workspace = await authenticator(request).workspace(request)
    name: str = request.path_params["name"]
    if not NAME.fullmatch(name):
        raise NotFound(f"no schedule {name!r} in workspace {workspace!r}",
                       code="schedule_not_found")
    return workspace, name


async def create_schedule(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    body = await read_body(request, ScheduleIn)
    if not NAME.fullmatch(body.name):
        raise InvalidInput(f"name {body.name!r} is not valid: 1-100 characters, lowercase "
                           "letters, digits and _ . -, starting with a letter or digit")
    if body.name.startswith(BUILTIN_PREFIX):
        raise InvalidInput(f"name {body.name!r}: names starting with {BUILTIN_PREFIX!r} are "
                           "kept for built-in schedules")
    schedule = {"name": body.name, "cron": body.cron, "timezone": body.timezone,
                "script_path": body.script, "args": body.args, "overlap": body.overlap,
                "enabled": body.enabled, "timeout_s": body.timeout_s, "tag": body.tag,
                "builtin": None}
    schedule["next_fire_at"] = _next_fire(schedule, utc_now())
    _check_overlap(body.overlap)
    store = _store(request)
    await _check_job(store, workspace, schedule, request.app.state.config.lease_bounds)
    created = await store.create_schedule(workspace, schedule)
    return JSON(schedule_view(created, []), status_code=201)


async def list_schedules(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    after = request.query_params.get("cursor", "")
    store = _store(request)
    schedules = await store.list_schedules(workspace, after, limit)
    runs = await store.last_runs([s["id"] for s in schedules])
    next_cursor = schedules[-1]["name"] if len(schedules) == limit else None
    return JSON({"schedules": [schedule_view(s, runs[s["id"]]) for s in schedules],
                 "next_cursor": next_cursor})


async def get_schedule(request: Request) -> JSON:
    workspace, name = await _named(request)
    runs = query_int(request, "runs", LAST_RUNS_SHOWN, minimum=0, maximum=1000)
    store = _store(request)
    return JSON(await _view(store, await store.get_schedule(workspace, name), runs))


async def patch_schedule(request: Request) -> JSON:
    workspace, name = await _named(request)
    body = await read_body(request, SchedulePatch)
    changes = {f: getattr(body, f) for f in body.__struct_fields__
               if getattr(body, f) is not msgspec.UNSET}
    store = _store(request)
    current = await store.get_schedule(workspace, name)
    if current["builtin"] is not None:
        principal = await authenticator(request).principal(request)
        if principal.kind != "superadmin":
            raise Forbidden("only the superadmin may change built-in schedules")
        if set(changes) - BUILTIN_CHANGES:
            raise InvalidInput(f"built-in schedule {name!r} takes only changes of "
                               f"{', '.join(sorted(BUILTIN_CHANGES))}")
    if "overlap" in changes:
        _check_overlap(changes["overlap"])
    # Disabling always works, even a schedule whose script no longer takes its args.
    check_job = bool(JOB_FIELDS & set(changes)) and changes.get("enabled") is not False
    if "script" in changes:
        changes["script_path"] = changes.pop("script")
    schedule = {**current, **changes}
    reschedule = bool(TIMES & set(changes))
    if reschedule:
        schedule["next_fire_at"] = _next_fire(schedule, utc_now())
    if check_job and schedule["enabled"]:
        await _check_job(store, workspace, schedule, request.app.state.config.lease_bounds)
    elif "script_path" in changes:
        # A disabled schedule may be left unresolvable while it is fixed (its tag and args
        # are checked when it is enabled), but never given a script that does not exist.
        try:
            await _check_job(store, workspace, schedule, request.app.state.config.lease_bounds)
        except InvalidInput as exc:
            if exc.code == "unknown_script":
                raise
    updated = await store.update_schedule(workspace, name, schedule, reschedule=reschedule)
    return JSON(await _view(store, updated))


async def delete_schedule(request: Request) -> JSON:
    workspace, name = await _named(request)
    await _store(request).delete_schedule(workspace, name)
    return JSON({"name": name, "workspace": workspace, "deleted": True})


routes = [
    Route("/api/w/{ws}/schedules", create_schedule, methods=["POST"]),
    Route("/api/w/{ws}/schedules", list_schedules, methods=["GET"]),
    Route("/api/w/{ws}/schedules/{name}", get_schedule, methods=["GET"]),
    Route("/api/w/{ws}/schedules/{name}", patch_schedule, methods=["PATCH"]),
    Route("/api/w/{ws}/schedules/{name}", delete_schedule, methods=["DELETE"]),
]
