"""The server's route lookup (server/routing.py) picks the route Starlette's own would, for
every route the server serves and for requests that match none (404, 405, redirect)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route, Router

from tagrun.server.app import ROUTES
from tagrun.server.routing import IndexedRouter

VALUES = {"ws": "default", "id": "42", "jti": "abc", "name": "n-1", "group": "g",
          "tag": "linux", "path": "f/deploy/run"}


def stand_ins(routes: list[BaseRoute]) -> list[BaseRoute]:
    """The server's routes with endpoints that answer which route took the request."""
    out: list[BaseRoute] = []
    for index, route in enumerate(routes):
        def endpoint(request: Request, index: int = index) -> PlainTextResponse:
            return PlainTextResponse(f"route {index} {sorted(request.path_params.items())}")
        if isinstance(route, Route):
            methods = sorted(route.methods or []) or None
            out.append(Route(route.path, endpoint, methods=methods))
        else:
            assert isinstance(route, Mount)
            out.append(Mount(route.path, app=Router([Route("/{rest:path}", endpoint)])))
    return out


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: VALUES.get(m.group(1), "x"), template)


def requests() -> list[tuple[str, str]]:
    paths: set[str] = {"/", "/nowhere", "/api", "/api/", "/api/w/default", "/api/w/default/",
                       "/api/agent_workers", "/api/agent_workers/claim/", "/static",
                       "/static/app.js", "/api/w/default/jobs/", "/api/w/default/jobs/42/",
                       "/api/w/default/jobs/notanumber/cancel", "/workersx", "/api/healthz"}
    for route in ROUTES:
        path = concrete(getattr(route, "path", "/"))
        paths |= {path, path + "/", path + "/more", path.rstrip("/") or "/"}
    return [(method, path) for path in sorted(paths)
            for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")]


async def answer(app: Any, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"host", b"testserver")],
             "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]
               if k in (b"allow", b"location")}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


def test_each_request_reaches_the_route_starlette_would_pick() -> None:
    routes = stand_ins(ROUTES)
    starlette_router, indexed = Router(routes=routes), IndexedRouter(routes)

    async def differences() -> list[tuple[str, str, Any, Any]]:
        out = []
        for method, path in requests():
            expected = await answer(starlette_router, method, path)
            got = await answer(indexed, method, path)
            if got != expected:
                out.append((method, path, expected, got))
        return out
    assert asyncio.run(differences()) == []


def test_the_hot_routes_are_tried_alone() -> None:
    """A claim and a submit ask only the routes of their path, not the 28 to 41 before."""
    router = IndexedRouter(stand_ins(ROUTES))
    for path, templates in [("/api/agent_workers/claim", ["/api/agent_workers/claim"]),
                            ("/api/w/default/jobs", ["/api/w/{ws}/jobs"] * 2),
                            ("/api/w/default/jobs/7", ["/api/w/{ws}/jobs/{id}"])]:
        tried = router._candidates(path)  # noqa: SLF001
        assert [getattr(r, "path", None) for r in tried] == templates
