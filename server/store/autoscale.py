"""What GET /api/autoscale reads: the fleet's records, the jobs running and queued by tag, and
the tags of each agent group's tokens, in four statements however many tags and groups."""

from __future__ import annotations

import msgspec

from tagrun.server.store._base import StoreBase
from tagrun.server.store.agents import (
    LIST_WORKERS,
    RUNNING_BY_HOLDER_AND_TAG,
    RunningCount,
    WorkerRecord,
)

# Queued jobs by tag: all of them, those due now (delayed ones need no agent yet), and how
# long the oldest due one has waited (NULL: none is due).
QUEUE_BY_TAG = """
SELECT tag, count(*) AS n, count(*) FILTER (WHERE run_at <= now()) AS due,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8 AS oldest_s
FROM queue GROUP BY tag"""
# The tags each group's tokens open, tokens still valid: a group scaled to zero has no agent
# to say which tags it serves, and must still be asked to scale up when its jobs queue.
GROUP_TAGS = """
SELECT grp, array_agg(DISTINCT tag ORDER BY tag) AS tags
FROM agent_tokens CROSS JOIN LATERAL unnest(tags) AS tag
WHERE revoked_at IS NULL AND expires_at > now()
GROUP BY grp"""


class AutoscaleOverview(msgspec.Struct, frozen=True):
    """What services/autoscale.py computes from: `workers` and `running` as
    workers_overview gives them, per tag the jobs queued, due and how long the oldest due one
    has waited, and per group the tags of its valid tokens."""

    workers: list[WorkerRecord]
    running: list[RunningCount]
    queued: dict[str, int]  # by tag
    due: dict[str, int]  # by tag
    oldest: dict[str, float]  # by tag, seconds (tags with a due job only)
    group_tags: dict[str, list[str]]


class Autoscaling(StoreBase):
    async def autoscale_overview(self, stale_after_s: float) -> AutoscaleOverview:
        workers = [WorkerRecord.from_row(r)
                   for r in await self.fetch(LIST_WORKERS, stale_after_s, None)]
        running = [RunningCount.from_row(r) for r in await self.fetch(RUNNING_BY_HOLDER_AND_TAG)]
        queue = await self.fetch(QUEUE_BY_TAG)
        groups = await self.fetch(GROUP_TAGS)
        return AutoscaleOverview(
            workers=workers, running=running,
            queued={r["tag"]: r["n"] for r in queue},
            due={r["tag"]: r["due"] for r in queue},
            oldest={r["tag"]: r["oldest_s"] for r in queue if r["oldest_s"] is not None},
            group_tags={r["grp"]: list(r["tags"]) for r in groups},
        )
