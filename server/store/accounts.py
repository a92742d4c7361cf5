"""Workspaces and opaque tokens (superadmin, workspace, autoscale), stored as SHA-256
hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from tagrun.server.errors import Conflict, NotFound
from tagrun.server.store._base import StoreBase, iso

INSERT_WORKSPACE = "INSERT INTO workspaces (id) VALUES ($1) RETURNING id, created_at"
LIST_WORKSPACES = "SELECT id, created_at FROM workspaces ORDER BY id"
WORKSPACE_EXISTS = "SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)"
FIND_TOKEN = """
SELECT id, kind, workspace FROM tokens
WHERE hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"""
SUPERADMIN_HASH = "SELECT hash FROM tokens WHERE kind = 'superadmin'"
UPSERT_SUPERADMIN = """
INSERT INTO tokens (kind, label, hash) VALUES ('superadmin', 'superadmin', $1)
ON CONFLICT (kind) WHERE kind = 'superadmin' DO UPDATE SET hash = EXCLUDED.hash
"""
INSERT_SUPERADMIN_IF_NONE = """
INSERT INTO tokens (kind, label, hash) VALUES ('superadmin', 'superadmin', $1)
ON CONFLICT (kind) WHERE kind = 'superadmin' DO NOTHING RETURNING id"""
INSERT_WORKSPACE_TOKEN = """
INSERT INTO tokens (kind, workspace, label, hash, expires_at)
VALUES ('workspace', $1, $2, $3, now() + make_interval(secs => $4::double precision))
RETURNING id, kind, workspace, label, created_at, expires_at"""
# An autoscale token belongs to no workspace: it reads GET /api/autoscale, nothing else.
INSERT_AUTOSCALE_TOKEN = """
INSERT INTO tokens (kind, label, hash, expires_at)
VALUES ('autoscale', $1, $2, now() + make_interval(secs => $3::double precision))
RETURNING id, kind, workspace, label, created_at, expires_at"""
LIST_WORKSPACE_TOKENS = """
SELECT id, kind, workspace, label, created_at, expires_at, revoked_at FROM tokens
WHERE kind = $2 AND ($1::text IS NULL OR workspace = $1) ORDER BY id"""
REVOKE_TOKEN = """
UPDATE tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 AND kind IN ('workspace', 'autoscale') RETURNING id"""

TOKEN_PREFIX = "tr_"


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    kind: str  # "superadmin" | "workspace" | "autoscale"
    workspace: str | None
    token_id: int


def _token_view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "workspace": row["workspace"],
        "label": row["label"],
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
        "revoked": row.get("revoked_at") is not None,
    }


class Accounts(StoreBase):
    async def create_workspace(self, workspace: str) -> dict[str, Any]:
        row = await self.fetchrow(INSERT_WORKSPACE, workspace)
        assert row is not None
        return {"id": row["id"], "created_at": iso(row["created_at"])}

    async def list_workspaces(self) -> list[dict[str, Any]]:
        rows = await self.fetch(LIST_WORKSPACES)
        return [{"id": r["id"], "created_at": iso(r["created_at"])} for r in rows]

    async def workspace_exists(self, workspace: str) -> bool:
        return bool(await self.fetchval(WORKSPACE_EXISTS, workspace))

    async def find_principal(self, token: str) -> Principal | None:
        row = await self.fetchrow(FIND_TOKEN, hash_token(token))
        if row is None:
            return None
        return Principal(kind=row["kind"], workspace=row["workspace"], token_id=row["id"])

    async def set_superadmin_token(self, token: str) -> None:
        try:
            await self.execute(UPSERT_SUPERADMIN, hash_token(token))
        except Conflict:
            # Two replicas starting at once on a new database inserted the same token: the
            # other's row stands on the hash's unique index, which ON CONFLICT (kind) does
            # not arbitrate. It is committed now, so the upsert finds it and updates it.
            await self.execute(UPSERT_SUPERADMIN, hash_token(token))

    async def create_superadmin_token_if_none(self) -> str | None:
        """A new superadmin token when none exists yet (first start), else None."""
        token = new_token()
        created = await self.fetchval(INSERT_SUPERADMIN_IF_NONE, hash_token(token))
        return token if created is not None else None

    async def create_workspace_token(
        self, workspace: str, label: str, expires_in_s: int | None
    ) -> dict[str, Any]:
        token = new_token()
        row = await self.fetchrow(
            INSERT_WORKSPACE_TOKEN, workspace, label, hash_token(token), expires_in_s
        )
        assert row is not None
        return {**_token_view(row), "token": token}

    async def create_autoscale_token(self, label: str, expires_in_s: int | None
                                     ) -> dict[str, Any]:
        token = new_token()
        row = await self.fetchrow(INSERT_AUTOSCALE_TOKEN, label, hash_token(token), expires_in_s)
        assert row is not None
        return {**_token_view(row), "token": token}

    async def list_workspace_tokens(self, workspace: str | None, kind: str = "workspace"
                                    ) -> list[dict[str, Any]]:
        """Tokens of `kind` ("workspace" or "autoscale"), of `workspace` if one is given."""
        rows = await self.fetch(LIST_WORKSPACE_TOKENS, workspace, kind)
        return [_token_view(r) for r in rows]

    async def revoke_token(self, token_id: int) -> None:
        if await self.fetchval(REVOKE_TOKEN, token_id) is None:
            raise NotFound(f"no workspace or autoscale token with id {token_id}")
