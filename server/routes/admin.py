"""Superadmin routes: workspaces, workspace tokens and autoscale tokens."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.auth import WORKSPACE_ID, authenticator
from tagrun.server.errors import Conflict, InvalidInput, NotFound
from tagrun.server.http import JSON, path_int, read_body
from tagrun.server.models import WorkspaceIn, WorkspaceTokenIn
from tagrun.server.store import Store

# The opaque tokens the superadmin mints here (its own is set at start, never listed).
TOKEN_KINDS = ("workspace", "autoscale")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def create_workspace(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    body = await read_body(request, WorkspaceIn)
    try:
        workspace = await _store(request).create_workspace(body.id)
    except Conflict:
        raise Conflict(f"workspace {body.id!r} already exists", code="workspace_exists") from None
    return JSON(workspace, status_code=201)


async def list_workspaces(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    return JSON({"workspaces": await _store(request).list_workspaces()})


async def create_token(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    body = await read_body(request, WorkspaceTokenIn)
    if body.kind == "autoscale":
        if body.workspace is not None:
            raise InvalidInput("an autoscale token belongs to no workspace: leave out workspace")
        token = await _store(request).create_autoscale_token(body.label, body.expires_in_s)
        return JSON(token, status_code=201)
    if body.workspace is None:
        raise InvalidInput("workspace is required: the workspace the token acts in")
    try:
        token = await _store(request).create_workspace_token(
            body.workspace, body.label, body.expires_in_s
        )
    except NotFound:
        raise NotFound(f"no workspace {body.workspace!r}", code="workspace_not_found") from None
    return JSON(token, status_code=201)


async def list_tokens(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    workspace = request.query_params.get("workspace") or None
    if workspace is not None and not WORKSPACE_ID.fullmatch(workspace):
        raise InvalidInput(f"workspace {workspace!r} is not a valid workspace id")
    kind = request.query_params.get("kind") or "workspace"
    if kind not in TOKEN_KINDS:
        raise InvalidInput(f"kind {kind!r} is not one of {', '.join(TOKEN_KINDS)}")
    return JSON({"tokens": await _store(request).list_workspace_tokens(workspace, kind)})


async def revoke_token(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    token_id = path_int(request, "id")
    await _store(request).revoke_token(token_id)
    authenticator(request).forget(token_id)
    return JSON({"id": token_id, "revoked": True})


routes = [
    Route("/api/workspaces", create_workspace, methods=["POST"]),
    Route("/api/workspaces", list_workspaces, methods=["GET"]),
    Route("/api/tokens", create_token, methods=["POST"]),
    Route("/api/tokens", list_tokens, methods=["GET"]),
    Route("/api/tokens/{id}", revoke_token, methods=["DELETE"]),
]
