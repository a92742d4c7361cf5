"""Agent tokens, the signing secret, and the records of connected agents and workers."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from tagrun.server.errors import AgentNameTaken, NotFound
from tagrun.server.store._base import FLEET_CHANNEL, StoreBase, iso
from tagrun.server.store.leases import EXTENDED

INSERT_SECRET = """
INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"""
GET_SECRET = "SELECT value FROM server_secrets WHERE name = $1"
INSERT_AGENT_TOKEN = """
INSERT INTO agent_tokens (jti, grp, tags, label, expires_at, max_jobs)
VALUES ($1, $2, $3, $4, $5, $6)"""
LIST_AGENT_TOKENS = """
SELECT jti, grp, tags, label, created_at, expires_at, revoked_at, max_jobs, jobs_claimed
FROM agent_tokens
WHERE $1 OR (revoked_at IS NULL AND expires_at > now()) ORDER BY created_at DESC LIMIT 1000"""
REVOKE_AGENT_TOKEN = """
UPDATE agent_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE jti = $1 RETURNING jti"""
REVOKED_JTIS = """
SELECT jti FROM agent_tokens WHERE revoked_at IS NOT NULL AND expires_at > now()"""
# A name is the record of one token: another token may take it over only once the record is
# stale (its agent gone); until then nothing is written and no row comes back.
# A drain asked of an agent ends when another process of that name (another session, $9)
# connects: a service manager restarting a drained agent gets one that claims as usual. Then
# every replica is told (it holds drains in memory).
UPSERT_AGENT = f"""
WITH old AS (SELECT drain_at IS NOT NULL AND session_key IS DISTINCT FROM $9 AS undrained
             FROM workers WHERE name = $1),
up AS (
    INSERT INTO workers (name, kind, grp, tags, ip, version, jti, via, session_key, verify,
                         os, arch, slots)
    VALUES ($1, 'agent', $2, $3, $4, $5, $6, $7, $9, $10, $11, $12, $13)
    ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, grp = EXCLUDED.grp,
        tags = EXCLUDED.tags, ip = EXCLUDED.ip, version = EXCLUDED.version,
        verify = EXCLUDED.verify, os = EXCLUDED.os, arch = EXCLUDED.arch,
        slots = EXCLUDED.slots,
        version_refused_at = CASE WHEN workers.session_key IS DISTINCT FROM
                                       EXCLUDED.session_key
                                  THEN NULL ELSE workers.version_refused_at END,
        jti = EXCLUDED.jti, via = EXCLUDED.via, connected_at = now(), last_seen = now(),
        stale_reported = false, stopped_at = NULL, stop_reason = NULL,
        session_key = EXCLUDED.session_key,
        drain_at = CASE WHEN workers.session_key IS DISTINCT FROM EXCLUDED.session_key
                        THEN NULL ELSE workers.drain_at END,
        drain_note = CASE WHEN workers.session_key IS DISTINCT FROM EXCLUDED.session_key
                          THEN NULL ELSE workers.drain_note END
    WHERE workers.jti IS NOT DISTINCT FROM EXCLUDED.jti
       OR NOT EXISTS (SELECT 1 FROM workers_seen s WHERE s.name = EXCLUDED.name
                      AND s.seen_at >= now() - make_interval(secs => $8::float8))
    RETURNING name
)
SELECT up.name, coalesce(old.undrained, false) AS undrained,
       CASE WHEN old.undrained THEN pg_notify('{FLEET_CHANNEL}', '') END
