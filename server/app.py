"""The Starlette application, assembled declaratively from its parts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from tagrun.server import metrics, openapi, ui
from tagrun.server.agent_tokens import AgentTokens
from tagrun.server.backpressure import Backpressure
from tagrun.server.config import ServerConfig
from tagrun.server.dispatcher import Dispatcher
from tagrun.server.errors import TagrunError, TooManyRequests
from tagrun.server.fleet_controls import FleetControls
from tagrun.server.heartbeats import Heartbeats
from tagrun.server.http import JSON
from tagrun.server.listener import Listener
from tagrun.server.routes import (
    admin,
    agents,
    autoscale,
    fleet,
    health,
    jobs,
    schedules,
    scripts,
    secrets,
    settings,
)
from tagrun.server.routing import IndexedRouter
from tagrun.server.services.secrets import SecretBox
from tagrun.server.store import DATABASE_UNAVAILABLE, Store

log = logging.getLogger("tagrun.http")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_input"}


def _error(status: int, code: str, message: str) -> JSON:
    return JSON({"error": {"code": code, "message": message}}, status_code=status)


async def tagrun_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TagrunError)
    response = _error(exc.status, exc.code, exc.message)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    response = _error(exc.status_code, code, message)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # Allow: every method of the path, not just its first route's
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    allowed: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and \
                route.matches(request.scope)[0] is Match.PARTIAL:
            allowed |= route.methods
    return sorted(allowed)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("http.database_unavailable", extra={"path": request.url.path,
                                                    "error": str(exc)})
    response = _error(503, "unavailable", "the database is unavailable; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("http.internal_error", exc_info=exc, extra={"path": request.url.path})
    return _error(500, "internal", "internal error; see the server log")


@dataclass(frozen=True)
class Parts:
    """What the routes use, built and started by the runtime."""

    config: ServerConfig
    store: Store
    listener: Listener
    agent_tokens: AgentTokens
    dispatcher: Dispatcher
    heartbeats: Heartbeats
    controls: FleetControls
    secrets: SecretBox


# Every route served; those under /api/ are exactly the operations of openapi.OPERATIONS
# (tests/api/test_openapi.py checks both ways).
ROUTES = [*health.routes, *admin.routes, *fleet.routes, *settings.routes, *scripts.routes,
          *secrets.routes, *jobs.routes, *schedules.routes, *agents.routes, *metrics.routes,
          *autoscale.routes, *openapi.routes, *ui.routes]


def create_app(parts: Parts) -> Starlette:
    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(metrics.HttpMetrics), Middleware(ui.SecurityHeaders)],
        exception_handlers={
            TagrunError: tagrun_error,
            HTTPException: http_error,
            **{cls: database_unavailable for cls in DATABASE_UNAVAILABLE},
            Exception: internal_error,
        },
    )
    # The same routes, asked only where their path pattern fits (routing.py); set before the
    # first request, when Starlette builds its middleware stack around `app.router`.
    app.router = IndexedRouter(ROUTES)
    for name in Parts.__dataclass_fields__:
        setattr(app.state, name, getattr(parts, name))
    # Bearer tokens as before; the web UI's session cookie too (see ui/auth.py).
    app.state.auth = ui.SessionAuthenticator(parts.store)
    app.state.backpressure = Backpressure(parts.store, parts.config.max_queued)
    return app
