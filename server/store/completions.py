"""Attempt outcomes, recorded together: one statement (one commit) for every completion that
arrives while the previous one is being written, whoever holds the jobs.

A completion is written at once when none is in flight, so a lone job waits for nothing;
those that come while one is in flight leave together when it returns (group commit, no
timer). Each job is still fenced on its own (its attempt, holder and key), gets its own
answer, and raises its own error: a batch the database refuses as a whole is written again
one job at a time, so one bad outcome costs only its own job.

Before, each completion was its own statement that also updated its holder's `workers` row,
so the completions of one holder queued on that row lock, one commit each: a direct worker
with 8 slots finished at most one job per disk flush (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from tagrun.server.errors import TagrunError
from tagrun.server.store._base import DATABASE_UNAVAILABLE, translated_errors

# The JSON values ($5, $6, $8, $13) travel as text, each one encoded here: a jsonb[] parameter
# would take a list value (a job's result [1, 2], an agent's tags) as more array elements.
# Outcome i of the batch: job $1[i] at attempt $2[i], held by $3[i] under key $10[i] (NULL: a
# direct worker), becomes $4[i] with result $5[i] and error $6[i]; a retryable ($11[i])
# failure with attempts left is queued again after a backoff from $7[i]. $8[i] (a JSON array
# of tags, NULL: any) and $9[i] (NULL: any) limit it to an agent token's jobs. $12[i] log
# chunks were lost; $13[i] is how its signature was checked. One NOTIFY $14 names every job
# that ended, comma-separated (MAX_BATCH ids stay well under PostgreSQL's 8000-byte payload):
# each listening process wakes once per batch, not once per job.
#
# Rows are locked in id order (no deadlock between batches). The holders' `workers` rows are
# updated once each, with the run of failures the batch's outcomes make in order (quarantine):
# a failure adds to it, a success ends it, a cancellation leaves it as it is.
COMPLETE_JOBS = """
WITH input AS (
    SELECT i.id, i.attempt, i.holder, i.status, i.result::jsonb AS result,
           i.error::jsonb AS error, i.backoff, i.tags::jsonb AS tags, i.workspace, i.key,
           i.retryable, i.lost, i.checked::jsonb AS checked, i.n
    FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::float8[], $8::text[], $9::text[], $10::text[], $11::bool[], $12::int[],
                $13::text[])
        WITH ORDINALITY AS i(id, attempt, holder, status, result, error, backoff, tags,
                             workspace, key, retryable, lost, checked, n)
), cur AS (
    SELECT i.n, i.id, i.holder, i.status AS outcome, i.result AS new_result,
           i.error AS new_error, i.backoff, i.lost, i.checked,
           (i.status = 'failed' AND i.retryable AND jj.attempt < jj.max_attempts
            AND NOT jj.cancel_requested) AS again
    FROM input i JOIN jobs jj ON jj.id = i.id
    WHERE jj.attempt = i.attempt AND jj.worker = i.holder AND jj.status = 'running'
      AND jj.holder_key IS NOT DISTINCT FROM i.key
      AND (i.tags IS NULL OR i.tags ? jj.tag)
      AND (i.workspace IS NULL OR jj.workspace = i.workspace)
    ORDER BY jj.id
    FOR UPDATE OF jj
), j AS (
    UPDATE jobs SET
        status = CASE WHEN c.again THEN 'queued' ELSE c.outcome END,
        result = c.new_result, error = c.new_error,
        run_at = CASE WHEN c.again
                      THEN now() + make_interval(secs => least(
                          600.0::float8,
                          c.backoff * power(2.0::float8, (jobs.attempt - 1)::float8)
                      ) * (0.5 + random() / 2))
                      ELSE jobs.run_at END,
        finished_at = CASE WHEN c.again THEN NULL ELSE now() END,
        lease_expires_at = NULL, ack_by = NULL, cancel_requested = false,
        log_chunks_lost = jobs.log_chunks_lost + c.lost,
        signature_check = coalesce(c.checked, jobs.signature_check),
        attempts = jobs.attempts || (jsonb_build_object(
            'attempt', jobs.attempt, 'worker', jobs.worker, 'started_at', jobs.started_at,
            'finished_at', now(), 'status', c.outcome, 'error', c.new_error)
            || CASE WHEN c.lost > 0 THEN jsonb_build_object('log_chunks_lost', c.lost)
                    ELSE '{}'::jsonb END)
    FROM cur c WHERE jobs.id = c.id
    RETURNING c.n, c.holder, c.outcome, jobs.id, jobs.status, jobs.tag,
              jobs.priority, jobs.run_at, jobs.concurrency_key, jobs.concurrency_limit,
              jobs.attempt, jobs.worker, jobs.started_at, jobs.workspace, jobs.traceparent,
              jobs.pin_tag, jobs.parent_id,
              CASE WHEN c.outcome = 'failed'
                   THEN coalesce(jobs.script_path, 'inline ' || md5(jobs.content)) END AS what
), q AS (
    INSERT INTO queue (job_id, tag, priority, run_at, concurrency_key, concurrency_limit)
    SELECT id, coalesce(pin_tag, tag), priority, run_at, concurrency_key, concurrency_limit
    FROM j WHERE status = 'queued'
), ok AS (
    SELECT holder, count(*) AS done, max(n) FILTER (WHERE outcome = 'succeeded') AS last_ok
    FROM j GROUP BY holder
), per AS (
    SELECT ok.holder, ok.done, ok.last_ok,
           count(*) FILTER (WHERE j.outcome = 'failed'
                            AND j.n > coalesce(ok.last_ok, 0)) AS fails,
           coalesce(array_agg(DISTINCT j.what) FILTER (WHERE j.outcome = 'failed'
                              AND j.n > coalesce(ok.last_ok, 0)), '{}') AS whats
    FROM ok JOIN j ON j.holder = ok.holder
    GROUP BY ok.holder, ok.done, ok.last_ok
    ORDER BY ok.holder
), w AS (
    UPDATE workers SET jobs_executed = jobs_executed + p.done,
        fail_streak = CASE WHEN p.last_ok IS NULL THEN fail_streak ELSE 0 END + p.fails,
        fail_since = CASE WHEN p.fails = 0
                          THEN CASE WHEN p.last_ok IS NULL THEN fail_since END
                          WHEN p.last_ok IS NULL THEN coalesce(fail_since, now())
                          ELSE now() END,
        -- the first two scripts of the run (the rule needs two)
        fail_scripts = (
            SELECT coalesce(array_agg(s ORDER BY o), '{}') FROM (
                SELECT s, min(o) AS o
                FROM unnest(CASE WHEN p.last_ok IS NULL THEN fail_scripts ELSE '{}' END
                            || p.whats) WITH ORDINALITY AS u(s, o)
                GROUP BY s ORDER BY min(o) LIMIT 2) first_two)
    FROM per p WHERE workers.name = p.holder
    RETURNING workers.name, workers.fail_streak, cardinality(workers.fail_scripts) AS scripts,
              workers.fail_since, workers.kind = 'agent' AS agent,
              (workers.quarantined_at IS NOT NULL AND (workers.quarantined_until IS NULL
                                                       OR workers.quarantined_until > now()))
              AS quarantined
)
SELECT j.n, j.id, j.status, j.tag, j.attempt, j.worker, j.run_at, j.workspace, j.traceparent,
       j.parent_id, w.fail_streak, w.scripts AS fail_scripts, w.fail_since,
       coalesce(w.agent AND NOT w.quarantined, false) AS may_quarantine,
       round(extract(epoch FROM now() - j.started_at) * 1000) AS duration_ms,
       (SELECT CASE WHEN count(*) > 0 THEN pg_notify($14, string_agg(id::text, ',')) END
        FROM j WHERE status <> 'queued') AS notified
