"""User routes for cron schedules: create, list, read, change, delete.

Built-in maintenance schedules live in workspace `default`: listed with the others, changed
only by the superadmin (cron, timezone, enabled), never deleted.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.auth import authenticator
from tagrun.server.errors import Forbidden, InvalidInput, NotFound
from tagrun.server.http import JSON, query_int, read_body
from tagrun.server.services.schedules import (
    BUILTIN_CHANGES,
    JOB_FIELDS,
    NAME,
    SIGNED_FIELDS,
    TIMES,
    ScheduleIn,
    SchedulePatch,
    changed_schedule,
    check_job,
    check_name,
    check_overlap,
    new_schedule,
    schedule_view,
    utc_now,
)
from tagrun.server.store import Store
from tagrun.server.store.schedules import LAST_RUNS_SHOWN, ScheduleRecord


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def _view(store: Store, schedule: ScheduleRecord, runs: int = LAST_RUNS_SHOWN
                ) -> dict[str, Any]:
    last = await store.last_runs([schedule.id], runs)
    return schedule_view(schedule, last[schedule.id])


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
    check_name(body.name)
    schedule = new_schedule(body, utc_now())
    check_overlap(body.overlap)
    store = _store(request)
    await check_job(store, workspace, schedule, request.app.state.config.lease_bounds)
    created = await store.create_schedule(workspace, schedule)
    return JSON(schedule_view(created, []), status_code=201)


async def list_schedules(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    after = request.query_params.get("cursor", "")
    store = _store(request)
    schedules = await store.list_schedules(workspace, after, limit)
    runs = await store.last_runs([s.id for s in schedules])
    next_cursor = schedules[-1].name if len(schedules) == limit else None
    return JSON({"schedules": [schedule_view(s, runs[s.id]) for s in schedules],
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
    if current.builtin is not None:
        principal = await authenticator(request).principal(request)
        if principal.kind != "superadmin":
            raise Forbidden("only the superadmin may change built-in schedules")
        if set(changes) - BUILTIN_CHANGES:
            raise InvalidInput(f"built-in schedule {name!r} takes only changes of "
                               f"{', '.join(sorted(BUILTIN_CHANGES))}")
    if "overlap" in changes:
        check_overlap(changes["overlap"])
    # Disabling always works, even a schedule whose script no longer takes its args.
    recheck = bool(JOB_FIELDS & set(changes)) and changes.get("enabled") is not False
    if "signature" in changes:
        signature = changes["signature"]
        changes["signature"] = signature.stored("schedule") if signature else None
    elif SIGNED_FIELDS & set(changes):
        changes["signature"] = None  # signed for what ran before: it would never verify
    if "script" in changes:
        changes["script_path"] = changes.pop("script")
    schedule = changed_schedule(current, changes, utc_now())
    reschedule = bool(TIMES & set(changes))
    if recheck and schedule.enabled:
        await check_job(store, workspace, schedule, request.app.state.config.lease_bounds)
    elif "script_path" in changes:
        # A disabled schedule may be left unresolvable while it is fixed (its tag and args
        # are checked when it is enabled), but never given a script that does not exist.
        try:
            await check_job(store, workspace, schedule, request.app.state.config.lease_bounds)
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