FROM up LEFT JOIN old ON true"""
NAME_HOLDER = "SELECT kind, grp FROM workers WHERE name = $1"
# Agents that stopped being seen, each returned once (by one replica) until seen again; what
# they ran is no longer theirs (their leases run out), so they count as running nothing.
# When last seen is workers_seen's seen_at, spelled out: the stale agents are found in one
# scan of `workers` (joined to the few server processes) before the update joins them back by
# name. Joined to the view, `workers` met itself, and a plan made while the table was nearly
# empty took 0.6 s a call on average, up to 11 s, once 10,000 agents had connected
# (docs/performance.md, item 19).
MARK_STALE_AGENTS = """
WITH stale AS MATERIALIZED (
    SELECT w.name, greatest(w.last_seen, p.last_seen) AS seen_at
    FROM workers w LEFT JOIN server_processes p ON p.id = w.via
    WHERE NOT w.stale_reported AND w.kind = 'agent' AND w.stopped_at IS NULL
      AND greatest(w.last_seen, p.last_seen) < now() - make_interval(secs => $1::float8)
)
UPDATE workers w SET stale_reported = true, active_count = 0, via = NULL, last_seen = s.seen_at
FROM stale s
-- checked again on the row as it is now: seen, stopped or reported meanwhile, it is left be
WHERE w.name = s.name AND NOT w.stale_reported AND w.stopped_at IS NULL
  AND w.last_seen <= s.seen_at
RETURNING w.name, w.grp, w.tags, w.ip, w.last_seen"""
# One statement for every heartbeat a server process received in an interval: leases of
# all named jobs are extended, the process ($7) is marked alive, and so are the agents it
# holds. An agent's record is written only when something about it changed: it came to this
# process, its running count moved, it was reported stale, or it left ($8, last heard from
# $11 seconds ago: its staleness counts from then). A lease is
# extended only for its holder's name and key ($9), a record marked alive only for its
# token ($10): naming another agent extends nothing and writes nothing.
HEARTBEAT_BATCH = f"""
WITH held AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $9::text[])
        WITH ORDINALITY AS h(id, attempt, holder, key, n)
), {EXTENDED}, process AS (
    INSERT INTO server_processes (id) VALUES ($7) ON CONFLICT (id) DO UPDATE SET last_seen = now()
), seen AS (
    UPDATE workers w SET last_seen = now(), via = $7, active_count = s.active,
                         stale_reported = false
    FROM unnest($5::text[], $6::int[], $10::text[]) AS s(name, active, jti)
    WHERE w.name = s.name AND w.jti = s.jti AND w.stopped_at IS NULL
      AND (w.via IS DISTINCT FROM $7 OR w.active_count <> s.active OR w.stale_reported)
), gone AS (
    UPDATE workers w SET last_seen = greatest(w.last_seen, now() - make_interval(secs => g.ago)),
                         via = NULL
    FROM unnest($8::text[], $11::float8[]) AS g(name, ago)
    WHERE w.name = g.name AND w.via = $7
)
SELECT h.n, e.n IS NULL AS lost, coalesce(e.cancel_requested, false) AS cancel
FROM held h LEFT JOIN extended e ON e.n = h.n ORDER BY h.n"""
# Each record's state (services/fleet.py STATES), true the moment it changes: a revoked or
# expired token, a clean stop (the holder said goodbye), no contact past $1 seconds, running
# jobs, or live.
def _list_workers(where: str = "") -> str:
    return f"""
SELECT w.name, w.kind, w.grp, w.tags, w.ip, w.version, w.connected_at, s.seen_at AS last_seen,
       w.jti,
       w.active_count, w.jobs_executed, w.stopped_at, w.stop_reason, w.drain_note, w.verify,
       w.os, w.arch, w.slots, w.version_refused_min,
       CASE WHEN q.quarantined THEN w.quarantine_reason END AS quarantine_reason,
       CASE WHEN q.quarantined THEN w.quarantined_until END AS quarantined_until,
       CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
            WHEN t.expires_at <= now() THEN 'expired' END AS token_problem,
       CASE WHEN t.revoked_at IS NOT NULL OR t.expires_at <= now() THEN 'token_revoked'
            WHEN w.version_refused_at IS NOT NULL THEN 'version_refused'
            WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN s.seen_at < now() - make_interval(secs => $1::float8) THEN 'stale'
            WHEN w.drain_at IS NOT NULL THEN 'draining'
            WHEN q.quarantined THEN 'quarantined'
            WHEN p.paused OR g.grp IS NOT NULL THEN 'paused'
            WHEN w.active_count > 0 THEN 'busy'
            ELSE 'live' END AS state,
       CASE WHEN p.paused THEN w.pause_note ELSE g.note END AS pause_note,
       CASE WHEN p.paused THEN w.paused_by ELSE g.paused_by END AS paused_by,
       CASE WHEN p.paused THEN w.paused_until ELSE g.paused_until END AS paused_until,
       CASE WHEN p.paused THEN 'agent' WHEN g.grp IS NOT NULL THEN 'group' END AS paused_as
