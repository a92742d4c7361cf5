"""Jobs as users see them: submit, read, list, logs, cancel, retry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from tagrun.server.errors import Conflict, NotFound
from tagrun.server.job_states import FINAL_STATES
from tagrun.server.store._base import (
    CANCEL_CHANNEL,
    DONE_CHANNEL,
    StoreBase,
    translated_errors,
)
from tagrun.server.store.settings import INLINE_CAP, TOTAL_CAP, setting_int
from tagrun.shared.loglines import Chunk, Mark, last_mark, page, split_lines

ANALYZE_QUEUE = "ANALYZE queue"
ANALYZE_AFTER_BATCH = 500  # jobs queued in one statement
ANALYZE_EVERY_S = 5.0
# What a job is as the API and the UI show it (JobRecord's fields, in its order).
JOB_COLUMNS = """
    id, workspace, script_path, script_version, language, content, args, tag, priority, run_at,
    timeout_s, max_attempts, lease_s, secrets, signature, signature_check, refusals,
    concurrency_limit, concurrency_key, status, attempt, worker, cancel_requested, result, error,
    created_at, started_at, finished_at, attempts, log_truncated, log_chunks_lost, broadcast,
    parent_id, pin_tag"""
# The jobs of a submit, one row each ($11: their workspace).
JOBS_INPUT = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                         $7::int[], $8::timestamptz[], $9::float8[], $10::int[], $12::text[],
                         $13::int[], $14::float8[], $15::text[], $16::jsonb[], $17::text[])
        WITH ORDINALITY AS t(script_path, script_version, language, content, args, tag,
                             priority, run_at, timeout_s, max_attempts, concurrency_key,
                             concurrency_limit, lease_s, secrets, signature, traceparent, ord)
)"""
INSERT_JOBS = JOBS_INPUT + """, ins AS (
    INSERT INTO jobs (workspace, script_path, script_version, language, content, args, tag,
                      priority, run_at, timeout_s, max_attempts, concurrency_key,
                      concurrency_limit, lease_s, secrets, signature, traceparent)
    SELECT $11, script_path, script_version, language, content, args, tag, priority,
           coalesce(run_at, now()), timeout_s, max_attempts, concurrency_key, concurrency_limit,
           lease_s, string_to_array(secrets, ','), signature, traceparent
    FROM input ORDER BY ord
    RETURNING id, tag, priority, run_at, concurrency_key, concurrency_limit
), q AS (
    INSERT INTO queue (job_id, tag, priority, run_at, concurrency_key, concurrency_limit)
    SELECT id, tag, priority, run_at, concurrency_key, concurrency_limit FROM ins
)
SELECT id FROM ins ORDER BY id"""
# The same for one job, answering it whole (a submit answers with the job it made).
INSERT_JOB_ROW = INSERT_JOBS.replace(
    "RETURNING id, tag, priority, run_at, concurrency_key, concurrency_limit",
    f"RETURNING {JOB_COLUMNS}").replace("SELECT id FROM ins ORDER BY id", "SELECT * FROM ins")
# Takes the key, or finds it taken within 24 h (a concurrent request with the same key
# waits on the unique index until the first commits, then finds its job).
TAKE_IDEMPOTENCY_KEY = """
INSERT INTO idempotency_keys (workspace, key) VALUES ($1, $2)
ON CONFLICT (workspace, key) DO UPDATE SET created_at = now(), job_id = NULL
    WHERE idempotency_keys.created_at < now() - interval '24 hours'
RETURNING key"""
SET_IDEMPOTENT_JOB = """
UPDATE idempotency_keys SET job_id = $3 WHERE workspace = $1 AND key = $2"""
FIND_IDEMPOTENT_JOB = """
SELECT job_id FROM idempotency_keys WHERE workspace = $1 AND key = $2"""
PRUNE_IDEMPOTENCY_KEYS = """
DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'"""
QUEUED_COUNT = "SELECT count(*) FROM queue"
GET_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = $1 AND id = $2"
# What a copy of a job is made of (Run again): what it runs, with what, and its signature.
JOB_TO_COPY = """
SELECT script_path, script_version, language, content, args, tag, priority, timeout_s,
       max_attempts, concurrency_key, concurrency_limit, lease_s, secrets, signature
FROM jobs WHERE workspace = $1 AND id = $2"""
LIST_JOBS = f"""
SELECT {JOB_COLUMNS} FROM jobs
WHERE workspace = $1 AND id < $2 AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR tag = $4) AND ($5::text IS NULL OR script_path = $5)
ORDER BY id DESC LIMIT $6"""


