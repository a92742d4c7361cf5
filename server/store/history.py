"""One agent's story for its page: what happened to it (paused, resumed, drain requested,
quarantined, …), what it runs now and the jobs it ran last."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tagrun.server.store._base import StoreBase, iso

# The agent's own statement of LIST_WORKERS (store/agents.py), so that one record and the
# list can never disagree on a state.
from tagrun.server.store.agents import WorkerRecord, _list_workers

HISTORY_KEPT = 100  # rows per agent (and per group); older ones go as new ones come
RECENT_JOBS = 50
# A row, and the rows of its agent (or group) past the last HISTORY_KEPT, in one statement:
# the DELETE does not see the row being added, so it keeps HISTORY_KEPT - 1 older ones.
RECORD_EVENT = f"""
WITH added AS (
    INSERT INTO worker_events (scope, name, what, note, actor, until_at)
    VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
)
DELETE FROM worker_events WHERE scope = $1 AND name = $2 AND id <= (
    SELECT id FROM worker_events WHERE scope = $1 AND name = $2
    ORDER BY id DESC OFFSET {HISTORY_KEPT - 1} LIMIT 1)"""
# The agent's rows and its group's, newest first.
HISTORY = f"""
(SELECT * FROM worker_events WHERE scope = 'agent' AND name = $1
 ORDER BY id DESC LIMIT {HISTORY_KEPT})
UNION ALL
(SELECT * FROM worker_events WHERE scope = 'group' AND name = $2
 ORDER BY id DESC LIMIT {HISTORY_KEPT})
ORDER BY id DESC LIMIT {HISTORY_KEPT}"""
# Rows of agents whose record is gone (deleted once stale for days) and of groups no agent
# has any more and that are not paused, older than $1.
PRUNE_EVENTS = """
DELETE FROM worker_events e
WHERE e.created_at < $1
  AND CASE WHEN e.scope = 'agent'
           THEN NOT EXISTS (SELECT 1 FROM workers w WHERE w.name = e.name)
           ELSE NOT EXISTS (SELECT 1 FROM workers w WHERE w.grp = e.name)
                AND NOT EXISTS (SELECT 1 FROM paused_groups g WHERE g.grp = e.name) END"""
ONE_WORKER = _list_workers("WHERE w.name = $3")
WORKER_TOKEN_LABEL = """
SELECT t.label FROM workers w JOIN agent_tokens t ON t.jti = w.jti WHERE w.name = $1"""
# $2: one workspace's jobs only (NULL: every workspace's).
CURRENT_JOBS = """
SELECT j.id, j.workspace, j.script_path, j.tag, j.attempt, j.started_at
FROM running r JOIN jobs j ON j.id = r.job_id
WHERE r.worker = $1 AND ($2::text IS NULL OR j.workspace = $2)
ORDER BY r.job_id LIMIT 1000"""
# Through the ended set's index on (worker, finished_at) (migration 0029): a job counts for
# the holder of its last attempt, the one that ended it.
RECENT_JOBS_RUN = f"""
SELECT j.id, j.workspace, j.script_path, j.tag, j.status, j.attempt, j.started_at,
       j.finished_at, extract(epoch FROM j.finished_at - j.started_at)::float8 AS duration_s
FROM ended e JOIN jobs j ON j.id = e.job_id
WHERE e.worker = $1 AND e.finished_at IS NOT NULL AND ($2::text IS NULL OR e.workspace = $2)
ORDER BY e.finished_at DESC LIMIT {RECENT_JOBS}"""


def event_view(row: Any) -> dict[str, Any]:
    return {"what": row["what"], "note": row["note"], "by": row["actor"],
            "at": iso(row["created_at"]), "until": iso(row["until_at"]),
            "scope": row["scope"], "name": row["name"]}


def job_line(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "workspace": row["workspace"], "script": row["script_path"],
            "tag": row["tag"], "attempt": row["attempt"], "started_at": iso(row["started_at"])}


def outcome_line(row: Any) -> dict[str, Any]:
    duration = row["duration_s"]
    return {**job_line(row), "status": row["status"], "finished_at": iso(row["finished_at"]),
            "duration_s": None if duration is None else round(duration, 3)}


class History(StoreBase):
    async def record_worker_event(self, name: str, what: str, note: str | None,
                                  by: str | None, until: datetime | None = None) -> None:
        """Add to agent `name`'s history that `what` happened now: one word, as its page
        shows it (`paused`, `resumed`, `drain_requested`, `quarantined`, `released`,
        `version_refused`); `note`: why, in the operator's or the rule's words; `by`: who
        ("superadmin", or the rule that did it); `until`: when it ends by itself, if it does.
        Call it once the change is made; the agent keeps its last 100 rows."""
        await self.execute(RECORD_EVENT, "agent", name, what, note, by, until)

    async def record_group_event(self, group: str, what: str, note: str | None,
                                 by: str | None, until: datetime | None = None) -> None:
        """The same for a group (a pause or resume of the pool): every agent of the group
        shows it in its history."""
        await self.execute(RECORD_EVENT, "group", group, what, note, by, until)

    async def worker_history(self, name: str, group: str) -> list[dict[str, Any]]:
        """Agent `name`'s rows and those of its group `group`, newest first."""
        return [event_view(r) for r in await self.fetch(HISTORY, name, group)]

    async def prune_worker_events(self, before: datetime) -> int:
        """Delete rows older than `before` of agents and groups that are gone."""
        status = await self.execute(PRUNE_EVENTS, before)
        return int(status.split()[-1])

    async def worker_record(self, name: str, stale_after_s: float) -> WorkerRecord | None:
        """The record of `name` as LIST_WORKERS reads it (None: there is none)."""
        row = await self.fetchrow(ONE_WORKER, stale_after_s, 1, name)
        return WorkerRecord.from_row(row) if row is not None else None

    async def worker_token_label(self, name: str) -> str | None:
        """The label of the token `name`'s record names (None: no record, or no such token)."""
        label: str | None = await self.fetchval(WORKER_TOKEN_LABEL, name)
        return label

    async def worker_jobs(self, name: str, workspace: str | None = None
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What `name` runs now, and the last RECENT_JOBS jobs it ended (newest first);
        `workspace`: of that workspace only."""
        current = await self.fetch(CURRENT_JOBS, name, workspace)
        recent = await self.fetch(RECENT_JOBS_RUN, name, workspace)
        return [job_line(r) for r in current], [outcome_line(r) for r in recent]
