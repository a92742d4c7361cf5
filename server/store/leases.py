"""The worker side of a job: claim, heartbeat, logs, complete; lease expiry; worker records.

Every write about a running job names its holder and attempt (fencing): a write from an
old attempt or another holder changes nothing and raises `LeaseLost`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from tagrun.server.errors import CompletionConflict, Conflict, LeaseLost, TagrunError
from tagrun.server.store._base import DONE_CHANNEL, StoreBase, iso, translated_errors
from tagrun.server.store.completions import Completer, Outcome
from tagrun.server.store.jobs import (
    INSERT_JOB_ROW,
    JOB_COLUMNS,
    JOBS_INPUT,
    JobRecord,
    NewJob,
    _columns,
    _late_columns,
)
from tagrun.server.store.settings import CAPS_STATE, INLINE_CAP, TOTAL_CAP, setting_int
from tagrun.shared.loglines import CODES, TAGRUN, Mark, flat
from tagrun.shared.storable import storable_json, storable_text

if TYPE_CHECKING:
    import asyncpg


# Leases the best jobs of tags $1 to the slots $2: one holder name per slot, in the order
# the slots should be served (a holder with three free slots appears three times).
# One index-ordered scan per tag (a plain `tag = ANY(...)` would read and sort every queued
# job of those tags), then the best over all tags. Rows locked but not picked are released
# at commit. This fast path takes no job of a capped script, and nothing while a global cap
# applies to the claimer ($4: it runs inside a server process): CLAIM_JOBS_CAPPED does.
def _claim_jobs(scan: str = "FROM queue q", where: str = "",
                limit: str = "cardinality($2::text[])") -> str:
    return f"""
WITH slots AS (
    SELECT holder, key, ack_s, n
    FROM unnest($2::text[], $5::text[], $6::float8[]) WITH ORDINALITY AS s(holder, key, ack_s, n)
), picked AS (
    SELECT c.job_id, row_number() OVER (ORDER BY c.priority DESC, c.run_at, c.job_id) AS n
    FROM unnest($1::text[]) AS t(tag)
    CROSS JOIN LATERAL (
        SELECT q.job_id, q.priority, q.run_at {scan}
        WHERE q.tag = t.tag AND q.run_at <= now() AND q.concurrency_key IS NULL{where}
        ORDER BY q.priority DESC, q.run_at, q.job_id
        LIMIT {limit} FOR UPDATE OF q SKIP LOCKED
    ) c
    WHERE NOT EXISTS (
        SELECT 1 FROM settings
        WHERE (key = '{TOTAL_CAP}' OR ($4 AND key = '{INLINE_CAP}'))
          AND value <> '0'::jsonb)
    ORDER BY c.priority DESC, c.run_at, c.job_id
    LIMIT {limit}
), dequeued AS (
    DELETE FROM queue q USING picked p WHERE q.job_id = p.job_id RETURNING q.job_id
)
UPDATE jobs j SET status = 'running', attempt = j.attempt + 1, worker = s.holder,
                  holder_key = s.key,
                  started_at = now(), finished_at = NULL, inline = $4,
                  lease_expires_at = now() + make_interval(
                      secs => coalesce(j.lease_s, $3::float8)),
                  ack_by = now() + make_interval(secs => s.ack_s)
FROM dequeued d JOIN picked p ON p.job_id = d.job_id JOIN slots s ON s.n = p.n
WHERE j.id = d.job_id
RETURNING j.id, j.workspace, j.language, j.content, j.args, j.tag, j.attempt, j.timeout_s,
          j.log_received AS log_offset, j.priority, j.worker, j.holder_key, j.lease_s,
          extract(epoch FROM now() - j.run_at)::float8 AS waited_s, j.secrets,
          j.script_path, j.script_version, j.signature, j.traceparent"""
# The same under caps, run while holding CLAIM_LOCK so that claims from every process are
# counted one after another: room = the smallest of the free slots, the global cap minus
# running jobs, the inline cap minus jobs running in server processes (for inline claimers),
# and each script's limit minus its running jobs. Looks up to $5 queued jobs ahead per tag
# past capped ones; within a script, older jobs go first.
def _claim_jobs_capped(scan: str = "FROM queue q", where: str = "") -> str:
    return f"""