def _list_from(state_set: str) -> str:
    """LIST_JOBS for the jobs of one state, read newest first from the set that holds them
    (`jobs` has no index on status: docs/performance.md, item 17)."""
    where = ("s.workspace = $1 AND s.status = $3" if state_set == "ended"
             else "j.workspace = $1 AND j.status = $3")
    return f"""
SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY(ARRAY(
    SELECT j.id FROM {state_set} s JOIN jobs j ON j.id = s.job_id
    WHERE {where} AND s.job_id < $2 AND ($4::text IS NULL OR j.tag = $4)
      AND ($5::text IS NULL OR j.script_path = $5)
    ORDER BY s.job_id DESC LIMIT $6))
ORDER BY id DESC"""


# Most jobs succeed: those are found quickly in id order, as all jobs are; a job of any other
# state may be far down that order, so it is read from its own state's set.
LIST_JOBS_IN = {"queued": _list_from("queue"), "running": _list_from("running"),
                "failed": _list_from("ended"), "cancelled": _list_from("ended")}
# What holds queued jobs back besides workers: the caps and the jobs running under them
# (RUNNING_BY_KEY: under each of the concurrency keys $1).
CAPS_AND_LOAD = f"""
SELECT {setting_int(TOTAL_CAP)} AS total_cap, {setting_int(INLINE_CAP)} AS inline_cap,
       count(*) AS running, count(*) FILTER (WHERE inline) AS running_inline
FROM running WHERE NOT broadcast"""
RUNNING_BY_KEY = """
SELECT concurrency_key, count(*) AS n FROM running
WHERE concurrency_key = ANY($1::text[]) GROUP BY concurrency_key"""
JOB_LOG_STATE = "SELECT status, log_size FROM jobs WHERE workspace = $1 AND id = $2"
LOG_PAGE_CHUNKS = 200
READ_LOGS = f"""
SELECT off, data, marks FROM job_logs WHERE job_id = $1 AND off + length(data) > $2
ORDER BY off LIMIT {LOG_PAGE_CHUNKS}"""
# The latest marks before $2 (within $3 characters): a page that begins in a line that an
# earlier chunk began finds that line's time and stream there (shared/loglines.py).
LINE_BEFORE = """
SELECT off, marks FROM job_logs
WHERE job_id = $1 AND off < $2 AND off >= $2 - $3 AND cardinality(marks) > 0
ORDER BY off DESC LIMIT 1"""
LINE_LOOKBACK_CHARS = 1 << 20
# Announced on $3 (DONE_CHANNEL) when it ends at once, else on $4 (CANCEL_CHANNEL); answers the
# job as this statement left it.
CANCEL_JOB = """
WITH dequeued AS (
    DELETE FROM queue WHERE job_id = $2
      AND EXISTS (SELECT 1 FROM jobs WHERE id = $2 AND workspace = $1 AND status = 'queued')
    RETURNING job_id
),
updated AS (
    UPDATE jobs SET
        status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
        cancel_requested = (status = 'running'),
        finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
        error = CASE WHEN status = 'queued'
                     THEN '{"kind": "cancelled", "message": "cancelled before it ran"}'::jsonb
                     ELSE error END
    WHERE workspace = $1 AND id = $2 AND status IN ('queued', 'running')
    RETURNING """ + JOB_COLUMNS + """
)
SELECT updated.*, CASE WHEN status = 'cancelled' THEN pg_notify($3, id::text)
                       ELSE pg_notify($4, id::text) END AS notified
FROM updated"""
RETRY_JOB = """
WITH updated AS (
    UPDATE jobs SET status = 'queued', attempt = 0, worker = NULL, holder_key = NULL,
                    result = NULL, error = NULL, run_at = now(), started_at = NULL,
                    finished_at = NULL, cancel_requested = false
    WHERE workspace = $1 AND id = $2 AND status IN ('failed', 'cancelled') AND NOT broadcast
    RETURNING id, coalesce(pin_tag, tag) AS tag, priority, run_at, concurrency_key,
              concurrency_limit
)
INSERT INTO queue (job_id, tag, priority, run_at, concurrency_key, concurrency_limit)
SELECT id, tag, priority, run_at, concurrency_key, concurrency_limit FROM updated
RETURNING job_id"""


@dataclass(frozen=True)
class NewJob:
    script_path: str | None
    script_version: int | None
    language: str
    content: str
    args: dict[str, Any]
    tag: str
    priority: int
    run_at: datetime | None
    timeout_s: float | None
    max_attempts: int
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    lease_s: float | None = None  # None: the server's TAGRUN_LEASE_S
    secrets: tuple[str, ...] = ()  # the names of the secrets it uses (never a value)
    # Who signed it ({key_id, sig, unsigned_args, source}), for holders that verify.
    signature: dict[str, Any] | None = None
    traceparent: str | None = None  # its submit span's W3C trace context (docs/tracing.md)


