"""Superadmin routes for the fleet: agent tokens, and who is connected (`/api/workers`)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.agent_tokens import AgentTokens
from tagrun.server.auth import authenticator
from tagrun.server.errors import InvalidInput, NotFound
from tagrun.server.fleet_controls import FleetControls
from tagrun.server.http import JSON, query_int, read_body
from tagrun.server.models import DrainIn, PauseIn
from tagrun.server.services.agent_detail import agent_detail
from tagrun.server.services.fleet import STATES, agents_page, fleet_view, totals
from tagrun.server.services.settings import current
from tagrun.server.store import RECOMMENDED_AGENT_VERSION, Store
from tagrun.server.tags import TagError, validate_tag
from tagrun.shared.agent_wire import AGENT_NAME_PATTERN, GROUP_PATTERN, AgentTokenIn
from tagrun.shared.version import __version__

log = logging.getLogger("tagrun.fleet")
# The names the agent API accepts (shared/agent_wire.py): nothing else can have a record.
NAMES = {"name": re.compile(AGENT_NAME_PATTERN), "group": re.compile(GROUP_PATTERN)}


def _tokens(request: Request) -> AgentTokens:
    tokens: AgentTokens = request.app.state.agent_tokens
    return tokens


async def mint_agent_token(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    body = await read_body(request, AgentTokenIn)
    try:
        tags = sorted({validate_tag(t) for t in body.tags})
    except TagError as exc:
        raise InvalidInput(str(exc), code="invalid_tag") from None
    minted = await _tokens(request).mint(body.group, tags, body.expires_in_s, body.label,
                                         body.max_jobs)
    return JSON(minted, status_code=201)


async def list_agent_tokens(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    include_inactive = request.query_params.get("all", "") in ("1", "true")
    store: Store = request.app.state.store
    return JSON({"agent_tokens": await store.list_agent_tokens(include_inactive)})


async def revoke_agent_token(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    jti: str = request.path_params["jti"]
    if not jti.isalnum() or len(jti) > 64:
        raise InvalidInput(f"{jti!r} is not a token id (jti)")
    await _tokens(request).revoke(jti)
    return JSON({"jti": jti, "revoked": True})


MAX_WORKERS_PAGE = 5000


async def list_workers(request: Request) -> JSON:
    """Pools, tags and totals count every agent; `agents` is one page of those matching the
    filters, by name (`next_cursor` asks for the next)."""
    await authenticator(request).superadmin(request)
    query = request.query_params
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise InvalidInput(f"state {state!r} is not one of {', '.join(STATES)}")
    limit = query_int(request, "limit", 1000, minimum=1, maximum=MAX_WORKERS_PAGE)
    store: Store = request.app.state.store
    overview = await store.workers_overview(request.app.state.config.stale_after_s)
    waits = await store.recent_waits()
    settings = await current(store)
    fleet = fleet_view(overview, waits=waits,
                       recommended=str(settings[RECOMMENDED_AGENT_VERSION]))
    page, next_cursor, matched = agents_page(
        fleet["agents"], state=state, group=query.get("group") or None,
        tag=query.get("tag") or None, name=query.get("name") or None,
        after=query.get("cursor", ""), limit=limit)
    return JSON({"version": __version__, **settings, **fleet, "agents": page,
                 "paused_tags": await store.paused_tags(),
                 "next_cursor": next_cursor,
                 "totals": {**totals(fleet["agents"]), "matched": matched}})


async def get_worker(request: Request) -> JSON:
    """One agent or worker: its record as in the list, its token, the jobs it runs now and
    the last 50 it ended, and its state history (its group's pauses included)."""
    await authenticator(request).superadmin(request)
    name: str = request.path_params["name"]
    store: Store = request.app.state.store
    found = await agent_detail(store, name, request.app.state.config.stale_after_s)
    if found is None:
        raise NotFound(f"no agent or worker named {name[:200]!r}")
    return JSON(found)


def _until(for_s: float | None) -> datetime | None:
    return None if for_s is None else datetime.now(UTC) + timedelta(seconds=for_s)


def _name(request: Request, key: str) -> str:
    value: str = request.path_params[key]
    if not NAMES[key].match(value):
        kind = "an agent" if key == "name" else "a group"
        raise InvalidInput(f"{value!r} is not {kind} name")
    return value


async def _steer(request: Request) -> tuple[Store, str]:
    await authenticator(request).superadmin(request)
    return request.app.state.store, "superadmin"


async def _steered(request: Request, name: str, state: str) -> JSON:
    """The answer to a steering request, once the change it committed holds in this process
    (other replicas hear of it by NOTIFY)."""
    controls: FleetControls = request.app.state.controls
    await controls.reloaded()
    return JSON({"name": name, "state": state})


async def pause_agent(request: Request) -> JSON:
    """It keeps its running jobs and claims nothing new until resumed (or `for_s` passes)."""
    store, by = await _steer(request)
    name = _name(request, "name")
    body = await read_body(request, PauseIn)
    if not await store.pause_agent(name, body.for_s, body.note, by):
        raise NotFound(f"no agent named {name!r}")
    log.info("fleet.paused", extra={"agent": name, "note": body.note, "for_s": body.for_s,
                                    "by": by})
    await store.record_worker_event(name, "paused", body.note, by, _until(body.for_s))
    return await _steered(request, name, "paused")


async def resume_agent(request: Request) -> JSON:
    store, by = await _steer(request)
    name = _name(request, "name")
    if not await store.resume_agent(name):
        raise NotFound(f"no agent named {name!r}")
    log.info("fleet.resumed", extra={"agent": name, "by": by})
    await store.record_worker_event(name, "resumed", None, by)
    return await _steered(request, name, "resumed")


async def drain_agent(request: Request) -> JSON:
    """It claims nothing more, finishes its jobs (up to its drain timeout), says goodbye and
    exits 0, so a service manager may start it again."""
    store, by = await _steer(request)
    name = _name(request, "name")
    body = await read_body(request, DrainIn)
    if not await store.drain_agent(name, body.note):
        raise NotFound(f"no agent named {name!r} that has not stopped")
    log.info("fleet.drain_requested", extra={"agent": name, "note": body.note, "by": by})
    await store.record_worker_event(name, "drain_requested", body.note, by)
    return await _steered(request, name, "draining")


async def pause_group(request: Request) -> JSON:
    """Every agent of the group, now and any that connect while it lasts."""
    store, by = await _steer(request)
    group = _name(request, "group")
    body = await read_body(request, PauseIn)
    await store.pause_group(group, body.for_s, body.note, by)
    log.info("fleet.paused", extra={"group": group, "note": body.note, "for_s": body.for_s,
                                    "by": by})
    await store.record_group_event(group, "paused", body.note, by, _until(body.for_s))
    return await _steered(request, group, "paused")


async def resume_group(request: Request) -> JSON:
    store, by = await _steer(request)
    group = _name(request, "group")
    if not await store.resume_group(group):
        raise NotFound(f"group {group!r} is not paused")
    log.info("fleet.resumed", extra={"group": group, "by": by})
    await store.record_group_event(group, "resumed", None, by)
    return await _steered(request, group, "resumed")


def _tag(request: Request) -> str:
    try:
        return validate_tag(request.path_params["tag"])
    except TagError as exc:
        raise InvalidInput(str(exc), code="invalid_tag") from None


async def pause_tag(request: Request) -> JSON:
    """No agent or worker claims jobs of the tag until it is resumed (or `for_s` passes):
    they stay queued, saying so; running ones go on."""
    store, by = await _steer(request)
    tag = _tag(request)
    body = await read_body(request, PauseIn)
    await store.pause_tag(tag, body.for_s, body.note, by)
    log.info("fleet.paused", extra={"tag": tag, "note": body.note, "for_s": body.for_s,
                                    "by": by})
    return await _steered(request, tag, "paused")


async def resume_tag(request: Request) -> JSON:
    store, by = await _steer(request)
    tag = _tag(request)
    if not await store.resume_tag(tag):
        raise NotFound(f"tag {tag!r} is not paused")
    log.info("fleet.resumed", extra={"tag": tag, "by": by})
    return await _steered(request, tag, "resumed")


routes = [
    Route("/api/agent_tokens", mint_agent_token, methods=["POST"]),
    Route("/api/agent_tokens", list_agent_tokens, methods=["GET"]),
    Route("/api/agent_tokens/{jti}", revoke_agent_token, methods=["DELETE"]),
    Route("/api/workers", list_workers, methods=["GET"]),
    Route("/api/workers/{name}", get_worker, methods=["GET"]),
    Route("/api/workers/{name}/pause", pause_agent, methods=["POST"]),
    Route("/api/workers/{name}/resume", resume_agent, methods=["POST"]),
    Route("/api/workers/{name}/drain", drain_agent, methods=["POST"]),
    Route("/api/pools/{group}/pause", pause_group, methods=["POST"]),
    Route("/api/pools/{group}/resume", resume_group, methods=["POST"]),
    Route("/api/tags/{tag}/pause", pause_tag, methods=["POST"]),
    Route("/api/tags/{tag}/resume", resume_tag, methods=["POST"]),
]