WITH caps AS (
    SELECT {setting_int(TOTAL_CAP)} AS total_cap,
           {setting_int(INLINE_CAP)} AS inline_cap
), load AS (
    SELECT count(*) AS running, count(*) FILTER (WHERE inline) AS running_inline
    FROM running WHERE NOT broadcast  -- a broadcast's parent runs nowhere
), room AS (
    SELECT least(cardinality($2::text[]),
                 CASE WHEN total_cap > 0 THEN greatest(total_cap - running, 0) END,
                 CASE WHEN $4 AND inline_cap > 0 THEN greatest(inline_cap - running_inline, 0)
                 END) AS n
    FROM caps, load
), slots AS (
    SELECT holder, key, ack_s, n
    FROM unnest($2::text[], $6::text[], $7::float8[]) WITH ORDINALITY AS s(holder, key, ack_s, n)
), candidates AS (
    SELECT c.* FROM unnest($1::text[]) AS t(tag)
    CROSS JOIN LATERAL (
        SELECT q.job_id, q.priority, q.run_at, q.concurrency_key, q.concurrency_limit
        {scan}
        WHERE q.tag = t.tag AND q.run_at <= now(){where}
        ORDER BY q.priority DESC, q.run_at, q.job_id
        LIMIT $5 FOR UPDATE OF q SKIP LOCKED
    ) c
), busy AS (
    SELECT concurrency_key, count(*) AS n FROM running
    WHERE concurrency_key IN (SELECT concurrency_key FROM candidates)
    GROUP BY concurrency_key
), ranked AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.concurrency_key
                                   ORDER BY c.priority DESC, c.run_at, c.job_id) AS k
    FROM candidates c
), picked AS (
    SELECT r.job_id, row_number() OVER (ORDER BY r.priority DESC, r.run_at, r.job_id) AS n
    FROM ranked r LEFT JOIN busy b ON b.concurrency_key = r.concurrency_key
    WHERE r.concurrency_key IS NULL OR r.k + coalesce(b.n, 0) <= r.concurrency_limit
    ORDER BY r.priority DESC, r.run_at, r.job_id
    LIMIT (SELECT n FROM room)
-- started_at: this statement's start, after the cap lock wait (now() is the transaction's).
), dequeued AS (
    DELETE FROM queue q USING picked p WHERE q.job_id = p.job_id RETURNING q.job_id
)
UPDATE jobs j SET status = 'running', attempt = j.attempt + 1, worker = s.holder,
                  holder_key = s.key,
                  started_at = statement_timestamp(), finished_at = NULL, inline = $4,
                  lease_expires_at = now() + make_interval(
                      secs => coalesce(j.lease_s, $3::float8)),
                  ack_by = now() + make_interval(secs => s.ack_s)
FROM dequeued d JOIN picked p ON p.job_id = d.job_id JOIN slots s ON s.n = p.n
WHERE j.id = d.job_id
RETURNING j.id, j.workspace, j.language, j.content, j.args, j.tag, j.attempt, j.timeout_s,
          j.log_received AS log_offset, j.priority, j.worker, j.holder_key, j.lease_s,
          extract(epoch FROM now() - j.run_at)::float8 AS waited_s, j.secrets,
          j.script_path, j.script_version, j.signature, j.traceparent"""


def _filtered(first: int) -> tuple[str, str]:
    """The scan and condition of a claim that leases only what an agent's local policy
    allows ($first on: languages, workspaces, script LIKE patterns, inline jobs too, and the
    jobs it refused): the queue row's job is read alongside, for these claims alone."""
    n = first
    return ("FROM queue q JOIN jobs jj ON jj.id = q.job_id", f"""
          AND (${n}::text[] IS NULL OR jj.language = ANY(${n}::text[]))
          AND (${n + 1}::text[] IS NULL OR jj.workspace = ANY(${n + 1}::text[]))
          AND CASE WHEN jj.script_path IS NULL THEN ${n + 3}::bool
                   ELSE ${n + 2}::text[] IS NULL OR jj.script_path LIKE ANY(${n + 2}::text[])
              END
          AND q.job_id <> ALL(${n + 4}::bigint[])""")


# The uncapped claim's LIMIT is written into the statement as a number, one statement per
# count of slots up to LITERAL_LIMITS, so that PostgreSQL may keep one plan of it per
# connection and count (a generic plan, which it takes from the sixth run on when it costs no
# more than planning anew; it does once the queue's statistics show a backlog, where claims
# come back to back). Given as a parameter, cardinality($2), the LIMIT made the generic plan
# assume a tenth of the queue (a hash of every queued row for the DELETE), so PostgreSQL
# planned every claim anew: 0.64 ms of planning against 0.75 ms of execution per claim in a
# direct workers' drain (docs/performance.md). More slots than that (one claim for many
# agents) keep the parameter, as do claims with a local policy (their NULL filters fold away
# in plans of their own, so PostgreSQL plans those each time whatever the LIMIT).
LITERAL_LIMITS = 32
CLAIM_JOBS = _claim_jobs()
CLAIM_JOBS_FILTERED = _claim_jobs(*_filtered(7))
_CLAIM_JOBS_FOR = {n: _claim_jobs(limit=str(n)) for n in range(1, LITERAL_LIMITS + 1)}


def claim_statement(slots: int) -> str:
    """The uncapped claim without a local policy for `slots` slots: its LIMIT a number when
    there are few enough."""
    return _CLAIM_JOBS_FOR.get(slots, CLAIM_JOBS)


