"""Secrets: sealed values (server/vault.py seals and opens them) and their scope. No statement
here returns a value in clear, and only the claim path reads `sealed`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tagrun.server.store._base import StoreBase

PUT_SECRET = """
INSERT INTO secrets AS s (workspace, name, sealed, key_id, allowed_tags, created_by, updated_by)
VALUES ($1, $2, $3, $4, $5, $6, $6)
ON CONFLICT (workspace, name) DO UPDATE
    SET sealed = EXCLUDED.sealed, key_id = EXCLUDED.key_id,
        allowed_tags = EXCLUDED.allowed_tags, updated_at = now(), updated_by = EXCLUDED.updated_by
RETURNING name, allowed_tags, created_at, created_by, updated_at, updated_by,
          (xmax = 0) AS created"""
LIST_SECRETS = """
SELECT name, allowed_tags, created_at, created_by, updated_at, updated_by
FROM secrets WHERE workspace = $1 ORDER BY name"""
SCOPE_SECRET = """
UPDATE secrets SET allowed_tags = $3, updated_at = now(), updated_by = $4
WHERE workspace = $1 AND name = $2
RETURNING name, allowed_tags, created_at, created_by, updated_at, updated_by"""
DELETE_SECRET = "DELETE FROM secrets WHERE workspace = $1 AND name = $2 RETURNING name"
SECRET_SCOPES = """
SELECT name, allowed_tags FROM secrets WHERE workspace = $1 AND name = ANY($2::text[])"""
SEALED_SECRETS = """
SELECT workspace, name, sealed, key_id FROM secrets
WHERE (workspace, name) IN (SELECT * FROM unnest($1::text[], $2::text[]))"""
ANY_SECRETS = "SELECT EXISTS (SELECT 1 FROM secrets)"
JOB_SECRETS = "SELECT workspace, secrets FROM jobs WHERE id = $1"
KEY_IDS = "SELECT key_id, count(*) AS n, min(workspace || '/' || name) AS example " \
          "FROM secrets GROUP BY key_id"
ALL_SEALED = "SELECT workspace, name, sealed, key_id FROM secrets ORDER BY workspace, name"
RESEAL = """
UPDATE secrets SET sealed = $4, key_id = $5
WHERE workspace = $1 AND name = $2 AND key_id = $3"""


@dataclass(frozen=True)
class SecretInfo:
    """A secret as listed: never its value."""

    name: str
    allowed_tags: list[str] | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class Sealed:
    workspace: str
    name: str
    sealed: bytes
    key_id: str


@dataclass(frozen=True)
class KeyUse:
    key_id: str
    secrets: int
    example: str  # one secret it encrypted: workspace/name


class Secrets(StoreBase):
    async def put_secret(self, workspace: str, name: str, sealed: bytes, key_id: str,
                         allowed_tags: Sequence[str] | None, by: str
                         ) -> tuple[SecretInfo, bool]:
        """Store (or replace) a secret; (its listing, whether it is new)."""
        row = await self.fetchrow(PUT_SECRET, workspace, name, sealed, key_id,
                                  list(allowed_tags) if allowed_tags is not None else None, by)
        assert row is not None
        created = bool(row["created"])
        return SecretInfo(*(row[k] for k in SecretInfo.__dataclass_fields__)), created

    async def scope_secret(self, workspace: str, name: str,
                           allowed_tags: Sequence[str] | None, by: str) -> SecretInfo | None:
        """Change which tags may use a secret, keeping its value; None: no such secret."""
        row = await self.fetchrow(SCOPE_SECRET, workspace, name,
                                  list(allowed_tags) if allowed_tags is not None else None, by)
        return None if row is None else SecretInfo(
            *(row[k] for k in SecretInfo.__dataclass_fields__))

    async def list_secrets(self, workspace: str) -> list[SecretInfo]:
        rows = await self.fetch(LIST_SECRETS, workspace)
        return [SecretInfo(*(r[k] for k in SecretInfo.__dataclass_fields__)) for r in rows]

    async def delete_secret(self, workspace: str, name: str) -> bool:
        return await self.fetchval(DELETE_SECRET, workspace, name) is not None

    async def secret_scopes(self, workspace: str, names: Sequence[str]
                            ) -> dict[str, list[str] | None]:
        """The `allowed_tags` of each of `names` that exists (None: any tag)."""
        rows = await self.fetch(SECRET_SCOPES, workspace, list(names))
        return {r["name"]: r["allowed_tags"] for r in rows}

    async def sealed_secrets(self, wanted: Sequence[tuple[str, str]]) -> list[Sealed]:
        """The sealed values of (workspace, name) pairs, for the claims that use them."""
        if not wanted:
            return []
        rows = await self.fetch(SEALED_SECRETS, [w for w, _ in wanted], [n for _, n in wanted])
        return [Sealed(r["workspace"], r["name"], bytes(r["sealed"]), r["key_id"])
                for r in rows]

    async def any_secrets(self) -> bool:
        return bool(await self.fetchval(ANY_SECRETS))

    async def job_secret_names(self, job_id: int) -> tuple[str, list[str]] | None:
        """(workspace, secret names) of a job, None if it has no such job."""
        row = await self.fetchrow(JOB_SECRETS, job_id)
        return None if row is None else (row["workspace"], list(row["secrets"] or []))

    async def secret_key_uses(self) -> list[KeyUse]:
        return [KeyUse(r["key_id"], int(r["n"]), r["example"])
                for r in await self.fetch(KEY_IDS)]

    async def all_sealed(self) -> list[Sealed]:
        return [Sealed(r["workspace"], r["name"], bytes(r["sealed"]), r["key_id"])
                for r in await self.fetch(ALL_SEALED)]

    async def reseal(self, old: Sealed, sealed: bytes, key_id: str) -> bool:
        """Replace a secret's sealed value, unless it was set again meanwhile."""
        done = await self.execute(RESEAL, old.workspace, old.name, old.key_id, sealed, key_id)
        return done.endswith(" 1")
