"""Schema migrations, applied at start under an advisory lock so replicas can start together."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger("tagrun.store")

# An arbitrary constant: the advisory lock that serialises migrations across processes.
MIGRATION_LOCK_ID = 0x7A6772756E

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS tagrun_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("tagrun.server.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> list[str]:
    """Apply every migration not yet applied; returns the names applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(_CREATE_TABLE)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM tagrun_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO tagrun_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("store.migrated", extra={"migration": name})
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now
