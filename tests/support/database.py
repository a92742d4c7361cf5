"""A real PostgreSQL for the suite: the embedded one by default, or TAGRUN_TEST_DATABASE_URL.

The schema is migrated once into a template database; each test that needs isolation gets
its own `CREATE DATABASE ... TEMPLATE` copy, which takes milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from tagrun.server.store import migrate

TEMPLATE = f"tagrun_test_template_{os.getpid()}"
_counter = itertools.count(1)


def query(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one statement, on a connection of its own (for tests that run no event loop)."""
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()
    return asyncio.run(fetch())


# The sets of jobs by state kept beside `jobs` (migrations 0028, 0029; the queue is older):
# each must hold exactly the jobs of its state, whatever a test did. One statement, so one
# snapshot.
_FINAL = "('succeeded', 'failed', 'cancelled')"
_SETS = {
    "queue": ("SELECT id FROM jobs WHERE status = 'queued'", "SELECT job_id FROM queue"),
    "running": ("SELECT id, worker, concurrency_key, inline, broadcast, lease_expires_at, ack_by "
                "FROM jobs WHERE status = 'running'",
                "SELECT job_id, worker, concurrency_key, inline, broadcast, lease_expires_at, "
                "ack_by FROM running"),
    "ended": (f"SELECT id, workspace, tag, status, worker, finished_at FROM jobs "
              f"WHERE status IN {_FINAL}",
              "SELECT job_id, workspace, tag, status, worker, finished_at FROM ended"),
}
STATE_SETS = "\nUNION ALL\n".join(
    f"SELECT '{name}' AS name, "
    f"ARRAY(SELECT x::text FROM ({jobs} EXCEPT ALL {kept}) x) AS missing, "
    f"ARRAY(SELECT x::text FROM ({kept} EXCEPT ALL {jobs}) x) AS extra"
    for name, (jobs, kept) in _SETS.items())


def state_sets_disagree(dsn: str) -> list[str]:
    """How the state sets differ from `jobs` in this database (empty: they agree, or the
    database is gone or was never migrated)."""
    async def check() -> list[str]:
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError):
            return []
        try:
            if await conn.fetchval("SELECT to_regclass('ended') IS NULL"):
                return []
            return [f"{r['name']}: missing {r['missing'][:5]}, extra {r['extra'][:5]}"
                    for r in await conn.fetch(STATE_SETS) if r["missing"] or r["extra"]]
        finally:
            await conn.close()
    return asyncio.run(check())


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "dbname"]
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", urlencode(query), ""))


class DatabaseFactory:
    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.created: list[str] = []

    def _admin(self, sql: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.admin_dsn)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        asyncio.run(go())

    def create_template(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        self._admin(f'CREATE DATABASE "{TEMPLATE}"')

        async def go() -> None:
            conn = await asyncpg.connect(with_database(self.admin_dsn, TEMPLATE))
            try:
                await migrate(conn)
            finally:
                await conn.close()
        asyncio.run(go())
        self.created.append(TEMPLATE)

    def new(self, *, migrated: bool = True) -> str:
        name = f"tagrun_test_{os.getpid()}_{next(_counter)}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{TEMPLATE}"' if migrated else ""))
        self.created.append(name)
        return with_database(self.admin_dsn, name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_embedded(base: Path) -> tuple[str, object]:
    from tagrun.server.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(base)
    return embedded.start(), embedded
