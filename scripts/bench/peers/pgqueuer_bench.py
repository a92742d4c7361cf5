#!/usr/bin/env python3
"""PgQueuer peer benchmark: bulk enqueue, drain throughput, dispatch latency.

Run by scripts/bench/compare.py, or directly in its environment (build/bench-venv):

    build/bench-venv/bin/python scripts/bench/peers/pgqueuer_bench.py run \
        --admin-url postgresql://user@127.0.0.1:PORT/postgres

Only PgQueuer's documented public API is used: ``pgq install`` / ``pgq autovac`` for the
schema, ``Queries.enqueue`` (list form = batch insert) to produce, and
``pgqueuer.run(factory, batch_size=...)`` -- the function behind ``pgq run`` -- with a
factory yielding ``PgQueuer(AsyncpgDriver(asyncpg.connect(...)))`` to consume.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import DRAIN, LATENCY  # noqa: E402

LIBRARY = "pgqueuer"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=common.env_int("PEERS_PGQ_BATCH_SIZE", 10),
                   help="jobs fetched per dequeue round trip (pgq run --batch-size; default 10)")
    p.add_argument("--autovac", type=int, default=common.env_int("PEERS_PGQ_AUTOVAC", 1),
                   help="1: run `pgq autovac` after install (the docs' production checklist)")


def run_defaults() -> dict[str, Any]:
    from pgqueuer import PgQueuer

    sig = inspect.signature(PgQueuer.run)
    return {k: v.default for k, v in sig.parameters.items()
            if v.default is not inspect.Parameter.empty}


def pgq_cli() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "pgq")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "pgqueuer"]


class PgqAdapter:
    name = LIBRARY

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.db_url: str = args.db_url
        self.version = importlib.metadata.version("pgqueuer")
        self.autovac_applied = False
        self.drain_ids: list[int] = []
        self._conn: Any = None
        self._q: Any = None
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self._Queries, self._Driver = Queries, AsyncpgDriver

    def settings(self) -> dict[str, Any]:
        d = run_defaults()
        loop = ("uvloop (as `pgq run` uses when installed)"
                if importlib.util.find_spec("uvloop") else "asyncio")
        return {
            "worker_api": "pgqueuer.run(factory, batch_size=N) (what `pgq run` calls); "
                          "factory yields PgQueuer(AsyncpgDriver(await asyncpg.connect()))",
            "worker_connection": "one asyncpg connection per worker process "
                                 "(docs: dedicated connection for the QueueManager)",
            "batch_size": self.a.batch_size,
            "max_concurrent_tasks": d.get("max_concurrent_tasks"),
            "dequeue_timeout_s": d["dequeue_timeout"].total_seconds(),
            "heartbeat_timeout_s": d["heartbeat_timeout"].total_seconds(),
            "log_aggregation_interval_s": d["log_aggregation_interval"].total_seconds(),
            "mode": str(d["mode"].name),
            "wakeup": "LISTEN/NOTIFY (built in, always on); polling fallback every dequeue_timeout",
            "event_loop": loop,
            "durability": "durable (pgq install default)",
            "autovac_applied": self.autovac_applied,
            "producer": "Queries(AsyncpgDriver(asyncpg.connect())).enqueue(list, list, list)",
            "enqueue_batch": self.a.enqueue_batch,
            "latency_enqueue": "Queries.enqueue(entrypoint, payload) (one job per call)",
            "handler": "async def handler(job: Job) -> None; no-op apart from counting the call",
            "completed_means": "pgqueuer_log row with status 'successful' for the job",
            "worker_logging": "not configured (root WARNING); `pgq run` sets INFO, but PgQueuer "
                              "logs per-job lines only at DEBUG, so no difference here",
        }

    def worker_argv(self, mode: str) -> list[str]:
        return [sys.executable, os.path.abspath(__file__), "worker", "--mode", mode,
                "--batch-size", str(self.a.batch_size)]

    async def install(self) -> dict[str, Any]:
        env = dict(os.environ, PGDSN=self.db_url)
        steps = [common.run_install_cmd([*pgq_cli(), "install"], env)]
        if self.a.autovac:
            steps.append(common.run_install_cmd([*pgq_cli(), "autovac"], env))
            self.autovac_applied = True
        return {"steps": steps}

    async def open_producer(self) -> None:
        import asyncpg

        self._conn = await asyncpg.connect(self.db_url)
        self._q = self._Queries(self._Driver(self._conn))

    async def close_producer(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def enqueue_bulk(self, seqs: list[int]) -> None:
        ids = await self._q.enqueue([DRAIN] * len(seqs), [str(s).encode() for s in seqs],
                                    [0] * len(seqs))
        self.drain_ids.extend(ids)

    async def enqueue_one(self, seq: int) -> None:
        await self._q.enqueue(LATENCY, str(seq).encode())

    def _tables(self, conn: Any) -> tuple[str, str]:
        s = self._Queries(self._Driver(conn)).qbe.settings
        return s.queue_table, s.queue_table_log

    async def completed(self, conn: Any, kind: str) -> int:
        _, log = self._tables(conn)
        return int(await conn.fetchval(
            f"SELECT count(DISTINCT job_id) FROM {log}"
            " WHERE entrypoint = $1 AND status = 'successful'",
            kind))

    async def last_completed_epoch(self, conn: Any, kind: str) -> float | None:
        _, log = self._tables(conn)
        v = await conn.fetchval(
            f"SELECT extract(epoch FROM max(created))::float8 FROM {log} "
            f"WHERE entrypoint = $1 AND status = 'successful'", kind)
        return None if v is None else float(v)

    async def status_counts(self, conn: Any, kind: str) -> dict[str, Any]:
        queue, log = self._tables(conn)
        latest = await conn.fetch(
            f"SELECT status::text AS s, count(*) AS n FROM ("
            f" SELECT DISTINCT ON (job_id) job_id, status FROM {log} WHERE entrypoint = $1"
            f" ORDER BY job_id, created DESC, id DESC) t GROUP BY 1", kind)
        rows = await conn.fetch(
            f"SELECT status::text AS s, count(*) AS n FROM {queue}"
            " WHERE entrypoint = $1 GROUP BY 1", kind)
        return {
            "latest_log_status": {r["s"]: r["n"] for r in latest},
            "rows_left_in_queue_table": {r["s"]: r["n"] for r in rows},
        }

    async def extra_checks(self, conn: Any, kind: str, expected: int) -> dict[str, Any]:
        """Cross-check with the library's own API: Queries.job_status / queue_size."""
        q = self._Queries(self._Driver(conn))
        errors: list[str] = []
        out: dict[str, Any] = {}
        if kind == DRAIN and self.drain_ids:
            statuses = Counter(str(s) for _, s in await q.job_status(self.drain_ids))
            out["job_status_api"] = dict(statuses)
            if statuses.get("successful", 0) != expected:
                errors.append(f"Queries.job_status: {dict(statuses)} for {expected} jobs")
        left = sum(x.count for x in await q.queue_size() if x.entrypoint == kind)
        out["queue_size_api_left"] = left
        if left:
            errors.append(f"Queries.queue_size: {left} {kind} rows still in the queue table")
        out["errors"] = errors
        return out


