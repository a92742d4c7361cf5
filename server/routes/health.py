from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.http import JSON
from tagrun.shared.version import __version__


async def health(request: Request) -> JSON:
    return JSON({"status": "ok", "version": __version__})


routes = [Route("/api/health", health, methods=["GET"])]