FROM workers w JOIN workers_seen s ON s.name = w.name
CROSS JOIN LATERAL (SELECT w.paused_at IS NOT NULL
                           AND (w.paused_until IS NULL OR w.paused_until > now()) AS paused) p
CROSS JOIN LATERAL (SELECT w.quarantined_at IS NOT NULL
                           AND (w.quarantined_until IS NULL OR w.quarantined_until > now())
                           AS quarantined) q
LEFT JOIN agent_tokens t ON w.kind = 'agent' AND t.jti = w.jti
LEFT JOIN paused_groups g ON w.kind = 'agent' AND g.grp = w.grp
                         AND (g.paused_until IS NULL OR g.paused_until > now())
{where}
ORDER BY w.kind, w.grp, w.name LIMIT $2"""


LIST_WORKERS = _list_workers()  # $2 NULL: every one
# The same for the workers that serve any of the tags $3 (why jobs of those tags wait).
WORKERS_FOR_TAGS = _list_workers("WHERE w.tags && $3::text[]")
# Steering (routes/fleet.py): each announces itself on FLEET_CHANNEL, so that every replica
# re-reads FLEET_CONTROLS at once. $2: seconds the pause lasts (NULL: until resumed).
PAUSE_AGENT = f"""
WITH w AS (
    UPDATE workers SET paused_at = now(), paused_until = now() + make_interval(secs => $2),
                       pause_note = $3, paused_by = $4
    WHERE name = $1 AND kind = 'agent' RETURNING name
)
SELECT name, pg_notify('{FLEET_CHANNEL}', '') FROM w"""
RESUME_AGENT = f"""
WITH w AS (
    UPDATE workers SET paused_at = NULL, paused_until = NULL, pause_note = NULL, paused_by = NULL,
                       quarantined_at = NULL, quarantined_until = NULL,
                       quarantine_reason = NULL, fail_streak = 0, fail_since = NULL,
                       fail_scripts = '{{}}'
    WHERE name = $1 AND kind = 'agent' RETURNING name
)
SELECT name, pg_notify('{FLEET_CHANNEL}', '') FROM w"""
DRAIN_AGENT = f"""
WITH w AS (
    UPDATE workers SET drain_at = now(), drain_note = $2
    WHERE name = $1 AND kind = 'agent' AND stopped_at IS NULL RETURNING name
)
SELECT name, pg_notify('{FLEET_CHANNEL}', '') FROM w"""
def _pause(table: str, key: str) -> str:
    """Pause a group or a tag ($1) for $2 seconds (NULL: until resumed), note $3, by $4."""
    return f"""
WITH p AS (
    INSERT INTO {table} ({key}, paused_until, note, paused_by)
    VALUES ($1, now() + make_interval(secs => $2), $3, $4)
    ON CONFLICT ({key}) DO UPDATE SET paused_at = now(), paused_until = EXCLUDED.paused_until,
                                      note = EXCLUDED.note, paused_by = EXCLUDED.paused_by
    RETURNING {key}
)
SELECT {key}, pg_notify('{FLEET_CHANNEL}', '') FROM p"""


def _resume(table: str, key: str) -> str:
    return f"""
