"""User routes for secrets: set, list (never a value), delete; and the key rotation."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.auth import authenticator
from tagrun.server.errors import NotFound
from tagrun.server.http import JSON, read_body
from tagrun.server.services.secrets import (
    ScopeIn,
    SecretBox,
    SecretIn,
    author,
    check_name,
    info_view,
)


def _box(request: Request) -> SecretBox:
    box: SecretBox = request.app.state.secrets
    return box


async def _who(request: Request) -> tuple[str, str]:
    auth = authenticator(request)
    workspace = await auth.workspace(request)
    principal = await auth.principal(request)
    return workspace, author(principal.kind, principal.token_id)


async def put_secret(request: Request) -> JSON:
    workspace, by = await _who(request)
    name = check_name(request.path_params["name"])
    body = await read_body(request, SecretIn)
    info, created = await _box(request).put(workspace, name, body, by)
    return JSON(info_view(info), status_code=201 if created else 200)


async def list_secrets(request: Request) -> JSON:
    workspace, _ = await _who(request)
    infos = await _box(request).store.list_secrets(workspace)
    return JSON({"secrets": [info_view(i) for i in infos]})


async def scope_secret(request: Request) -> JSON:
    workspace, by = await _who(request)
    body = await read_body(request, ScopeIn)
    return JSON(info_view(await _box(request).scope(workspace, request.path_params["name"],
                                                    body, by)))


async def delete_secret(request: Request) -> JSON:
    workspace, by = await _who(request)
    name = request.path_params["name"]
    if not await _box(request).delete(workspace, name, by):
        raise NotFound(f"no secret {name} in workspace {workspace!r}", code="secret_not_found")
    return JSON({"name": name, "deleted": True})


async def rotate_key(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    return JSON(await _box(request).rotate())


routes = [
    Route("/api/w/{ws}/secrets", list_secrets, methods=["GET"]),
    Route("/api/w/{ws}/secrets/{name}", put_secret, methods=["PUT"]),
    Route("/api/w/{ws}/secrets/{name}", scope_secret, methods=["PATCH"]),
    Route("/api/w/{ws}/secrets/{name}", delete_secret, methods=["DELETE"]),
    Route("/api/secrets/rotate-key", rotate_key, methods=["POST"]),
]
