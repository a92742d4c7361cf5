"""A scratch database for a benchmark: the embedded PostgreSQL, or TAGRUN_BENCH_DATABASE_URL."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from tagrun.server.embedded import EmbeddedPostgres
from tagrun.server.store import migrate


def _with_db(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    admin = os.environ.get("TAGRUN_BENCH_DATABASE_URL")
    embedded, tmp = None, None
    if not admin:
        tmp = Path(tempfile.mkdtemp(prefix="tagrun-bench-"))
        embedded = EmbeddedPostgres(tmp)
        admin = embedded.start()
    name = f"tagrun_bench_{os.getpid()}"

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def setup() -> None:
        await admin_sql(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_with_db(admin, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    await setup()
    try:
        yield _with_db(admin, name)
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if embedded is not None:
            embedded.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