WITH p AS (DELETE FROM {table} WHERE {key} = $1 RETURNING {key})
SELECT {key}, pg_notify('{FLEET_CHANNEL}', '') FROM p"""


PAUSE_GROUP, RESUME_GROUP = _pause("paused_groups", "grp"), _resume("paused_groups", "grp")
# What every replica keeps in memory (server/fleet_controls.py): pauses still in force, drains.
FLEET_CONTROLS = """
SELECT 'agent' AS scope, name AS target, paused_at IS NOT NULL
           AND (paused_until IS NULL OR paused_until > now()) AS paused,
       paused_until, drain_at IS NOT NULL AS drain
FROM workers
WHERE kind = 'agent' AND ((paused_at IS NOT NULL
                           AND (paused_until IS NULL OR paused_until > now()))
                          OR drain_at IS NOT NULL)
UNION ALL
SELECT 'group', grp, true, paused_until, false FROM paused_groups
WHERE paused_until IS NULL OR paused_until > now()
UNION ALL
SELECT 'tag', tag, true, paused_until, false FROM paused_tags
WHERE paused_until IS NULL OR paused_until > now()
UNION ALL
SELECT 'quarantine', name, true, quarantined_until, false FROM workers
WHERE kind = 'agent' AND quarantined_at IS NOT NULL
  AND (quarantined_until IS NULL OR quarantined_until > now())"""
# A tag paused: no agent or worker claims its jobs (the claim leaves it out of the tags it
# asks for), and its queued jobs say so (services/pending.py). $2: seconds (NULL: until
# resumed).
PAUSE_TAG, RESUME_TAG = _pause("paused_tags", "tag"), _resume("paused_tags", "tag")
PAUSED_TAGS = """
SELECT tag, paused_at, paused_until, note, paused_by FROM paused_tags
WHERE paused_until IS NULL OR paused_until > now() ORDER BY tag"""
# Quarantine (services/quarantine.py): did agents other than $1 succeed at jobs of tags $2
# since $3 (read through the ended set's finished_at index)?
OTHERS_SUCCEEDED = """
SELECT EXISTS (SELECT 1 FROM ended WHERE finished_at >= $3 AND status = 'succeeded'
                                     AND worker <> $1 AND tag = ANY($2::text[]))"""
QUARANTINE_AGENT = f"""
WITH w AS (
    UPDATE workers SET quarantined_at = now(), quarantine_reason = $3,
                       quarantined_until = now() + make_interval(secs => $2)
    WHERE name = $1 AND kind = 'agent'
      AND NOT (quarantined_at IS NOT NULL
               AND (quarantined_until IS NULL OR quarantined_until > now()))
    RETURNING name, quarantined_until
)
SELECT quarantined_until, pg_notify('{FLEET_CHANNEL}', '') FROM w"""
# The server refused this agent process's claims for its version (its state shows
# `version_refused` until a process of that name connects again): only its own token's record.
VERSION_REFUSED = """
UPDATE workers SET version_refused_at = now(), version_refused_min = $3
WHERE name = $1 AND kind = 'agent' AND jti = $2 AND version_refused_at IS NULL
RETURNING name"""
# A standalone server's inline worker lives and dies with its process (and has a name of its
# own each start): once stopped or stale, its record is folded away rather than piling up.
FOLD_INLINE_WORKERS = """
DELETE FROM workers w USING workers_seen s
WHERE s.name = w.name AND w.kind = 'inline'
  AND (w.stopped_at IS NOT NULL OR s.seen_at < now() - make_interval(secs => $1::float8))
RETURNING w.name"""
# The last act of an agent process that stops cleanly: only its own token's record.
AGENT_GOODBYE = """
UPDATE workers SET stopped_at = now(), stop_reason = $3, via = NULL, active_count = 0,
                   last_seen = now()