class JobRecord(msgspec.Struct, frozen=True):
    """A job as stored (the columns JOB_COLUMNS names); services/jobs.py's job_view shows it."""

    id: int
    workspace: str
    script_path: str | None
    script_version: int | None
    language: str
    content: str
    args: dict[str, Any]
    tag: str
    priority: int
    run_at: datetime
    timeout_s: float | None
    max_attempts: int
    lease_s: float | None  # its own lease (None: the server's TAGRUN_LEASE_S)
    secrets: list[str] | None  # the names of the secrets it uses
    signature: dict[str, Any] | None  # who signed it ({key_id, sig, unsigned_args, source})
    signature_check: dict[str, Any] | None  # what a verifying holder found
    refusals: list[dict[str, Any]] | None  # the holders that refused it, and why
    concurrency_limit: int | None
    concurrency_key: str | None
    status: str
    attempt: int
    worker: str | None
    cancel_requested: bool
    result: Any  # whatever the job returned (JSON)
    error: dict[str, Any] | None  # {kind, message}
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Its ended attempts, as jsonb keeps them (times in PostgreSQL's text).
    attempts: list[dict[str, Any]]
    log_truncated: bool
    log_chunks_lost: int
    broadcast: bool  # a broadcast's parent
    parent_id: int | None  # a broadcast's child: its parent
    pin_tag: str | None  # a broadcast's child: "@<jti>/<agent>", the agent it is pinned to

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> JobRecord:
        return cls(**row)


def _columns(jobs: Sequence[NewJob]) -> tuple[list[Any], ...]:
    return (
        [j.script_path for j in jobs], [j.script_version for j in jobs],
        [j.language for j in jobs], [j.content for j in jobs], [j.args for j in jobs],
        [j.tag for j in jobs], [j.priority for j in jobs], [j.run_at for j in jobs],
        [j.timeout_s for j in jobs], [j.max_attempts for j in jobs],
    )


def _late_columns(jobs: Sequence[NewJob]) -> tuple[list[Any], ...]:
    """The columns added after the first ten ($12 on)."""
    return ([j.concurrency_key for j in jobs], [j.concurrency_limit for j in jobs],
            [j.lease_s for j in jobs], [",".join(j.secrets) or None for j in jobs],
            [j.signature for j in jobs], [j.traceparent for j in jobs])


class Jobs(StoreBase):
    _analyzed_at = float("-inf")

    async def insert_jobs(self, workspace: str, jobs: Sequence[NewJob]) -> list[int]:
        rows = await self.fetch(INSERT_JOBS, *_columns(jobs), workspace, *_late_columns(jobs))
        if len(jobs) >= ANALYZE_AFTER_BATCH:
            await self._analyze_queue()
        return [r["id"] for r in rows]

    async def insert_job(self, workspace: str, job: NewJob) -> JobRecord:
        """Insert one job; the job as created (as get_job reads it), in one round trip."""
        row = await self.fetchrow(INSERT_JOB_ROW, *_columns([job]), workspace,
                                  *_late_columns([job]))
        assert row is not None
        return JobRecord.from_row(row)

    async def _analyze_queue(self) -> None:
        """A large batch was queued: tell the planner (docs/performance.md). Until autovacuum
        looks (up to a minute later), it still believes the queue as small as it last saw
        it, and plans claims as a scan of every queued row of the tag and a sort (3.4 ms per
        claim of 8 from 10,000 queued jobs) instead of reading the first 8 in index order
        (0.4 ms). At most once per ANALYZE_EVERY_S in a process."""
        now = time.monotonic()
        if now - self._analyzed_at < ANALYZE_EVERY_S:
            return
        self._analyzed_at = now
        await self.execute(ANALYZE_QUEUE)

    async def insert_job_once(self, workspace: str, job: NewJob, key: str) -> tuple[int, bool]:
        """Insert `job` unless `key` was used in this workspace within 24 h; then return
        that first job instead. Returns (job id, created)."""
        async with translated_errors(), self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(TAKE_IDEMPOTENCY_KEY, workspace, key) is None:
                existing = await conn.fetchval(FIND_IDEMPOTENT_JOB, workspace, key)
                if existing is not None:
                    return int(existing), False
            [row] = await conn.fetch(INSERT_JOBS, *_columns([job]), workspace,
                                    *_late_columns([job]))
            await conn.execute(SET_IDEMPOTENT_JOB, workspace, key, row["id"])
            return int(row["id"]), True

    async def prune_idempotency_keys(self) -> int:
        deleted = await self.execute(PRUNE_IDEMPOTENCY_KEYS)
        return int(deleted.split()[-1])

    async def queued_count(self) -> int:
        return int(await self.fetchval(QUEUED_COUNT))

    async def get_job(self, workspace: str, job_id: int) -> JobRecord:
        row = await self.fetchrow(GET_JOB, workspace, job_id)
        if row is None:
            raise NotFound(f"no job {job_id} in workspace {workspace!r}", code="job_not_found")
        return JobRecord.from_row(row)

    async def job_to_copy(self, workspace: str, job_id: int) -> NewJob:
        """Job `job_id` as a new job to insert: the same script version or content, args,
        tag, priority, limits, secrets and signature, to run now."""
        row = await self.fetchrow(JOB_TO_COPY, workspace, job_id)
        if row is None:
            raise NotFound(f"no job {job_id} in workspace {workspace!r}", code="job_not_found")
        return NewJob(
            script_path=row["script_path"], script_version=row["script_version"],
            language=row["language"], content=row["content"] or "", args=row["args"] or {},
            tag=row["tag"], priority=row["priority"], run_at=None, timeout_s=row["timeout_s"],
            max_attempts=row["max_attempts"], concurrency_key=row["concurrency_key"],
            concurrency_limit=row["concurrency_limit"], lease_s=row["lease_s"],
            secrets=tuple(row["secrets"] or ()), signature=row["signature"])

    async def caps_and_load(self, keys: Sequence[str]) -> dict[str, Any]:
        """The caps (0: none), the running jobs under them, and the running jobs of each
        concurrency key of `keys`."""
        row = await self.fetchrow(CAPS_AND_LOAD)
        assert row is not None
        by_key = {r["concurrency_key"]: int(r["n"])
                  for r in await self.fetch(RUNNING_BY_KEY, list(keys))} if keys else {}
        return {"total_cap": int(row["total_cap"]), "inline_cap": int(row["inline_cap"]),
                "running": int(row["running"]), "running_inline": int(row["running_inline"]),
                "by_key": by_key}

    async def list_jobs(
        self, workspace: str, *, before: int, status: str | None, tag: str | None,
        script: str | None, limit: int,
    ) -> list[JobRecord]:
        statement = LIST_JOBS_IN.get(status or "", LIST_JOBS)
        rows = await self.fetch(statement, workspace, before, status, tag, script, limit)
        return [JobRecord.from_row(r) for r in rows]

    async def read_logs(self, workspace: str, job_id: int, offset: int) -> dict[str, Any]:
        state = await self.fetchrow(JOB_LOG_STATE, workspace, job_id)
        if state is None:
            raise NotFound(f"no job {job_id} in workspace {workspace!r}", code="job_not_found")
        rows = await self.fetch(READ_LOGS, job_id, offset)
        chunks: list[Chunk] = []
        end = offset
        for row in rows:
            if row["off"] > end:  # a gap never happens: appends are contiguous by construction
                break
            chunks.append(Chunk(row["off"], row["data"], row["marks"]))
            end = row["off"] + len(row["data"])
        done = state["status"] in FINAL_STATES and end >= state["log_size"]
        text, starts = page(chunks, offset)
        first = None  # the mark of the line under way at `offset`, for the lines from there
        if text and offset > 0 and chunks[0].marks is not None:
            first = last_mark(chunks[:1], offset)
            if first is None and not (starts and starts[0][0] == 0):
                # In the part of a chunk that continues a line begun before it.
                first = await self._line_before(job_id, chunks[0].off)
        lines, lines_end = split_lines(text, starts, offset, first=first, ended=done,
                                       full=len(rows) == LOG_PAGE_CHUNKS)
        return {"data": text, "offset": end, "done": done, "lines": lines,
                "lines_end": lines_end}

    async def _line_before(self, job_id: int, before: int) -> Mark | None:
        row = await self.fetchrow(LINE_BEFORE, job_id, before, LINE_LOOKBACK_CHARS)
        return last_mark([Chunk(row["off"], "", row["marks"])], before) if row else None

    async def cancel_job(self, workspace: str, job_id: int) -> JobRecord:
        row = await self.fetchrow(CANCEL_JOB, workspace, job_id, DONE_CHANNEL, CANCEL_CHANNEL)
        if row is None:
            job = await self.get_job(workspace, job_id)
            raise Conflict(f"job {job_id} is already {job.status}", code="job_finished")
        # The job as the cancel left it: read again, a running job's holder may already have
        # ended it (cancelled, its request cleared) and the answer would not say it was asked.
        return JobRecord(**{k: v for k, v in row.items() if k != "notified"})

    async def retry_job(self, workspace: str, job_id: int) -> JobRecord:
        if await self.fetchval(RETRY_JOB, workspace, job_id) is None:
            job = await self.get_job(workspace, job_id)
            raise Conflict(
                f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried",
                code="job_not_retryable",
            )
        return await self.get_job(workspace, job_id)
