"""Superadmin routes for the fleet: agent tokens, and who is connected (`/api/workers`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.agent_tokens import AgentTokens
from tagrun.server.auth import authenticator
from tagrun.server.errors import InvalidInput
from tagrun.server.http import JSON, query_int, read_body
from tagrun.server.services.fleet import STATES, agents_page, fleet_view, totals
from tagrun.server.services.settings import current
from tagrun.server.store import Store
from tagrun.server.tags import TagError, validate_tag
from tagrun.shared.agent_wire import AgentTokenIn
from tagrun.shared.version import __version__


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
    minted = await _tokens(request).mint(body.group, tags, body.expires_in_s, body.label)
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
    fleet = fleet_view(overview)
    page, next_cursor, matched = agents_page(
        fleet["agents"], state=state, group=query.get("group") or None,
        tag=query.get("tag") or None, name=query.get("name") or None,
        after=query.get("cursor", ""), limit=limit)
    return JSON({"version": __version__, **await current(store), **fleet, "agents": page,
                 "next_cursor": next_cursor,
                 "totals": {**totals(fleet["agents"]), "matched": matched}})


routes = [
    Route("/api/agent_tokens", mint_agent_token, methods=["POST"]),
    Route("/api/agent_tokens", list_agent_tokens, methods=["GET"]),
    Route("/api/agent_tokens/{jti}", revoke_agent_token, methods=["DELETE"]),
    Route("/api/workers", list_workers, methods=["GET"]),
]
