"""An agent's page (`/workers/{name}`): what it is, what it runs and ran, what happened to it,
and the buttons that pause, resume or drain it.

As on the Workers page, a workspace token sees the agent but neither its token nor the
buttons, and only its own workspace's jobs.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tagrun.server.errors import NotFound
from tagrun.server.services.agent_detail import agent_detail, busy_slots, platform
from tagrun.server.store import Store
from tagrun.server.ui.render import page
from tagrun.server.ui.session import Session
from tagrun.server.ui.views import ui_page


@ui_page
async def agent_page(request: Request, session: Session) -> Response:
    store: Store = request.app.state.store
    name: str = request.path_params["name"]
    superadmin = session.principal.kind == "superadmin"
    workspace = None if superadmin else (session.principal.workspace or "")
    agent = await agent_detail(store, name, request.app.state.config.stale_after_s,
                               workspace=workspace)
    if agent is None:
        raise NotFound(f"There is no agent or worker named {name[:200]!r}: it may have "
                       "been deleted after a week without contact.")
    if not superadmin:
        agent.update(jti=None, token_label=None)
    return await page(request, session, "agent.html", {
        "nav": "workers", "agent": agent, "slots": busy_slots(agent),
        "platform": platform(agent),
    })


routes = [Route("/workers/{name}", agent_page, methods=["GET"])]
