"""What the web UI reads beyond the API's statements: sessions, and workspace-scoped queues."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

from tagrun.server.store._base import StoreBase
from tagrun.server.store.agents import RunningCount

# The token a session was made from, if it still works, and whether the session was ended.
SESSION_TOKEN = """
SELECT t.kind, t.workspace, t.hash,
       EXISTS (SELECT 1 FROM ui_sessions_ended e WHERE e.sid = $2) AS ended
FROM tokens t
WHERE t.id = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())"""
END_SESSION = """
WITH pruned AS (DELETE FROM ui_sessions_ended WHERE expires_at < now())
INSERT INTO ui_sessions_ended (sid, expires_at) VALUES ($1, $2) ON CONFLICT (sid) DO NOTHING"""
# Agents whose token was revoked or has expired: they stop at their next request.
# One workspace's share of the queue, for a workspace token's view of the Workers page.
WORKSPACE_RUNNING_BY_HOLDER_AND_TAG = """
SELECT r.worker, j.tag, count(*) AS n FROM running r JOIN jobs j ON j.id = r.job_id
WHERE j.workspace = $1 AND NOT r.broadcast GROUP BY r.worker, j.tag"""
WORKSPACE_QUEUED_BY_TAG = """
SELECT j.tag, count(*) AS n FROM queue q JOIN jobs j ON j.id = q.job_id
WHERE j.workspace = $1 GROUP BY j.tag"""


class WorkspaceQueue(msgspec.Struct, frozen=True):
    """One workspace's jobs running (by holder and tag) and queued (by tag)."""

    running: list[RunningCount]
    queued: dict[str, int]


@dataclass(frozen=True)
class SessionToken:
    kind: str
    workspace: str | None
    token_hash: bytes
    ended: bool


class UiQueries(StoreBase):
    async def session_token(self, token_id: int, sid: str) -> SessionToken | None:
        row = await self.fetchrow(SESSION_TOKEN, token_id, sid)
        if row is None:
            return None
        return SessionToken(row["kind"], row["workspace"], bytes(row["hash"]), row["ended"])

    async def end_session(self, sid: str, expires_at: datetime) -> None:
        await self.execute(END_SESSION, sid, expires_at)

    async def workspace_queue(self, workspace: str) -> WorkspaceQueue:
        """`running` and `queued` as in `workers_overview`, counting one workspace's jobs."""
        running = await self.fetch(WORKSPACE_RUNNING_BY_HOLDER_AND_TAG, workspace)
        queued = await self.fetch(WORKSPACE_QUEUED_BY_TAG, workspace)
        return WorkspaceQueue(running=[RunningCount.from_row(r) for r in running],
                              queued={r["tag"]: r["n"] for r in queued})
