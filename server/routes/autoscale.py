"""`GET /api/autoscale`: what an autoscaler reads (with an autoscale token, or the
superadmin's). The figures and the formula are services/autoscale.py's."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.auth import authenticator
from tagrun.server.errors import InvalidInput
from tagrun.server.http import JSON, query_float, query_int
from tagrun.server.services.autoscale import (
    MAX_QUEUE_AGE_S,
    MAX_SLOTS_PER_AGENT,
    MAX_TARGET_SLOTS_PER_JOB,
    Inputs,
    autoscale_view,
)
from tagrun.server.store import Store
from tagrun.server.tags import TAG_PATTERN
from tagrun.shared.agent_wire import GROUP_PATTERN

_GROUP = re.compile(GROUP_PATTERN)


def read_inputs(request: Request) -> Inputs:
    target = query_float(request, "target_slots_per_job", 1.0, maximum=MAX_TARGET_SLOTS_PER_JOB)
    if target <= 0:
        raise InvalidInput("query parameter target_slots_per_job must be greater than 0")
    max_age = None
    if request.query_params.get("max_queue_age_s"):
        max_age = query_float(request, "max_queue_age_s", 0.0, maximum=MAX_QUEUE_AGE_S)
    slots = query_int(request, "slots_per_agent", 1, minimum=1, maximum=MAX_SLOTS_PER_AGENT)
    return Inputs(target_slots_per_job=target, max_queue_age_s=max_age, slots_per_agent=slots)


def _name(request: Request, key: str) -> str | None:
    value = request.query_params.get(key) or None
    if value is None:
        return None
    valid = _GROUP.match(value) if key == "group" else TAG_PATTERN.fullmatch(value)
    if not valid:
        raise InvalidInput(f"query parameter {key}={value!r} is not a valid {key} name")
    return value


async def autoscale(request: Request) -> JSON:
    await authenticator(request).autoscaler(request)
    inputs = read_inputs(request)
    group, tag = _name(request, "group"), _name(request, "tag")
    store: Store = request.app.state.store
    overview = await store.autoscale_overview(request.app.state.config.stale_after_s)
    paused = {p["tag"] for p in await store.paused_tags()}
    return JSON(autoscale_view(overview, inputs, paused_tags=paused, group=group, tag=tag))


routes = [Route("/api/autoscale", autoscale, methods=["GET"])]
