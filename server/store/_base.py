"""The connection pool, and the translation of driver errors into domain errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from tagrun.server.errors import Conflict, InvalidInput, NotFound

# Errors from the database or the way to it, as opposed to the domain errors translated_errors
# raises: the connection failed or timed out, the server is restarting, or a statement failed
# for a reason of the database's. Every loop that must outlive the database retries these.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Of those, the database out of reach (down, restarting, full): the API answers 503 with
# Retry-After, which clients (agents included) retry.
DATABASE_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                        asyncpg.InterfaceError, asyncpg.OperatorInterventionError,
                        asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
# Worth waiting for at start: a database still starting, restarting or recovering (refused
# connections, "the database system is starting up", too many clients). Anything else (a wrong
# password, an unknown database) is the user's to fix and stops the start at once.
DATABASE_STARTING = (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)

# The NOTIFY channels: listener.py listens on them, the statements notify on them (and the
# queue's trigger, migrations 0001 and 0008, on JOBS_CHANNEL).
JOBS_CHANNEL = "tagrun_jobs"  # a tag's queue has new jobs; payload: the tag
DONE_CHANNEL = "tagrun_done"  # jobs ended; payload: their ids, comma-separated
CANCEL_CHANNEL = "tagrun_cancel"  # a running job is to be cancelled; payload: its id
CAPPED_CHANNEL = "tagrun_capped"  # the caps changed: every replica re-reads them
FLEET_CHANNEL = "tagrun_fleet"  # an agent or group was paused, resumed or asked to drain


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(dsn: str, *, size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, init=_init_connection, command_timeout=60,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset, run as a connection goes back: nothing. asyncpg's default sends a
    reset query (RESET ALL, UNLISTEN *, ...) on every release, a round trip per statement;
    tagrun keeps no session state on pooled connections (settings, LISTEN and advisory
    locks held past a statement live on connections of their own or are released in a
    `finally`), and asyncpg still rolls back a transaction left open."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Routes never see asyncpg types: constraint violations become domain errors."""
    try:
        yield
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFound(f"a referenced object does not exist ({exc.constraint_name})") from None
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"already exists ({exc.constraint_name})") from None
    except (asyncpg.DataError, asyncpg.CheckViolationError) as exc:
        raise InvalidInput(f"value refused by the database: {exc.message}") from None


class StoreBase:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with translated_errors():
            return await self.pool.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with translated_errors():
            return await self.pool.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with translated_errors():
            return await self.pool.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with translated_errors():
            return await self.pool.execute(sql, *args)
