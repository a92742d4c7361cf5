#!/usr/bin/env python3
"""Procrastinate peer benchmark: bulk enqueue, drain throughput, dispatch latency.

Run by scripts/bench/compare.py, or directly in its environment (build/bench-venv):

    build/bench-venv/bin/python scripts/bench/peers/procrastinate_bench.py run \
        --admin-url postgresql://user@127.0.0.1:PORT/postgres

Only Procrastinate's documented public API is used: ``procrastinate --app=... schema
--apply`` for the schema, ``Task.batch_defer_async`` / ``Task.defer_async`` to produce,
and ``App.run_worker_async(queues=..., concurrency=N)`` inside ``App.open_async()`` --
what ``procrastinate worker`` does -- to consume.

The App and its two tasks live in ``procrastinate_app.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import inspect
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import DRAIN, LATENCY  # noqa: E402

LIBRARY = "procrastinate"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, default=common.env_int("PEERS_PROC_CONCURRENCY", 10),
                   help="sub-workers per worker process (procrastinate worker --concurrency)")
    p.add_argument("--pool-size", type=int, default=common.env_int("PEERS_PROC_POOL_SIZE", 0),
                   help="psycopg pool min=max size per worker process; 0 = concurrency + 1 "
                        "(the docs' advice for short jobs)")


def worker_defaults() -> dict[str, Any]:
    from procrastinate.worker import Worker

    sig = inspect.signature(Worker.__init__)
    return {k: v.default for k, v in sig.parameters.items()
            if v.default is not inspect.Parameter.empty}


def pool_size(args: argparse.Namespace) -> int:
    return args.pool_size or args.concurrency + 1


class ProcrastinateAdapter:
    name = LIBRARY

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.db_url: str = args.db_url
        self.version = importlib.metadata.version("procrastinate")
        self._app: Any = None

    def settings(self) -> dict[str, Any]:
        d = worker_defaults()
        return {
            "worker_api": "async with app.open_async(): await app.run_worker_async("
                          "queues=[q], concurrency=N) (what `procrastinate worker` does)",
            "connector": "PsycopgConnector (psycopg 3 AsyncConnectionPool)",
            "concurrency": self.a.concurrency,
            "pool_min_size": pool_size(self.a),
            "pool_max_size": pool_size(self.a),
            "pool_note": "docs (Mind the size of your PostgreSQL pool): for short jobs the pool "
                         "should hold as many connections as the concurrency, plus one",
            "listen_notify": d["listen_notify"],
            "fetch_job_polling_interval_s": d["fetch_job_polling_interval"],
            "abort_job_polling_interval_s": d["abort_job_polling_interval"],
            "delete_jobs": str(d["delete_jobs"] or "never"),
            "event_loop": "asyncio (as `procrastinate worker` uses)",
            "producer": "Task.batch_defer_async(*kwargs) on the App with a default "
                        "PsycopgConnector",
            "enqueue_batch": self.a.enqueue_batch,
            "latency_enqueue": "Task.defer_async(i=seq) (one job per call)",
            "handler": "async task def handler(i: int) -> None; no-op apart from counting the call",
            "completed_means": "procrastinate_jobs.status = 'succeeded'",
            "worker_logging": "not configured (root WARNING); `procrastinate worker` defaults to "
                              "INFO, which would also print two lines per job",
        }

    def worker_argv(self, mode: str) -> list[str]:
        return [sys.executable, os.path.abspath(__file__), "worker", "--mode", mode,
                "--concurrency", str(self.a.concurrency), "--pool-size", str(pool_size(self.a))]

    async def install(self) -> dict[str, Any]:
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, PEERS_DB_URL=self.db_url,
                   PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
        exe = os.path.join(os.path.dirname(sys.executable), "procrastinate")
        cli = [exe] if os.path.exists(exe) else [sys.executable, "-m", "procrastinate"]
        return {"steps": [common.run_install_cmd(
            [*cli, "--app=procrastinate_app.app", "schema", "--apply"], env)]}

    async def open_producer(self) -> None:
        import procrastinate_app

        await procrastinate_app.app.open_async()
        self._app = procrastinate_app.app

    async def close_producer(self) -> None:
        if self._app is not None:
            await self._app.close_async()
            self._app = None

    async def enqueue_bulk(self, seqs: list[int]) -> None:
        import procrastinate_app

        await procrastinate_app.drain.batch_defer_async(*({"i": s} for s in seqs))

    async def enqueue_one(self, seq: int) -> None:
        import procrastinate_app

        await procrastinate_app.latency.defer_async(i=seq)

    async def completed(self, conn: Any, kind: str) -> int:
        return int(await conn.fetchval(
            "SELECT count(*) FROM procrastinate_jobs"
            " WHERE queue_name = $1 AND status = 'succeeded'",
            kind))

    async def last_completed_epoch(self, conn: Any, kind: str) -> float | None:
        v = await conn.fetchval(
            "SELECT extract(epoch FROM max(e.at))::float8 FROM procrastinate_events e"
            " JOIN procrastinate_jobs j ON j.id = e.job_id"
            " WHERE j.queue_name = $1 AND e.type = 'succeeded'", kind)
        return None if v is None else float(v)

    async def status_counts(self, conn: Any, kind: str) -> dict[str, Any]:
        rows = await conn.fetch(
            "SELECT status::text AS s, count(*) AS n FROM procrastinate_jobs"
            " WHERE queue_name = $1 GROUP BY 1", kind)
        return {"job_status": {r["s"]: r["n"] for r in rows}}

    async def extra_checks(self, conn: Any, kind: str, expected: int) -> dict[str, Any]:
        """Cross-check with the library's own API (JobManager.list_queues_async) and events."""
        errors: list[str] = []
        import procrastinate_app

        async with procrastinate_app.app.open_async() as app:
            queues = [q for q in await app.job_manager.list_queues_async(queue=kind)]
        out: dict[str, Any] = {"list_queues_api": queues}
        succeeded = sum(q["succeeded"] for q in queues)
        if succeeded != expected:
            errors.append(f"list_queues_async: {succeeded} succeeded for {expected} jobs")
        rows = await conn.fetch(
            "SELECT e.type::text AS t, count(*) AS n, count(DISTINCT e.job_id) AS jobs"
            " FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id"
            " WHERE j.queue_name = $1 GROUP BY 1", kind)
        events = {r["t"]: {"events": r["n"], "jobs": r["jobs"]} for r in rows}
        out["events"] = events
        started = events.get("started", {"events": 0})["events"]
        if started != expected:
            errors.append(f"{started} 'started' events for {expected} jobs")
        out["errors"] = errors
        return out


# ----------------------------------------------------------------------------- worker


async def _worker(args: argparse.Namespace) -> None:
    import procrastinate
    import procrastinate_app

    rep = procrastinate_app.REPORTER = common.Reporter(args.report_fd)
    size = pool_size(args)
    connector = procrastinate.PsycopgConnector(conninfo=args.db_url, min_size=size, max_size=size)
    queue = DRAIN if args.mode == "drain" else LATENCY
    with procrastinate_app.app.replace_connector(connector) as wapp:
        async with wapp.open_async():
            rep.ready()
            await rep.wait_go()
            reporter = asyncio.create_task(rep.periodic())
            try:
                # install_signal_handlers defaults to True: SIGINT/SIGTERM stop it gracefully.
                await wapp.run_worker_async(queues=[queue], concurrency=args.concurrency)
            finally:
                reporter.cancel()
                rep.final()


def worker(args: argparse.Namespace) -> None:
    common.run_loop(_worker(args), use_uvloop=False)


if __name__ == "__main__":
    common.run_cli(ProcrastinateAdapter, worker, add_args, LIBRARY)
