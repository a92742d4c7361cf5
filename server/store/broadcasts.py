"""Broadcast jobs: a parent and one child per agent, each child pinned to its agent
(services/broadcast.py; migration 0027)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from tagrun.server.store._base import DONE_CHANNEL, StoreBase
from tagrun.server.store.jobs import NewJob

# The parent (running from the start: it runs nowhere and ends with its children) and its
# children, one per pin tag $15, each with the broadcast's tag, one attempt, queued under its
# pin. One statement: a broadcast is whole or not at all.
INSERT_BROADCAST = """
WITH parent AS (
    INSERT INTO jobs (workspace, script_path, script_version, language, content, args, tag,
                      priority, run_at, timeout_s, max_attempts, lease_s, secrets, signature,
                      traceparent, status, started_at, broadcast)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9, 1, $10, $11, $12, $13, 'running',
            now(), true)
    RETURNING id
), kids AS (
    INSERT INTO jobs (workspace, script_path, script_version, language, content, args, tag,
                      priority, run_at, timeout_s, max_attempts, lease_s, secrets, signature,
                      traceparent, parent_id, pin_tag)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, coalesce($14, now()), $9, 1, $10, $11, $12, $13,
           parent.id, pin
    FROM parent, unnest($15::text[]) WITH ORDINALITY AS p(pin, n) ORDER BY n
    RETURNING id, pin_tag, priority, run_at
), q AS (
    INSERT INTO queue (job_id, tag, priority, run_at)
    SELECT id, pin_tag, priority, run_at FROM kids
)
SELECT (SELECT id FROM parent) AS parent, array_agg(id ORDER BY id) AS children FROM kids"""
# A broadcast's children: their agent (from the pin), status and outcome.
CHILDREN = """
SELECT id, split_part(pin_tag, '/', 2) AS agent, status, worker, result, error, started_at,
       finished_at
FROM jobs WHERE parent_id = $1 ORDER BY id"""
# Queued children whose agent is gone (no record under that name and token, or stopped,
# stale past $1 seconds, refused for its version, or its token revoked or expired): they fail
# with lost_worker, as nothing else may run them.
FAIL_LOST_CHILDREN = f"""
WITH lost AS (
    SELECT c.id FROM jobs c
    LEFT JOIN workers w ON w.name = split_part(c.pin_tag, '/', 2)
                       AND w.jti = substr(split_part(c.pin_tag, '/', 1), 2)
    LEFT JOIN workers_seen s ON s.name = w.name
    LEFT JOIN agent_tokens t ON t.jti = w.jti
    WHERE c.parent_id IS NOT NULL AND c.status = 'queued' AND c.pin_tag IS NOT NULL
      AND c.parent_id IN (SELECT job_id FROM running WHERE broadcast)
      AND (w.name IS NULL OR w.stopped_at IS NOT NULL OR w.version_refused_at IS NOT NULL
           OR s.seen_at < now() - make_interval(secs => $1::float8)
           OR t.revoked_at IS NOT NULL OR t.expires_at <= now())
    FOR UPDATE OF c SKIP LOCKED
), dequeued AS (
    DELETE FROM queue q USING lost WHERE q.job_id = lost.id
)
UPDATE jobs SET status = 'failed', finished_at = now(),
    error = jsonb_build_object('kind', 'lost_worker', 'message',
        'its agent ' || split_part(pin_tag, '/', 2) || ' went away before it ran')
