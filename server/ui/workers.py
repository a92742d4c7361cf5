"""The Workers page: caps, agents and workers, pools by group, tags, and agent tokens.

It reads what `GET /api/workers` reads. A workspace token sees the fleet but counts only
its own workspace's jobs, and neither agent tokens nor the controls that change settings.
"""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tagrun.server.errors import InvalidInput
from tagrun.server.http import query_int
from tagrun.server.services import settings
from tagrun.server.services.fleet import STATES, agents_page, fleet_view, is_live
from tagrun.server.store import Store
from tagrun.server.ui.render import page
from tagrun.server.ui.session import Session
from tagrun.server.ui.views import ui_page, with_query

AGENTS_PER_PAGE = 100
TOKENS_PER_PAGE = 50
MAX_TAGS_SHOWN = 500
EXPIRY_CHOICES = [("1 day", 86400), ("7 days", 7 * 86400), ("30 days", 30 * 86400),
                  ("90 days", 90 * 86400), ("1 year", 365 * 86400)]


def paged(request: Request, rows: list[Any], name: str, per_page: int) -> dict[str, Any]:
    pages = max(1, -(-len(rows) // per_page))
    number = query_int(request, name, 1, minimum=1, maximum=1_000_000)
    number = min(number, pages)
    start = (number - 1) * per_page
    return {
        "rows": rows[start:start + per_page], "number": number, "pages": pages,
        "total": len(rows), "first": start + 1,
        "prev": with_query(request, **{name: number - 1}) if number > 1 else None,
        "next": with_query(request, **{name: number + 1}) if number < pages else None,
    }


def _summary(fleet: dict[str, Any]) -> dict[str, int]:
    agents = fleet["agents"]
    return {
        "live": sum(1 for a in agents if is_live(a)),
        "stale": sum(1 for a in agents if a["state"] == "stale"),
        "stopped": sum(1 for a in agents if a["state"] == "stopped"),
        "paused": sum(1 for a in agents if a["state"] in ("paused", "draining")),
        "queued": sum(t["queued"] for t in fleet["tags"]),
        "running": sum(t["running"] for t in fleet["tags"]),
        "unserved": sum(1 for t in fleet["tags"] if t["queued"] and not t["live_workers"]),
    }


async def _fleet(store: Store, session: Session, stale_after_s: float) -> dict[str, Any]:
    overview = await store.workers_overview(stale_after_s)
    waits = await store.recent_waits()
    if session.principal.kind != "superadmin":
        queue = await store.workspace_queue(session.principal.workspace or "")
        overview = replace(overview, running=queue.running, queued=queue.queued)
    fleet = fleet_view(overview, waits=waits, recommended=str(
        (await settings.current(store))[settings.RECOMMENDED_AGENT_VERSION]))
    tokens = {w.name: w.token_problem for w in overview.workers}
    for agent in fleet["agents"]:
        agent["token"] = tokens.get(agent["name"])  # "revoked" or "expired"
    # Tags nobody serves first: that is what an operator must act on.
    fleet["tags"].sort(key=lambda t: (not (t["queued"] and not t["live_workers"]), t["tag"]))
    return fleet


def _filters(request: Request) -> dict[str, str | None]:
    """The list's filters, as GET /api/workers names them; empty ones are None."""
    found = {key: request.query_params.get(key, "").strip()[:200] or None
             for key in ("name", "state", "group", "tag")}
    if found["state"] is not None and found["state"] not in STATES:
        raise InvalidInput(f"state {found['state']!r} is not one of {', '.join(STATES)}")
    return found


def _choices(agents: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What the group and tag filters offer: those of the agents there are."""
    return {"groups": sorted({a["group"] for a in agents if a["group"]}),
            "tags": sorted({t for a in agents for t in a["tags"]})[:MAX_TAGS_SHOWN]}


@ui_page
async def workers_page(request: Request, session: Session) -> Response:
    store: Store = request.app.state.store
    superadmin = session.principal.kind == "superadmin"
    fleet = await _fleet(store, session, request.app.state.config.stale_after_s)
    tokens = await store.list_agent_tokens(False) if superadmin else []
    filters = _filters(request)
    shown, _, _ = agents_page(fleet["agents"], name=filters["name"], state=filters["state"],
                              group=filters["group"], tag=filters["tag"],
                              limit=max(1, len(fleet["agents"])))
    return await page(request, session, "workers.html", {
        "nav": "workers",
        "caps": await settings.current(store),
        "cap_help": {key: settings.SETTINGS[key].help for key in settings.CAPS},
        "summary": _summary(fleet),
        "agents": paged(request, shown, "agents_page", AGENTS_PER_PAGE),
        "agents_all": len(fleet["agents"]), "filters": filters, "states": STATES,
        "choices": _choices(fleet["agents"]),
        "pools": fleet["pools"],
        "paused_groups": {a["group"] for a in fleet["agents"] if a["paused_as"] == "group"},
        "tags": fleet["tags"][:MAX_TAGS_SHOWN],
        "paused_tags": {p["tag"]: p for p in await store.paused_tags()},
        "tags_total": len(fleet["tags"]),
        "tokens": paged(request, tokens, "tokens_page", TOKENS_PER_PAGE),
        "expiry_choices": EXPIRY_CHOICES,
        "base_url": str(request.base_url).rstrip("/"),
    })


routes = [Route("/workers", workers_page, methods=["GET"])]
