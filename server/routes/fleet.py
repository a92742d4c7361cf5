"""Superadmin routes for the fleet: agent tokens, and who is connected (`/api/workers`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.agent_tokens import AgentTokens
from tagrun.server.auth import authenticator
from tagrun.server.errors import InvalidInput
from tagrun.server.http import JSON, read_body
from tagrun.server.routes import settings
from tagrun.server.store import Store
from tagrun.server.store._base import iso
from tagrun.shared.agent_wire import AgentTokenIn
from tagrun.shared.tags import TagError, validate_tag
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


def fleet_view(overview: dict[str, Any]) -> dict[str, Any]:
    workers = overview["workers"]
    running_by_holder: dict[str, int] = defaultdict(int)
    running_by_tag: dict[str, int] = defaultdict(int)
    for row in overview["running"]:
        running_by_holder[row["worker"]] += row["n"]
        running_by_tag[row["tag"]] += row["n"]
    queued: dict[str, int] = overview["queued"]
    agents = [{
        "name": w["name"], "kind": "agent" if w["kind"] == "agent" else "worker",
        "group": w["grp"], "tags": list(w["tags"]), "active_count": w["active_count"],
        "jobs_executed": w["jobs_executed"], "connected_at": iso(w["connected_at"]),
        "last_seen": iso(w["last_seen"]), "ip": w["ip"], "version": w["version"],
        "stale": w["stale"],
    } for w in workers]
    pools: dict[str, dict[str, Any]] = {}
    for a in agents:
        if a["kind"] != "agent":
            continue
        pool = pools.setdefault(a["group"], {"group": a["group"], "tags": set(),
                                             "live_agents": 0, "running_now": 0})
        pool["tags"].update(a["tags"])
        pool["live_agents"] += 0 if a["stale"] else 1
        pool["running_now"] += running_by_holder.get(a["name"], 0)
    for pool in pools.values():
        pool["pending_now"] = sum(queued.get(t, 0) for t in pool["tags"])
        pool["tags"] = sorted(pool["tags"])
    live_tags: dict[str, int] = defaultdict(int)
    for a in agents:
        if not a["stale"]:
            for tag in a["tags"]:
                live_tags[tag] += 1
    tags = [{"tag": t, "queued": queued.get(t, 0), "running": running_by_tag.get(t, 0),
             "live_workers": live_tags.get(t, 0)}
            for t in sorted(set(queued) | set(running_by_tag))]
    return {"agents": agents, "pools": sorted(pools.values(), key=lambda p: p["group"]),
            "tags": tags}


async def list_workers(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    store: Store = request.app.state.store
    overview = await store.workers_overview(request.app.state.config.stale_after_s)
    return JSON({"version": __version__, **await settings.current(store),
                 **fleet_view(overview)})


routes = [
    Route("/api/agent_tokens", mint_agent_token, methods=["POST"]),
    Route("/api/agent_tokens", list_agent_tokens, methods=["GET"]),
    Route("/api/agent_tokens/{jti}", revoke_agent_token, methods=["DELETE"]),
    Route("/api/workers", list_workers, methods=["GET"]),
]