# ----------------------------------------------------------------------------- worker


async def _worker(args: argparse.Namespace) -> None:
    import asyncpg
    import pgqueuer
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    rep = common.Reporter(args.report_fd)
    conn = await asyncpg.connect(args.db_url)
    pgq = PgQueuer(AsyncpgDriver(conn))

    if args.mode == "drain":

        @pgq.entrypoint(DRAIN)
        async def drain(job: Job) -> None:
            rep.job(job.id)

    else:

        @pgq.entrypoint(LATENCY)
        async def latency(job: Job) -> None:
            t = common.mono()
            rep.started(int(job.payload or b"-1"), t)
            rep.job(job.id)

    @asynccontextmanager
    async def factory():  # type: ignore[no-untyped-def]
        yield pgq

    rep.ready()
    await rep.wait_go()
    reporter = asyncio.create_task(rep.periodic())
    try:
        # Installs SIGINT/SIGTERM handlers that stop the manager gracefully.
        await pgqueuer.run(factory, batch_size=args.batch_size)
    finally:
        reporter.cancel()
        rep.final()


def worker(args: argparse.Namespace) -> None:
    common.run_loop(_worker(args), use_uvloop=True)


if __name__ == "__main__":
    common.run_cli(PgqAdapter, worker, add_args, LIBRARY)
