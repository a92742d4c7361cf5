"""The web UI, served by the server itself: Jinja2 pages, static files, small scripts.

Pages are rendered on the server from the store. Their scripts refresh parts of a page by
fetching it again, and change things through the JSON API, which accepts the UI's session
cookie (with a CSRF header for writes) in place of a bearer token: see `auth`.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from tagrun.server.ui import agent, jobs, schedules, signin, workers
from tagrun.server.ui.auth import SessionAuthenticator
from tagrun.server.ui.render import STATIC_DIR
from tagrun.server.ui.security import SecurityHeaders

routes: list[BaseRoute] = [
    *signin.routes, *workers.routes, *agent.routes, *jobs.routes, *schedules.routes,
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]

__all__ = ["SecurityHeaders", "SessionAuthenticator", "routes"]
