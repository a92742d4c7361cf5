"""Running and ended jobs are found through narrow sets beside `jobs` (migrations 0028, 0029),
so that `jobs` is indexed only on what never changes after a submit: a claim and a
completion then write no index entries (HOT updates), which is most of what they cost
PostgreSQL (docs/performance.md, item 17). Every test's database is also checked, after the
test, for sets that hold exactly the jobs of their state (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg

from tagrun.server.store import NewJob, Store, create_pool
from tagrun.server.store.migrate import migrate, migration_files
from tests.support.database import DatabaseFactory, query, state_sets_disagree

# What a job keeps from its submit to its deletion: an index over anything else turns every
# claim, heartbeat, log write or completion into a write to every index of `jobs`.
NEVER_CHANGED = {"id", "workspace", "tag", "parent_id", "script_path", "created_at",
                 "idempotency_key", "concurrency_key", "broadcast"}
WORDS = {"is", "not", "null", "and", "or", "true", "false"}


def job(tag: str = "t") -> NewJob:
    return NewJob(None, None, "identity", "", {}, tag, 0, None, None, 3)


def test_jobs_has_no_index_over_a_column_a_claim_or_a_completion_changes(
        database_url: str) -> None:
    rows = query(database_url, """
        SELECT c.relname AS name,
               ARRAY(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) AS keys,
               coalesce(pg_get_expr(i.indexprs, i.indrelid), '') AS exprs,
               coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS pred
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'jobs'::regclass""")
    assert {r["name"] for r in rows} >= {"jobs_pkey", "jobs_workspace_id"}
    for r in rows:
        used = set(r["keys"]) | {w.lower() for w in re.findall(r"[A-Za-z_]+",
                                                                r["exprs"] + r["pred"])}
        assert used - WORDS <= NEVER_CHANGED, (r["name"], used - WORDS - NEVER_CHANGED)


async def _tuple_counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                  "WHERE relid = 'jobs'::regclass")
        assert row is not None
        return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])
    finally:
        await conn.close()


def test_a_claim_and_a_completion_leave_the_indexes_of_jobs_alone(database_url: str) -> None:
    """Five jobs claimed and completed one at a time: ten updates of `jobs`, all HOT. The
    counts reach pg_stat_user_tables when the store's connections close."""
    async def go() -> tuple[int, int]:
        pool = await create_pool(database_url, size=1)
        try:
            store = Store(pool)
            for _ in range(5):
                [job_id] = await store.insert_jobs("default", [job()])
                [claimed] = await store.claim_jobs("w", ["t"], 1, 60)
                assert claimed.id == job_id
                done = await store.complete_job("w", job_id, 1, "succeeded", {"ok": 1}, None, 1)
                assert done["status"] == "succeeded"
        finally:
            await pool.close()
        deadline = time.monotonic() + 30
        while (counts := await _tuple_counts(database_url))[0] < 10 \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return counts
    updates, hot = asyncio.run(go())
    assert updates == 10 and hot == updates, (updates, hot)


def test_an_upgraded_database_finds_its_running_and_ended_jobs(
        databases: DatabaseFactory) -> None:
    """Jobs in every state, written before migrations 0028 and 0029, are in the sets after
    them: the running one counts against the caps and is its holder's current job, and the
    ended ones are listed by outcome and as their holder's recent jobs."""
    url = databases.new(migrated=False)

    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE tagrun_migrations (version integer PRIMARY KEY, "
                               "name text NOT NULL, applied_at timestamptz DEFAULT now())")
            for version, name, sql in migration_files():
                if version < 28:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO tagrun_migrations (version, name) "
                                       "VALUES ($1, $2)", version, name)
            await conn.execute("""
                INSERT INTO jobs (workspace, language, content, tag, max_attempts, status,
                                  attempt, worker, started_at, finished_at, lease_expires_at)
                VALUES ('default', 'identity', '', 't', 3, 'running', 1, 'w1', now(), NULL,
                        now() + interval '1 minute'),
                       ('default', 'identity', '', 't', 3, 'succeeded', 1, 'w1', now(), now(),
                        NULL),
                       ('default', 'identity', '', 't', 3, 'failed', 3, 'w1', now(), now(),
                        NULL),
                       ('default', 'identity', '', 't', 3, 'cancelled', 0, NULL, NULL, now(),
                        NULL)""")
            assert await migrate(conn) == ["0028_running.sql", "0029_ended.sql"]
        finally:
            await conn.close()
        pool = await create_pool(url, size=2)
        try:
            store = Store(pool)
            ids = {j.status: j.id for j in await store.list_jobs(
                "default", before=1 << 62, status=None, tag=None, script=None, limit=10)}
            for status in ("running", "succeeded", "failed", "cancelled"):
                listed = await store.list_jobs("default", before=1 << 62, status=status,
                                               tag=None, script=None, limit=10)
                assert [j.id for j in listed] == [ids[status]], status
            assert (await store.caps_and_load([]))["running"] == 1
            current, recent = await store.worker_jobs("w1")
            assert [j["id"] for j in current] == [ids["running"]]
            assert sorted(j["id"] for j in recent) == [ids["succeeded"], ids["failed"]]
        finally:
            await pool.close()
    asyncio.run(go())
    assert state_sets_disagree(url) == []
