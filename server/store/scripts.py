"""Scripts: code deployed at a path; redeploying makes a new version."""

from __future__ import annotations

from typing import Any

from tagrun.server.errors import Conflict, NotFound
from tagrun.server.store._base import StoreBase, iso

INSERT_SCRIPT = """
INSERT INTO scripts (workspace, path, version, language, content, tag, timeout_s,
                     max_attempts, concurrency_limit, lease_s, secrets, signature)
SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7, $8, $9, $10, $11
FROM scripts WHERE workspace = $1 AND path = $2
HAVING $12::int IS NULL OR coalesce(max(version), 0) + 1 = $12
RETURNING *"""
LATEST_VERSION = """
SELECT coalesce(max(version), 0) FROM scripts WHERE workspace = $1 AND path = $2"""
LATEST_SCRIPT = """
SELECT * FROM scripts WHERE workspace = $1 AND path = $2 ORDER BY version DESC LIMIT 1"""
SCRIPT_VERSION = "SELECT * FROM scripts WHERE workspace = $1 AND path = $2 AND version = $3"
LIST_SCRIPTS = """
SELECT DISTINCT ON (path) * FROM scripts WHERE workspace = $1 AND path > $2
ORDER BY path, version DESC LIMIT $3"""


def script_view(row: Any, *, with_content: bool = True) -> dict[str, Any]:
    view = {
        "path": row["path"],
        "version": row["version"],
        "language": row["language"],
        "tag": row["tag"],
        "timeout_s": row["timeout_s"],
        "max_attempts": row["max_attempts"],
        "concurrency_limit": row["concurrency_limit"],
        "lease_s": row["lease_s"],
        "secrets": row["secrets"] or [],
        "signature": row["signature"],
        "created_at": iso(row["created_at"]),
    }
    if with_content:
        view["content"] = row["content"]
    return view


class Scripts(StoreBase):
    async def deploy_script(self, workspace: str, **fields: Any) -> dict[str, Any]:
        """A new version of a script; with `version`, that version or Conflict (a signed
        deploy signs the version it makes)."""
        version = fields.get("version")
        for _ in range(5):  # two deploys of one path at once: the loser takes the next version
            try:
                row = await self.fetchrow(
                    INSERT_SCRIPT, workspace, fields["path"], fields["language"],
                    fields["content"], fields["tag"], fields["timeout_s"],
                    fields["max_attempts"], fields["concurrency_limit"],
                    fields.get("lease_s"), list(fields.get("secrets") or ()) or None,
                    fields.get("signature"), version,
                )
            except Conflict:
                if version is not None:
                    break
                continue
            if row is None:
                break
            return script_view(row)
        if version is not None:
            latest = await self.fetchval(LATEST_VERSION, workspace, fields["path"])
            raise Conflict(f"script {fields['path']!r} would not become version {version}: "
                           f"its latest version is {latest} (deploy again to sign the next "
                           "one)", code="version_taken")
        raise RuntimeError("could not allocate a script version")

    async def script_at(self, workspace: str, path: str, version: int) -> dict[str, Any]:
        row = await self.fetchrow(SCRIPT_VERSION, workspace, path, version)
        if row is None:
            raise NotFound(f"no version {version} of script {path!r} in workspace "
                           f"{workspace!r}", code="script_not_found")
        return script_view(row)

    async def latest_script(self, workspace: str, path: str) -> dict[str, Any]:
        row = await self.fetchrow(LATEST_SCRIPT, workspace, path)
        if row is None:
            raise NotFound(
                f"no script at {path!r} in workspace {workspace!r}", code="script_not_found"
            )
        return script_view(row)

    async def list_scripts(self, workspace: str, after: str, limit: int) -> list[dict[str, Any]]:
        rows = await self.fetch(LIST_SCRIPTS, workspace, after, limit)
        return [script_view(r, with_content=False) for r in rows]