FROM j LEFT JOIN w ON w.name = j.holder"""

MAX_BATCH = 200  # outcomes per statement
# A batch refused for what is in it (a value the database will not take, a deadlock): each
# outcome is written alone, so that the error reaches only its own.
REFUSED = (TagrunError, asyncpg.PostgresError)


class Outcome(msgspec.Struct, frozen=True):
    """One attempt's outcome, as Leases.complete_job takes it (already storable)."""

    job_id: int
    attempt: int
    holder: str
    status: str
    result: Any
    error: dict[str, Any] | None
    retry_backoff_s: float
    tags: list[str] | None
    workspace: str | None
    key: str | None
    retryable: bool
    log_chunks_lost: int
    signature_check: dict[str, Any] | None


@dataclass(eq=False)
class _Pending:
    outcome: Outcome
    answer: asyncio.Future[asyncpg.Record | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Completer:
    """Writes outcomes in batches over `pool`; `write` returns the job's row of
    COMPLETE_JOBS, or None when its fencing did not match (the caller finds out why)."""

    def __init__(self, pool: asyncpg.Pool, channel: str) -> None:
        self._pool = pool
        self._channel = channel
        self._queue: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None

    async def write(self, outcome: Outcome) -> asyncpg.Record | None:
        # A caller that goes away (a cancelled request) cancels only its own answer: its
        # outcome is in the batch already and is written all the same, and the others'
        # answers are theirs (no shield needed, which cost a future per outcome).
        return await self._queued([outcome])[0].answer

    async def write_many(self, outcomes: Sequence[Outcome]
                         ) -> list[asyncpg.Record | None | BaseException]:
        """`write` for each outcome, awaited together (one wait, not a task each): each
        one's row, None, or the error it alone raised, in order."""
        if not outcomes:
            return []
        answers = [p.answer for p in self._queued(outcomes)]
        return await asyncio.gather(*answers, return_exceptions=True)

    def _queued(self, outcomes: Sequence[Outcome]) -> list[_Pending]:
        pending = [_Pending(outcome) for outcome in outcomes]
        self._queue.extend(pending)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send(),
                                                                   name="completions")
        return pending

    async def _send(self) -> None:
        await asyncio.sleep(0)  # what finishes in this same turn of the loop goes along
        while self._queue:
            batch = self._take()
            try:
                rows = await self._write(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the callers
                if len(batch) > 1 and isinstance(exc, REFUSED) \
                        and not isinstance(exc, DATABASE_UNAVAILABLE):
                    await self._one_by_one(batch)  # only the bad one fails
                    continue
                for one in batch:
                    _fail(one, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                for n, one in enumerate(batch, start=1):
                    _settle(one, rows.get(n))

    async def _one_by_one(self, batch: Sequence[_Pending]) -> None:
        for one in batch:
            try:
                rows = await self._write([one])
            except Exception as exc:  # noqa: BLE001 - handed to its caller
                _fail(one, exc)
            else:
                _settle(one, rows.get(1))

    def _take(self) -> list[_Pending]:
        """The next batch: up to MAX_BATCH outcomes, at most one per job (a second outcome
        of a job already in the batch waits for the next, so each is fenced in turn)."""
        batch: list[_Pending] = []
        rest: list[_Pending] = []
        ids: set[int] = set()
        for pending in self._queue:
            if len(batch) < MAX_BATCH and pending.outcome.job_id not in ids:
                ids.add(pending.outcome.job_id)
                batch.append(pending)
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    async def _write(self, batch: Sequence[_Pending]) -> dict[int, asyncpg.Record]:
        outs = [p.outcome for p in batch]
        async with translated_errors():
            rows = await self._pool.fetch(
                COMPLETE_JOBS, [o.job_id for o in outs], [o.attempt for o in outs],
                [o.holder for o in outs], [o.status for o in outs],
                [_json(o.result) for o in outs], [_json(o.error) for o in outs],
                [o.retry_backoff_s for o in outs], [_json(o.tags) for o in outs],
                [o.workspace for o in outs], [o.key for o in outs],
                [o.retryable for o in outs], [o.log_chunks_lost for o in outs],
                [_json(o.signature_check) for o in outs], self._channel)
        return {int(r["n"]): r for r in rows}


def _json(value: Any) -> str | None:
    """A JSON value as the text of a jsonb (None: SQL NULL, as asyncpg's codec has it)."""
    return None if value is None else json.dumps(value)


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.answer.done():
        pending.answer.set_exception(exc)


def _settle(pending: _Pending, row: asyncpg.Record | None) -> None:
    if not pending.answer.done():
        pending.answer.set_result(row)