FROM lost WHERE jobs.id = lost.id
RETURNING jobs.id, jobs.parent_id, pg_notify('{DONE_CHANNEL}', jobs.id::text)"""
# Parents ($1; NULL: every open one) whose children have all ended: each ends with the
# list of its children's outcomes; succeeded if they all did.
FINISH_BROADCASTS = f"""
WITH done AS (
    SELECT p.id FROM running r JOIN jobs p ON p.id = r.job_id
    WHERE r.broadcast AND p.status = 'running' AND ($1::bigint[] IS NULL OR p.id = ANY($1))
      AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = p.id
                                             AND c.status IN ('queued', 'running'))
    FOR UPDATE OF p SKIP LOCKED
), summary AS (
    SELECT c.parent_id,
           jsonb_agg(jsonb_build_object(
               'job_id', c.id, 'agent', split_part(c.pin_tag, '/', 2), 'status', c.status,
               'result', c.result, 'error', c.error) ORDER BY c.id) AS children,
           count(*) AS n, count(*) FILTER (WHERE c.status <> 'succeeded') AS failed,
           string_agg(split_part(c.pin_tag, '/', 2), ', ' ORDER BY c.id)
               FILTER (WHERE c.status <> 'succeeded') AS failed_on
    FROM jobs c JOIN done ON c.parent_id = done.id GROUP BY c.parent_id
)
UPDATE jobs p SET
    status = CASE WHEN s.failed = 0 THEN 'succeeded' WHEN p.cancel_requested THEN 'cancelled'
                  ELSE 'failed' END,
    cancel_requested = false,
    finished_at = now(), result = jsonb_build_object('children', s.children),
    error = CASE WHEN s.failed = 0 THEN NULL ELSE jsonb_build_object(
        'kind', CASE WHEN p.cancel_requested THEN 'cancelled' ELSE 'broadcast_failed' END,
        'message', s.failed || ' of ' || s.n || ' agents'' jobs did not succeed: '
                   || left(s.failed_on, 500)) END
FROM summary s WHERE p.id = s.parent_id
RETURNING p.id, p.workspace, p.status, s.n AS children, s.failed,
          pg_notify('{DONE_CHANNEL}', p.id::text)"""
# The children of parent $1 still to cancel.
OPEN_CHILDREN = """
SELECT id FROM jobs WHERE parent_id = $1 AND status IN ('queued', 'running') ORDER BY id"""
# Agents with pinned jobs waiting: their claims ask for their pin tag as well.
PINNED_QUEUED = "SELECT DISTINCT tag FROM queue WHERE left(tag, 1) = '@'"


class ChildRecord(msgspec.Struct, frozen=True):
    """A broadcast's child as its parent shows it (the columns CHILDREN returns)."""

    id: int
    agent: str  # the agent it is pinned to (from its pin tag)
    status: str
    worker: str | None
    result: Any  # whatever the job returned (JSON)
    error: dict[str, Any] | None  # {kind, message}
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ChildRecord:
        return cls(**row)


class Broadcasts(StoreBase):
    async def insert_broadcast(self, workspace: str, job: NewJob, pins: Sequence[str]
                               ) -> tuple[int, list[int]]:
        """The parent's id and its children's, one per pin tag, in order."""
        row = await self.fetchrow(
            INSERT_BROADCAST, workspace, job.script_path, job.script_version, job.language,
            job.content, job.args, job.tag, job.priority, job.timeout_s, job.lease_s,
            list(job.secrets), job.signature, job.traceparent, job.run_at, list(pins))
        assert row is not None
        return int(row["parent"]), list(row["children"] or [])

    async def broadcast_children(self, parent_id: int) -> list[ChildRecord]:
        return [ChildRecord.from_row(r) for r in await self.fetch(CHILDREN, parent_id)]

    async def fail_lost_children(self, stale_after_s: float) -> list[tuple[int, int]]:
        """(child id, parent id) of the queued children failed for a vanished agent."""
        return [(r["id"], r["parent_id"])
                for r in await self.fetch(FAIL_LOST_CHILDREN, stale_after_s)]

    async def finish_broadcasts(self, parent_ids: Sequence[int] | None = None
                                ) -> list[dict[str, Any]]:
        """End the parents (`parent_ids`, or every open one) whose children all ended."""
        ids = list(parent_ids) if parent_ids is not None else None
        return [dict(r) for r in await self.fetch(FINISH_BROADCASTS, ids)]

    async def open_children(self, parent_id: int) -> list[int]:
        return [r["id"] for r in await self.fetch(OPEN_CHILDREN, parent_id)]

    async def pinned_queued(self) -> list[str]:
        return [r["tag"] for r in await self.fetch(PINNED_QUEUED)]