WHERE name = $1 AND kind = 'agent' AND jti = $2 RETURNING name"""
WORKER_STOPPED = """
UPDATE workers SET stopped_at = now(), stop_reason = $2, active_count = 0, last_seen = now()
WHERE name = $1 AND kind <> 'agent'"""
RUNNING_BY_HOLDER_AND_TAG = """
SELECT r.worker, j.tag, count(*) AS n FROM running r JOIN jobs j ON j.id = r.job_id
WHERE NOT r.broadcast GROUP BY r.worker, j.tag"""
# Queued jobs by tag, and how long the oldest due one has waited (NULL: none due yet).
QUEUED_BY_TAG = """
SELECT tag, count(*) AS n,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8 AS oldest_s
FROM queue GROUP BY tag"""
# Queue waits (due to start) by tag, of the last 10,000 jobs that finished within 15 minutes
# (read through the ended set's finished_at index, so the Workers page stays cheap on a busy
# server).
RECENT_WAITS = """
SELECT tag, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY w) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY w) AS p95
FROM (SELECT j.tag, greatest(extract(epoch FROM j.started_at - j.run_at), 0)::float8 AS w
      FROM ended e JOIN jobs j ON j.id = e.job_id
      WHERE e.finished_at >= now() - interval '15 minutes' AND j.started_at IS NOT NULL
      ORDER BY e.finished_at DESC LIMIT 10000) recent
