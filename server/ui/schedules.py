"""The Schedules and Secrets pages. Their rows come from `GET /api/w/{ws}/schedules` and
`GET /api/w/{ws}/secrets`, read by the page's script with the session; enabling a schedule is
`PATCH …/schedules/{name}`, setting and deleting a secret `PUT` and `DELETE …/secrets/{name}`.
No page ever holds a secret's value: the API never returns one."""

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


@ui_page
async def secrets_page(request: Request, session: Session) -> Response:
    workspace = await authenticator(request).workspace(request)
    return await page(request, session, "secrets.html",
                      {"nav": "secrets", "workspace": workspace})


routes = [Route("/w/{ws}/schedules", schedules_page, methods=["GET"]),
          Route("/w/{ws}/secrets", secrets_page, methods=["GET"])]