CLAIM_JOBS_CAPPED = _claim_jobs_capped()
CLAIM_JOBS_CAPPED_FILTERED = _claim_jobs_capped(*_filtered(8))


class ClaimedRow(msgspec.Struct, frozen=True):
    """A job as a claim leased it (the columns CLAIM_JOBS and CLAIM_JOBS_CAPPED return)."""

    id: int
    workspace: str
    language: str
    content: str | None
    args: dict[str, Any] | None
    tag: str
    attempt: int
    timeout_s: float | None
    log_offset: int
    priority: int
    worker: str  # its holder's name
    holder_key: str | None  # its holder's token and session (None: a direct worker)
    lease_s: float | None  # its own lease, if it has one
    waited_s: float | None  # from due to claimed
    secrets: list[str] | None = None  # the names of the secrets it uses
    script_path: str | None = None
    script_version: int | None = None
    signature: dict[str, Any] | None = None  # who signed it (jobs.signature)
    traceparent: str | None = None  # the trace it is part of (docs/tracing.md)


@dataclass(frozen=True)
class ClaimFilter:
    """What a claim may lease besides its tags (None: any): an agent's local policy
    (AGENT_ALLOW_*) and the jobs it refused. Script globs are fnmatch-style (* and ? match
    any characters, / included)."""

    languages: tuple[str, ...] | None = None
    workspaces: tuple[str, ...] | None = None
    scripts: tuple[str, ...] | None = None
    inline: bool = True
    exclude: tuple[int, ...] = ()

    def args(self) -> list[Any]:
        def listed(values: tuple[str, ...] | None) -> list[str] | None:
            return list(values) if values is not None else None

        patterns = [_like(g) for g in self.scripts] if self.scripts is not None else None
        return [listed(self.languages), listed(self.workspaces), patterns, self.inline,
                list(self.exclude)]


