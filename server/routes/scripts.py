"""User routes for scripts: deploy a version, list, read the latest."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.auth import authenticator
from tagrun.server.errors import InvalidInput
from tagrun.server.http import JSON, query_int, read_body
from tagrun.server.models import ScriptIn
from tagrun.server.services.jobs import ScriptCache, checked_lease_s
from tagrun.server.store import Store
from tagrun.server.tags import TagError, check_template
from tagrun.shared.executors import LANGUAGES


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def deploy_script(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    body = await read_body(request, ScriptIn)
    if body.language not in LANGUAGES:
        raise InvalidInput(
            f"unknown language {body.language!r}; one of {', '.join(LANGUAGES)}",
            code="unknown_language",
        )
    if body.tag is not None:
        try:
            check_template(body.tag)
        except TagError as exc:
            raise InvalidInput(str(exc), code="invalid_tag") from None
    if body.secrets:
        await ScriptCache(_store(request), workspace).check_secrets(body.secrets, None)
    script = await _store(request).deploy_script(
        workspace, path=body.path, language=body.language, content=body.content, tag=body.tag,
        timeout_s=body.timeout_s, max_attempts=body.max_attempts,
        concurrency_limit=body.concurrency_limit,
        lease_s=checked_lease_s(body.lease_s, request.app.state.config.lease_bounds),
        secrets=body.secrets, version=body.version,
        signature=body.signature.stored("deploy") if body.signature else None,
    )
    return JSON(script, status_code=201)


async def list_scripts(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    after = request.query_params.get("cursor", "")
    scripts = await _store(request).list_scripts(workspace, after, limit)
    next_cursor = scripts[-1]["path"] if len(scripts) == limit else None
    return JSON({"scripts": scripts, "next_cursor": next_cursor})


async def get_script(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    return JSON(await _store(request).latest_script(workspace, request.path_params["path"]))


routes = [
    Route("/api/w/{ws}/scripts", deploy_script, methods=["POST"]),
    Route("/api/w/{ws}/scripts", list_scripts, methods=["GET"]),
    Route("/api/w/{ws}/scripts/{path:path}", get_script, methods=["GET"]),
]
