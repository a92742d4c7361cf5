"""The Schedules page. Its rows come from `GET /api/w/{ws}/schedules`, read by the page's
script with the session, and enabling or disabling one is `PATCH …/schedules/{name}`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tagrun.server.auth import authenticator
from tagrun.server.ui.render import page
from tagrun.server.ui.session import Session
from tagrun.server.ui.views import ui_page


@ui_page
async def schedules_page(request: Request, session: Session) -> Response:
    workspace = await authenticator(request).workspace(request)
    return await page(request, session, "schedules.html",
                      {"nav": "schedules", "workspace": workspace})


routes = [Route("/w/{ws}/schedules", schedules_page, methods=["GET"])]