def _like(glob: str) -> str:
    """A glob of * and ? (what ClaimPolicy allows) as a LIKE pattern."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


CLAIM_LOCK_ID = 0x7A6772756F  # serialises capped claims of every process
CAPPED_LOOKAHEAD = 500
# Every lease is extended by this one step, for direct workers and agents alike (its two
# callers below and in agents.py): a job named in `held` (id, attempt, holder, key, n) by its
# holder's name and key (NULL for a direct worker) while it runs gets its own lease (else $4
# seconds) from now and needs no acknowledgement any more. Returns the entries (n) extended.
EXTENDED = """extended AS (
    UPDATE jobs j SET lease_expires_at = now() + make_interval(
                          secs => coalesce(j.lease_s, $4::float8)),
                      ack_by = NULL
    FROM held h
    WHERE j.id = h.id AND j.attempt = h.attempt AND j.worker = h.holder
      AND j.holder_key IS NOT DISTINCT FROM h.key AND j.status = 'running'
    RETURNING h.n, j.cancel_requested
)"""
# A direct worker's heartbeat: its leases ($1, $2 as held by $3 with key $5), and its record.
EXTEND_LEASES = f"""
WITH held AS (
    SELECT h.id, h.attempt, $3::text AS holder, $5::text AS key, h.n
    FROM unnest($1::bigint[], $2::int[]) WITH ORDINALITY AS h(id, attempt, n)
), {EXTENDED}, w AS (
    UPDATE workers SET last_seen = now(), active_count = cardinality($1::bigint[]) WHERE name = $3
)
SELECT h.id, e.n IS NULL AS lost, coalesce(e.cancel_requested, false) AS cancel
FROM held h LEFT JOIN extended e ON e.n = h.n"""
# Offsets ($5) count what the writer sent (`log_received`); what is stored stops at the cap
# ($8 characters), where the truncation marker ($9) is written once. The chunk's marks ($12,
# flat triples, shared/loglines.py) go in the same row; cut at the cap, they keep the lines
# begun before it, and the marker's line is marked as the holder's own (stream code $13).
APPEND_LOGS = """
WITH cur AS (
    SELECT id, log_size, log_truncated FROM jobs
    WHERE id = $1 AND attempt = $2 AND worker = $3 AND status = 'running' AND log_received = $5
      AND holder_key IS NOT DISTINCT FROM $10
      AND ($6::text[] IS NULL OR tag = ANY($6::text[]))
      AND ($7::text IS NULL OR workspace = $7)
    FOR UPDATE
), piece AS (
    SELECT id, log_size AS off, log_truncated AS was, log_size + length($4) > $8 AS over,
           CASE WHEN log_truncated THEN ''
                WHEN log_size + length($4) <= $8 THEN $4
                ELSE left($4, greatest($8 - log_size, 0)::int) || $9 END AS data,
           CASE WHEN log_truncated OR $12::int8[] IS NULL THEN NULL
                WHEN log_size + length($4) <= $8 THEN $12::int8[]
                ELSE array(SELECT v FROM unnest($12::int8[]) WITH ORDINALITY AS m(v, i)
                           WHERE ($12::int8[])[((i - 1) / 3 * 3 + 1)::int] < $8 - log_size
                           ORDER BY i)
                     || ARRAY[greatest($8 - log_size, 0) + 1,
                              (extract(epoch FROM clock_timestamp()) * 1000)::int8, $13]::int8[]
           END AS marks
    FROM cur
), j AS (
    UPDATE jobs SET log_received = log_received + $11,
                    log_size = log_size + length(piece.data),
                    log_truncated = piece.was OR piece.over, ack_by = NULL
    FROM piece WHERE jobs.id = piece.id RETURNING jobs.id
), ins AS (
    INSERT INTO job_logs (job_id, off, data, marks)
    SELECT id, off, data, marks FROM piece WHERE data <> ''
)
SELECT piece.over AND NOT piece.was AS truncated_now FROM j JOIN piece ON piece.id = j.id"""
LOG_STATE = "SELECT status, attempt, worker, holder_key, log_received FROM jobs WHERE id = $1"
HOLDER_FOR_KEY = "SELECT worker FROM jobs WHERE id = $1 AND holder_key = $2"
COMPLETION_STATE = """
SELECT status, attempt, worker, holder_key, result, attempts -> -1 AS recorded
FROM jobs WHERE id = $1"""
QUEUE_DEAD_ROWS = "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'queue'::regclass"
VACUUM_QUEUE = "VACUUM (SKIP_LOCKED) queue"  # no arguments: sent as a simple query
# The end of a statement whose CTE `j` updated jobs: those now queued go back in the queue,
# and those that ended are announced (GET /jobs/{id}?wait_s= listens for it).
_REQUEUED = f"""
    RETURNING jobs.id, jobs.status, coalesce(jobs.pin_tag, jobs.tag) AS tag, jobs.priority,
              jobs.run_at, jobs.concurrency_key, jobs.concurrency_limit
), q AS (
    INSERT INTO queue (job_id, tag, priority, run_at, concurrency_key, concurrency_limit)
    SELECT id, tag, priority, run_at, concurrency_key, concurrency_limit
    FROM j WHERE status = 'queued'
)
SELECT id, status, CASE WHEN status <> 'queued' THEN pg_notify('{DONE_CHANNEL}', id::text) END
FROM j"""
EXPIRE_LEASES = """
WITH expired AS (
    SELECT j.id FROM running r JOIN jobs j ON j.id = r.job_id
    WHERE r.lease_expires_at < now() AND j.status = 'running' AND j.lease_expires_at < now()
    ORDER BY r.lease_expires_at LIMIT 1000 FOR UPDATE OF j SKIP LOCKED
), j AS (
    UPDATE jobs SET
        status = CASE WHEN cancel_requested THEN 'cancelled'
                      WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
        error = jsonb_build_object('kind', 'lease_expired', 'message',
                                   'lease expired: ' || coalesce(worker, '?')
                                   || ' stopped heartbeating during attempt ' || attempt),
        attempts = attempts || jsonb_build_object(
            'attempt', attempt, 'worker', worker, 'started_at', started_at,
            'finished_at', now(), 'status', 'failed', 'error', jsonb_build_object(
                'kind', 'lease_expired', 'message', 'the lease expired')),
        run_at = now(), lease_expires_at = NULL, ack_by = NULL, worker = NULL,
        holder_key = NULL,
        finished_at = CASE WHEN attempt < max_attempts AND NOT cancel_requested
                           THEN NULL ELSE now() END
    FROM expired WHERE jobs.id = expired.id
""" + _REQUEUED
# Claims no agent acknowledged in time (their answer was lost on the way): back to the
# queue without using an attempt, as a release; a cancel requested meanwhile ends them.
# After max_attempts such returns the job is treated as its holder lost (an attempt used,
# failed when none is left): a job that kills each agent before it can answer must end.
RELEASE_UNACKED = """
WITH unacked AS (
    SELECT j.id, j.cancel_requested AS cancel, j.handouts_lost >= j.max_attempts AS spent,
           j.attempt < j.max_attempts AS more
    FROM running r JOIN jobs j ON j.id = r.job_id
    WHERE r.ack_by < now() AND j.ack_by < now() AND j.status = 'running'
    ORDER BY r.ack_by LIMIT 1000 FOR UPDATE OF j SKIP LOCKED
), j AS (
    UPDATE jobs SET
        status = CASE WHEN u.cancel THEN 'cancelled'
                      WHEN u.spent AND NOT u.more THEN 'failed' ELSE 'queued' END,
        attempt = CASE WHEN u.cancel OR u.spent THEN attempt ELSE attempt - 1 END,
        handouts_lost = handouts_lost + 1,
        error = CASE WHEN u.cancel THEN '{"kind": "cancelled", "message": "cancelled"}'::jsonb
                     WHEN u.spent THEN jsonb_build_object(
                         'kind', 'lost_worker', 'message',
                         'handed to agents ' || handouts_lost + 1 || ' times, and none '
                         || 'acknowledged it (was each one lost as the job started?)')
                     ELSE error END,
        attempts = CASE WHEN u.spent THEN attempts || jsonb_build_object(
                            'attempt', attempt, 'worker', worker, 'started_at', started_at,
                            'finished_at', now(), 'status', 'failed', 'error',
                            jsonb_build_object('kind', 'lost_worker', 'message',
                                               'the agent never acknowledged the job'))
                        ELSE attempts END,
        finished_at = CASE WHEN u.cancel OR (u.spent AND NOT u.more) THEN now() END,
        started_at = CASE WHEN u.cancel OR u.spent THEN started_at END,
        lease_expires_at = NULL, ack_by = NULL, run_at = now(), worker = NULL, holder_key = NULL
    FROM unacked u WHERE jobs.id = u.id
""" + _REQUEUED
REGISTER_WORKER = """
INSERT INTO workers (name, kind, grp, tags, ip, version, verify)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, grp = EXCLUDED.grp, tags = EXCLUDED.tags,
    ip = EXCLUDED.ip, version = EXCLUDED.version, connected_at = now(), last_seen = now(),
    active_count = 0, stopped_at = NULL, stop_reason = NULL, verify = EXCLUDED.verify"""
NEXT_RUN_AT = """
SELECT extract(epoch FROM min(run_at) - now())
FROM queue WHERE tag = ANY($1::text[]) AND run_at > now()"""

# The dispatcher's safety net: for each tag, the seconds from now to its first queued job's
# run_at (<= 0: a job is due), NULL when none is queued. One index probe per tag.
NEXT_RUN_AT_BY_TAG = """
SELECT t.tag, extract(epoch FROM (SELECT min(q.run_at) FROM queue q WHERE q.tag = t.tag)
                                 - now())::float8 AS next_s
FROM unnest($1::text[]) AS t(tag)"""

RELEASE_JOBS = """
WITH held AS (
    SELECT * FROM unnest($1::bigint[], $2::int[]) AS h(id, attempt)
), j AS (
    UPDATE jobs SET status = 'queued', attempt = jobs.attempt - 1, lease_expires_at = NULL,
                    ack_by = NULL, worker = NULL, holder_key = NULL, started_at = NULL,
                    run_at = now()
    FROM held h
    WHERE jobs.id = h.id AND jobs.attempt = h.attempt AND jobs.worker = $3
      AND jobs.status = 'running' AND NOT jobs.cancel_requested
      AND jobs.holder_key IS NOT DISTINCT FROM $5
      AND ($4::text[] IS NULL OR jobs.tag = ANY($4::text[]))
    RETURNING jobs.id, coalesce(jobs.pin_tag, jobs.tag) AS tag, jobs.priority, jobs.run_at,
              jobs.concurrency_key, jobs.concurrency_limit
)
INSERT INTO queue (job_id, tag, priority, run_at, concurrency_key, concurrency_limit)
SELECT id, tag, priority, run_at, concurrency_key, concurrency_limit FROM j
RETURNING job_id"""

# A submitted job leased at once to a claim waiting idle for its tag (the dispatcher's
# insert_job), with what the claim's UPDATE above writes (keep the two alike): attempt 1 to
# holder $18 with key $19, acknowledged within $21 s, started as it is created. No queue row,
# so no NOTIFY: nothing else may claim it. Answers the job as created and as leased.
INSERT_JOB_LEASED = JOBS_INPUT + f"""
INSERT INTO jobs (workspace, script_path, script_version, language, content, args, tag,
                  priority, run_at, timeout_s, max_attempts, concurrency_key, concurrency_limit,
                  lease_s, secrets, signature, traceparent,
                  status, attempt, worker, holder_key, started_at, inline, lease_expires_at,
                  ack_by)
SELECT $11, script_path, script_version, language, content, args, tag, priority,
       coalesce(run_at, now()), timeout_s, max_attempts, concurrency_key, concurrency_limit,
       lease_s, string_to_array(secrets, ','), signature, traceparent,
       'running', 1, $18, $19, now(), false,
       now() + make_interval(secs => coalesce(lease_s, $20::float8)),
       now() + make_interval(secs => $21::float8)
FROM input
RETURNING {JOB_COLUMNS}, log_received AS log_offset, holder_key, traceparent,
          extract(epoch FROM now() - run_at)::float8 AS waited_s"""

# The agents that would not run a job, and why (at most 50 kept): shown with the job.
RECORD_REFUSALS = """
UPDATE jobs SET refusals = coalesce(refusals, '[]'::jsonb) || jsonb_build_array(
    jsonb_build_object('worker', $1::text, 'kind', r.kind, 'reason', r.reason, 'at', now()))
FROM unnest($2::bigint[], $3::text[], $4::text[]) AS r(id, kind, reason)
WHERE jobs.id = r.id AND coalesce(jsonb_array_length(refusals), 0) < 50"""

CAPS_REFRESH_S = 0.5


class Leases(StoreBase):
    _completer: Completer | None = None  # outcomes are written in batches (completions.py)
    _caps: Any = None
    _caps_read_at = float("-inf")

    async def claim_jobs(
        self, holder: str, tags: Sequence[str], limit: int, lease_s: float,
        *, inline: bool = False,
    ) -> list[ClaimedRow]:
        return await self.claim_for_slots(tags, [holder] * limit, lease_s, inline=inline)

    async def claim_for_slots(
        self, tags: Sequence[str], slots: Sequence[str], lease_s: float, *, inline: bool = False,
        keys: Sequence[str | None] | None = None, acks: Sequence[float | None] | None = None,
        only: ClaimFilter | None = None,
    ) -> list[ClaimedRow]:
        """Lease up to len(slots) jobs, job i to holder slots[i] with key keys[i] (None: a
        direct worker); each job names its holder and key.

        `inline`: the claimer runs jobs inside a server process (task_inline_max_concurrent).
        `acks[i]`: slot i's holder must acknowledge its job within that many seconds (an
        agent, whose claim answer can be lost on the way), or the job goes back to the queue
        (release_unacked); None: no acknowledgement (a direct worker). `only`: an agent's local
        policy and the jobs it refused: nothing else is leased."""
        args = (list(tags), list(slots), lease_s, inline)
        key_list = list(keys) if keys is not None else [None] * len(slots)
        ack_list = list(acks) if acks is not None else [None] * len(slots)
        filtered = only.args() if only is not None else []
        if await self._caps_apply(inline):
            async with translated_errors(), self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK_ID)
                rows = await conn.fetch(
                    CLAIM_JOBS_CAPPED_FILTERED if only else CLAIM_JOBS_CAPPED, *args,
                    CAPPED_LOOKAHEAD, key_list, ack_list, *filtered)
        else:
            rows = await self.fetch(CLAIM_JOBS_FILTERED if only else claim_statement(len(slots)),
                                    *args, key_list, ack_list, *filtered)
        jobs = [ClaimedRow(**r) for r in rows]
        jobs.sort(key=lambda j: (-j.priority, j.id))
        return jobs

    async def insert_job_leased(
        self, workspace: str, job: NewJob, holder: str, key: str, ack_s: float | None,
        lease_s: float,
    ) -> tuple[JobRecord, ClaimedRow | None]:
        """Insert `job` leased to `holder` (its key `key`) as a claim would lease it, in one
        statement: the job as created, and as leased. Where a cap may apply, the job is
        queued instead (None leased), for the capped claim to weigh."""
        columns = (*_columns([job]), workspace, *_late_columns([job]))
        if await self._caps_apply(False):
            row = await self.fetchrow(INSERT_JOB_ROW, *columns)
            assert row is not None
            return JobRecord.from_row(row), None
        row = await self.fetchrow(INSERT_JOB_LEASED, *columns, holder, key, lease_s, ack_s)
        assert row is not None
        return (JobRecord(**{f: row[f] for f in JobRecord.__struct_fields__}),
                ClaimedRow(**{f: row[f] for f in ClaimedRow.__struct_fields__}))

    def forget_caps(self) -> None:
        """Caps changed or a capped job was queued: re-read the cap state at the next claim."""
        self._caps_read_at = float("-inf")

    def caps_may_apply(self) -> bool:
        """Whether the last cap state read says a cap may hold jobs back (no query)."""
        caps = self._caps
        return caps is not None and bool(caps["total"] or caps["inline"] or caps["scripts"])

    async def _caps_apply(self, inline: bool) -> bool:
        """Whether a cap may apply, re-read at most every CAPS_REFRESH_S. A stale answer is
        safe: the fast path takes no capped job and nothing under a global cap."""
        now = time.monotonic()
        if now - self._caps_read_at > CAPS_REFRESH_S:
            self._caps = await self.fetchrow(CAPS_STATE)
            self._caps_read_at = now
        caps = self._caps
        assert caps is not None
        return bool(caps["total"] or (inline and caps["inline"]) or caps["scripts"])

    async def extend_leases(
        self, holder: str, running: Sequence[tuple[int, int]], lease_s: float,
        *, key: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """Extend the leases `holder` names; returns (ids to cancel, ids lost)."""
        ids = [job_id for job_id, _ in running]
        attempts = [attempt for _, attempt in running]
        rows = await self.fetch(EXTEND_LEASES, ids, attempts, holder, lease_s, key)
        cancel = [r["id"] for r in rows if r["cancel"]]
        lost = [r["id"] for r in rows if r["lost"]]
        return cancel, lost

    async def append_logs(
        self, holder: str, job_id: int, attempt: int, offset: int, data: str,
        *, tags: Sequence[str] | None = None, workspace: str | None = None,
        max_chars: int = 10 << 20, key: str | None = None,
        on_truncated: Callable[[], None] | None = None, stored: str | None = None,
        marks: Sequence[Mark] | None = None,
    ) -> int:
        """Append at `offset` (characters sent so far); a resent chunk is a no-op.
        `stored`: what to store instead of `data` (it redacted), which still counts as
        `data`'s length received. `marks`: the lines beginning in what is stored (None:
        the holder does not mark lines).

        `tags` and `workspace`, when given, must match the job's (agents act only on jobs
        of their token's tags). Past `max_chars` stored, the rest is dropped with a marker,
        the job is marked `log_truncated`, and `on_truncated` is called (once per job)."""
        tag_list = list(tags) if tags is not None else None
        if data:
            marker = f"\n[tagrun: log truncated here: it reached {max_chars} characters]\n"
            truncated = await self.fetchval(APPEND_LOGS, job_id, attempt, holder,
                                            storable_text(data if stored is None else stored),
                                            offset, tag_list, workspace, max_chars, marker,
                                            key, len(data),
                                            None if marks is None else flat(marks),
                                            CODES[TAGRUN])
            if truncated is not None:
                if truncated and on_truncated is not None:
                    on_truncated()
                return offset + len(data)
        state = await self.fetchrow(LOG_STATE, job_id)
        if state is None or _holder_of(state) != (attempt, holder, key):
            raise LeaseLost()
        if offset + len(data) <= state["log_received"]:
            return int(state["log_received"])
        if state["status"] != "running":
            raise LeaseLost()
        raise Conflict(
            f"log offset {offset} does not follow the log so far ({state['log_received']})",
            code="offset_mismatch",
        )

    @staticmethod
    def completion(
        holder: str, job_id: int, attempt: int, status: str,
        result: Any, error: dict[str, Any] | None, retry_backoff_s: float,
        *, tags: Sequence[str] | None = None, workspace: str | None = None,
        key: str | None = None, retryable: bool = True, log_chunks_lost: int = 0,
        signature_check: dict[str, Any] | None = None,
    ) -> Outcome:
        """An attempt's outcome as complete_jobs takes it: text PostgreSQL refuses is made
        storable (storable.py)."""
        return Outcome(job_id, attempt, holder, status, storable_json(result),
                       storable_json(error), retry_backoff_s,
                       list(tags) if tags is not None else None, workspace, key, retryable,
                       log_chunks_lost, signature_check)

    async def complete_job(
        self, holder: str, job_id: int, attempt: int, status: str,
        result: Any, error: dict[str, Any] | None, retry_backoff_s: float,
        *, tags: Sequence[str] | None = None, workspace: str | None = None,
        key: str | None = None, retryable: bool = True, log_chunks_lost: int = 0,
        signature_check: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an attempt's outcome, and how many of its log chunks were lost. Returns the
        job's new `status` ('queued': a retry is scheduled) with id, tag, attempt, worker,
        run_at and duration_ms; `repeat` is True when this very outcome had already been
        recorded (nothing changed). A failure that is not `retryable` (it could never
        succeed: a refused result) ends the job now.

        Text PostgreSQL refuses is stored as storable.py says; a result that still cannot
        be stored (NaN, say) raises InvalidInput, and the caller fails the attempt with
        that reason. Another outcome for an attempt already recorded: CompletionConflict."""
        outcome = self.completion(
            holder, job_id, attempt, status, result, error, retry_backoff_s, tags=tags,
            workspace=workspace, key=key, retryable=retryable,
            log_chunks_lost=log_chunks_lost, signature_check=signature_check)
        return await self._recorded(outcome, await self._completions().write(outcome))

    async def complete_jobs(self, outcomes: Sequence[Outcome]
                            ) -> list[dict[str, Any] | TagrunError]:
        """complete_job for each outcome (made by `completion`), written together and awaited
        at once: each one's answer, or the TagrunError it alone raised, in order. Any other
        error (the database out of reach) is raised."""
        answers: list[dict[str, Any] | TagrunError] = []
        for outcome, row in zip(outcomes, await self._completions().write_many(outcomes),
                                strict=True):
            try:
                if isinstance(row, BaseException):
                    raise row
                answers.append(await self._recorded(outcome, row))
            except TagrunError as exc:
                answers.append(exc)
        return answers

    def _completions(self) -> Completer:
        if self._completer is None:
            self._completer = Completer(self.pool, DONE_CHANNEL)
        return self._completer

    async def _recorded(self, outcome: Outcome, row: asyncpg.Record | None) -> dict[str, Any]:
        """What complete_job answers for `outcome`, written as COMPLETE_JOBS's `row` (None:
        its fencing did not match, so it is a repeat or no longer the holder's)."""
        if row is not None:
            recorded = {k: v for k, v in row.items() if k not in ("n", "notified")}
            return {**recorded, "run_at": iso(row["run_at"]), "repeat": False}
        # Expiry and release clear `worker`, so only the holder's own recorded completion
        # matches here: a repeat, answered the same way and changing nothing.
        job_id, attempt, status, error = (outcome.job_id, outcome.attempt, outcome.status,
                                          outcome.error)
        state = await self.fetchrow(COMPLETION_STATE, job_id)
        if state is None or _holder_of(state) != (attempt, outcome.holder, outcome.key) \
                or state["status"] == "running":
            raise LeaseLost()
        recorded = state["recorded"] or {}
        same = (recorded.get("status"), recorded.get("error")) == (status, error) \
            and (status != "succeeded" or state["result"] == outcome.result)
        if not same:
            raise CompletionConflict(
                f"attempt {attempt} of job {job_id} is already recorded as "
                f"{recorded.get('status')}, with another outcome than this one")
        return {"id": job_id, "status": str(state["status"]), "repeat": True}

    async def vacuum_queue(self, min_dead_rows: int) -> int | None:
        """Vacuum the claim table once `min_dead_rows` claimed rows are left in it.

        Every claim deletes rows from `queue`, and a claim scans its index past every dead
        row until a vacuum removes them: 100,000 of them cut one-at-a-time claims from ~530/s
        to ~140/s. Autovacuum looks at most once a minute; this keeps the table small between
        its visits. Returns the dead rows vacuumed away, None when there were too few."""
        dead = await self.fetchval(QUEUE_DEAD_ROWS)
        if dead is None or dead < min_dead_rows:
            return None
        await self.execute(VACUUM_QUEUE)  # a replica already vacuuming it: skipped
        return int(dead)

    async def expire_leases(self) -> list[tuple[int, str]]:
        rows = await self.fetch(EXPIRE_LEASES)
        return [(r["id"], r["status"]) for r in rows]

    async def release_unacked(self) -> list[tuple[int, str]]:
        """Requeue (or end, if cancelled) claims whose agent did not acknowledge them in
        time; (id, new status) for each."""
        rows = await self.fetch(RELEASE_UNACKED)
        return [(r["id"], r["status"]) for r in rows]

    async def register_worker(
        self, name: str, kind: str, group: str, tags: Sequence[str], ip: str | None,
        version: str, verify: dict[str, Any] | None = None,
    ) -> None:
        """`verify`: how it checks signatures ({mode, keys}), None: it checks none."""
        await self.execute(REGISTER_WORKER, name, kind, group, list(tags), ip, version, verify)

    async def record_refusals(self, holder: str,
                              refusals: Sequence[tuple[int, str, str]]) -> None:
        """`holder` would not run these jobs ((id, kind, reason)): the jobs show it."""
        if refusals:
            await self.execute(RECORD_REFUSALS, holder, [r[0] for r in refusals],
                               [r[1] for r in refusals], [r[2] for r in refusals])

    async def seconds_to_next_due(self, tags: Sequence[str]) -> float | None:
        value = await self.fetchval(NEXT_RUN_AT, list(tags))
        return None if value is None else float(value)

    async def seconds_to_next_by_tag(self, tags: Sequence[str]) -> dict[str, float]:
        """For each of `tags` with a queued job: seconds until its first is due (<= 0: due)."""
        rows = await self.fetch(NEXT_RUN_AT_BY_TAG, list(tags))
        return {r["tag"]: r["next_s"] for r in rows if r["next_s"] is not None}

    async def release_jobs(
        self, holder: str, held: Sequence[tuple[int, int]], tags: Sequence[str] | None = None,
        *, key: str | None = None,
    ) -> list[int]:
        """Give jobs back without using an attempt (graceful shutdown)."""
        rows = await self.fetch(RELEASE_JOBS, [i for i, _ in held], [a for _, a in held], holder,
                                list(tags) if tags is not None else None, key)
        return [r["job_id"] for r in rows]

    async def holder_for_key(self, job_id: int, key: str) -> str:
        """The name of the agent holding `job_id` under holder key `key`; else LeaseLost."""
        holder = await self.fetchval(HOLDER_FOR_KEY, job_id, key)
        if holder is None:
            raise LeaseLost()
        return str(holder)


def _holder_of(state: Any) -> tuple[int, str | None, str | None]:
    return state["attempt"], state["worker"], state["holder_key"]