GROUP BY tag"""


class WorkerRecord(msgspec.Struct, frozen=True):
    """An agent or a direct or inline worker, with its state of the moment: the columns
    LIST_WORKERS returns (and WORKERS_FOR_TAGS and history.py's ONE_WORKER, the same
    statement). services/fleet.py makes the view the API and the UI show."""

    name: str
    kind: str  # "agent", "worker" (a direct worker) or "inline" (a server process's own)
    grp: str  # its group ('' for none)
    tags: tuple[str, ...]
    ip: str | None
    version: str | None
    connected_at: datetime
    last_seen: datetime  # its own contact or its server process's, the later
    jti: str | None  # its token (an agent's)
    active_count: int
    jobs_executed: int
    stopped_at: datetime | None
    stop_reason: str | None
    drain_note: str | None
    verify: dict[str, Any] | None  # how it checks job signatures, as it said
    os: str | None
    arch: str | None
    slots: int | None  # None: it did not say
    version_refused_min: str | None
    quarantine_reason: str | None  # these two: while it is quarantined
    quarantined_until: datetime | None
    token_problem: str | None  # "revoked" or "expired"
    state: str  # one of services/fleet.py STATES
    pause_note: str | None  # these four: its own pause, else its group's
    paused_by: str | None
    paused_until: datetime | None
    paused_as: str | None  # "agent" or "group"

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WorkerRecord:
        return cls(**{**dict(row), "tags": tuple(row["tags"])})


class RunningCount(msgspec.Struct, frozen=True):
    """Jobs running now of one holder and tag (RUNNING_BY_HOLDER_AND_TAG)."""

    worker: str  # its holder: a running job always has one (its claim set it)
    tag: str
    n: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> RunningCount:
        return cls(worker=row["worker"], tag=row["tag"], n=row["n"])


class WorkersOverview(msgspec.Struct, frozen=True):
    """What the fleet view (services/fleet.py) and the metrics are made from."""

    workers: list[WorkerRecord]
    running: list[RunningCount]  # broadcast parents aside (they run nowhere)
    queued: dict[str, int]  # queued jobs by tag
    oldest: dict[str, float]  # by tag: seconds its oldest due job has waited (if one is due)


class StaleAgent(msgspec.Struct, frozen=True):
    """An agent MARK_STALE_AGENTS just found stale."""

    name: str
    grp: str
    tags: tuple[str, ...]
    ip: str | None
    last_seen: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StaleAgent:
        return cls(name=row["name"], grp=row["grp"], tags=tuple(row["tags"]), ip=row["ip"],
                   last_seen=row["last_seen"])


def agent_token_view(row: Any) -> dict[str, Any]:
    return {
        "jti": row["jti"], "group": row["grp"], "tags": list(row["tags"]), "label": row["label"],
        "created_at": iso(row["created_at"]), "expires_at": iso(row["expires_at"]),
        "revoked": row["revoked_at"] is not None,
        # A job-limited token (max_jobs; None: unlimited) and the jobs it has claimed.
        "max_jobs": row["max_jobs"], "jobs_claimed": row["jobs_claimed"],
    }


class Agents(StoreBase):
    async def secret(self, name: str) -> bytes:
        """A random secret shared by every replica, created by whichever starts first."""
        await self.execute(INSERT_SECRET, name, secrets.token_bytes(32))
        value: bytes = await self.fetchval(GET_SECRET, name)
        return value

    async def create_agent_token(
        self, jti: str, group: str, tags: Sequence[str], label: str, expires_at: datetime,
        max_jobs: int | None = None,
    ) -> None:
        await self.execute(INSERT_AGENT_TOKEN, jti, group, list(tags), label, expires_at,
                           max_jobs)

    async def list_agent_tokens(self, include_inactive: bool) -> list[dict[str, Any]]:
        return [agent_token_view(r) for r in await self.fetch(LIST_AGENT_TOKENS, include_inactive)]

    async def revoke_agent_token(self, jti: str) -> None:
        if await self.fetchval(REVOKE_AGENT_TOKEN, jti) is None:
            raise NotFound(f"no agent token with jti {jti!r}", code="agent_token_not_found")

    async def revoked_jtis(self) -> set[str]:
        return {r["jti"] for r in await self.fetch(REVOKED_JTIS)}

    async def upsert_agent(
        self, name: str, group: str, tags: Sequence[str], ip: str | None, version: str,
        jti: str, via: str, *, stale_after_s: float, session_key: str | None = None,
        verify: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
    ) -> bool:
        """Record an agent when server process `via` first sees it (not on every poll); True
        if that ended a drain asked of an earlier process of that name.

        A name whose record belongs to another token and is not stale is refused with
        AgentNameTaken, and that record is left as it was."""
        about = info or {}
        written = await self.fetchrow(UPSERT_AGENT, name, group, list(tags), ip, version, jti,
                                      via, stale_after_s, session_key, verify, about.get("os"),
                                      about.get("arch"), about.get("slots"))
        if written is not None:
            return bool(written["undrained"])
        if written is None:
            holder = await self.fetchrow(NAME_HOLDER, name)
            what = (f"a live {holder['kind']} of group {holder['grp']!r}" if holder is not None
                    else "another live agent")
            raise AgentNameTaken(
                f"agent name {name!r} is in use by {what} with another token; give this agent "
                "another AGENT_NAME, or stop that one (its name is free once it is stale)")

    async def agent_goodbye(self, name: str, jti: str, reason: str) -> bool:
        """Mark the agent `name` of token `jti` stopped; False if it has no such record."""
        return await self.fetchval(AGENT_GOODBYE, name, jti, reason) is not None

    async def pause_agent(self, name: str, for_s: float | None, note: str, by: str) -> bool:
        return await self.fetchval(PAUSE_AGENT, name, for_s, note, by) is not None

    async def resume_agent(self, name: str) -> bool:
        return await self.fetchval(RESUME_AGENT, name) is not None

    async def drain_agent(self, name: str, note: str) -> bool:
        return await self.fetchval(DRAIN_AGENT, name, note) is not None

    async def pause_group(self, group: str, for_s: float | None, note: str, by: str) -> None:
        await self.fetchval(PAUSE_GROUP, group, for_s, note, by)

    async def resume_group(self, group: str) -> bool:
        return await self.fetchval(RESUME_GROUP, group) is not None

    async def pause_tag(self, tag: str, for_s: float | None, note: str, by: str) -> None:
        await self.fetchval(PAUSE_TAG, tag, for_s, note, by)

    async def resume_tag(self, tag: str) -> bool:
        return await self.fetchval(RESUME_TAG, tag) is not None

    async def paused_tags(self) -> list[dict[str, Any]]:
        return [{"tag": r["tag"], "paused_at": iso(r["paused_at"]),
                 "paused_until": iso(r["paused_until"]), "note": r["note"],
                 "paused_by": r["paused_by"]} for r in await self.fetch(PAUSED_TAGS)]

    async def others_succeeded(self, name: str, tags: Sequence[str], since: datetime) -> bool:
        return bool(await self.fetchval(OTHERS_SUCCEEDED, name, list(tags), since))

    async def quarantine_agent(self, name: str, for_s: float | None, reason: str
                               ) -> tuple[bool, datetime | None]:
        """Quarantine `name` unless it already is: (done, until when)."""
        row = await self.fetchrow(QUARANTINE_AGENT, name, for_s, reason)
        return (row is not None, row["quarantined_until"] if row is not None else None)

    async def version_refused(self, name: str, jti: str, minimum: str) -> bool:
        """Mark the agent's record refused for its version; True the first time (per process)."""
        return await self.fetchval(VERSION_REFUSED, name, jti, minimum) is not None

    async def fleet_controls(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.fetch(FLEET_CONTROLS)]

    async def worker_stopped(self, name: str, reason: str) -> None:
        await self.execute(WORKER_STOPPED, name, reason)

    async def fold_inline_workers(self, stale_after_s: float) -> list[str]:
        """Delete the records of inline workers that stopped or went stale; their names."""
        return [r["name"] for r in await self.fetch(FOLD_INLINE_WORKERS, stale_after_s)]

    async def mark_stale_agents(self, stale_after_s: float) -> list[StaleAgent]:
        """Agents not seen for `stale_after_s`, each returned once until it is seen again."""
        return [StaleAgent.from_row(r)
                for r in await self.fetch(MARK_STALE_AGENTS, stale_after_s)]

    async def heartbeat_batch(
        self, held: Sequence[tuple[int, int, str, str]], seen: dict[str, tuple[str, int]],
        lease_s: float, *, process: str, gone: Mapping[str, float] | None = None,
    ) -> list[tuple[bool, bool]]:
        """Extend leases of (job id, attempt, holder name, holder key), mark process `process`
        and the agents it holds (`seen`: name -> (jti, running count)) alive and `gone`
        (name -> seconds since it was last heard from) as no longer held by it. Returns
        (lost, cancel) for each entry of `held`, in order."""
        gone = gone or {}
        rows = await self.fetch(
            HEARTBEAT_BATCH, [h[0] for h in held], [h[1] for h in held], [h[2] for h in held],
            lease_s, list(seen), [s[1] for s in seen.values()], process, list(gone),
            [h[3] for h in held], [s[0] for s in seen.values()], list(gone.values()),
        )
        return [(r["lost"], r["cancel"]) for r in rows]

    async def workers_for_tags(self, tags: Sequence[str], stale_after_s: float
                               ) -> list[WorkerRecord]:
        """The workers (agents, direct workers) serving any of `tags`, each with its state."""
        return [WorkerRecord.from_row(r)
                for r in await self.fetch(WORKERS_FOR_TAGS, stale_after_s, None, list(tags))]

    async def workers_overview(self, stale_after_s: float) -> WorkersOverview:
        workers = [WorkerRecord.from_row(r)
                   for r in await self.fetch(LIST_WORKERS, stale_after_s, None)]
        running = [RunningCount.from_row(r) for r in await self.fetch(RUNNING_BY_HOLDER_AND_TAG)]
        rows = await self.fetch(QUEUED_BY_TAG)
        queued = {r["tag"]: r["n"] for r in rows}
        oldest = {r["tag"]: r["oldest_s"] for r in rows if r["oldest_s"] is not None}
        return WorkersOverview(workers=workers, running=running, queued=queued, oldest=oldest)

    async def recent_waits(self) -> dict[str, dict[str, float]]:
        """Per tag: p50 and p95 of the queue wait (seconds) over the last 15 minutes."""
        return {r["tag"]: {"p50": float(r["p50"]), "p95": float(r["p95"]), "n": int(r["n"])}
                for r in await self.fetch(RECENT_WAITS)}
