"""Who is calling: bearer tokens resolved to a principal, and the checks routes make."""

from __future__ import annotations

import re
import time

from starlette.requests import Request

from tagrun.server.errors import Forbidden, NotFound, Unauthorized
from tagrun.server.store import Principal, Store

WORKSPACE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_CACHE_TTL_S = 2.0  # a revoked token stops working within this on every replica


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._workspaces: set[str] = set()  # workspaces are never deleted: cache hits forever

    async def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'")
        token = token.strip()
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is None or cached[0] < now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = (now + _CACHE_TTL_S, await self.store.find_principal(token))
            self._cache[token] = cached
        if cached[1] is None:
            raise Unauthorized("token not recognised, expired or revoked")
        return cached[1]

    def forget(self, token_id: int) -> None:
        """Drop a revoked token from this process's cache at once."""
        for token, (_, principal) in list(self._cache.items()):
            if principal is not None and principal.token_id == token_id:
                del self._cache[token]

    async def superadmin(self, request: Request) -> Principal:
        principal = await self.principal(request)
        if principal.kind != "superadmin":
            raise Forbidden("only the superadmin token may do this")
        return principal

    async def autoscaler(self, request: Request) -> Principal:
        """The superadmin, or an autoscale token: what may read GET /api/autoscale."""
        principal = await self.principal(request)
        if principal.kind not in ("superadmin", "autoscale"):
            raise Forbidden("only an autoscale token or the superadmin token may read this")
        return principal

    async def workspace(self, request: Request) -> str:
        """The `{ws}` of the path, once the caller may act in it and it exists."""
        workspace: str = request.path_params["ws"]
        principal = await self.principal(request)
        if principal.kind != "superadmin" and principal.workspace != workspace:
            raise Forbidden(f"this token does not belong to workspace {workspace!r}")
        if workspace not in self._workspaces:
            if not WORKSPACE_ID.fullmatch(workspace) or not await self.store.workspace_exists(
                workspace
            ):
                raise NotFound(f"no workspace {workspace!r}", code="workspace_not_found")
            self._workspaces.add(workspace)
        return workspace


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth
