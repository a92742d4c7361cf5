"""tagrun's drain, measured as the peers' harness measures pgqueuer's and procrastinate's.

Used by compare.py. One scratch database and one `tagrun start --mode server` per call:
--jobs `identity` jobs are queued under a paused tag (`POST /api/tags/{tag}/pause`, then
`POST /api/w/default/jobs/batch` in batches, as throughput.py submits them), ANALYZE and
CHECKPOINT run, the worker processes (direct workers or real `tagrun-agent`s) start and
wait idle, and the tag is resumed, like the peers' "GO" to workers already connected.
`drain_jobs_per_s` = jobs / (last finished_at - first started_at), database clock. The
first start rather than the resume: a resume ends idle agents' waiting claims early, and an
agent pauses 1 s after an early empty answer (agent/runner.py EMPTY_PAUSE_S), which is
steering, not draining (`first_start_after_resume_s` shows it; direct workers take ~30 ms,
as the peers' workers take a few ms from GO to their first job).
The jobs are counted from the scratch database every 0.25 s (not through the server).

Exactly once: every job `succeeded`, and none was claimed twice (`max(attempt)` = 1).
Before the drain of the `agents` variant, on the fresh database as the peers do it,
latency.py's simulated idle agent measures dispatch (submit start -> job in its hands).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
from _db import scratch_database
from _proc import CpuMeter, Proc, Processes, TagrunProc, api, db_name, log, mint_agent_token
from latency import simulated
from throughput import BACKENDS, FINISHED, OPEN, submit_all

NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"
RESULT = """
SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded, count(*) AS total,
       max(attempt) AS max_attempt,
       extract(epoch FROM max(finished_at))::float8 AS last_finished,
       extract(epoch FROM min(started_at))::float8 AS first_started
FROM jobs WHERE tag = $1"""
PAUSE_NOTE = "compare.py: jobs queued before the workers start"


async def direct_workers(procs: Processes, dsn: str, tag: str, n: int, slots: int
                         ) -> list[Proc]:
    workers = [procs.tagrun("worker", dsn, label=f"{tag}-worker-{i}", env={
        "WORKER_TAGS": tag, "WORKER_SLOTS": str(slots), "WORKER_NAME": f"{tag}-{i}"})
        for i in range(n)]
    for w in workers:
        await asyncio.to_thread(w.wait_logged, "worker.started")
    return list(workers)


async def agents(procs: Processes, client: httpx.AsyncClient, server: TagrunProc, tag: str,
                 n: int, slots: int) -> list[Proc]:
    token = await mint_agent_token(client, "bench-compare", [tag])
    names = [f"{tag}-{i}" for i in range(n)]
    runners = [procs.agent(server.url, token, name, env={
        "AGENT_SLOTS": str(slots), "AGENT_POLL_WAIT_S": "25"}) for name in names]
    deadline = time.monotonic() + 60
    while True:  # listed once its first claim reached the server: it waits on the paused tag
        r = await client.get("/api/workers", params={"tag": tag})
        r.raise_for_status()
        if set(names) <= {a["name"] for a in r.json()["agents"]}:
            return runners
        for proc in runners:
            if not proc.alive():
                raise RuntimeError(f"{proc.label} exited:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("agents not listed after 60 s")
        await asyncio.sleep(0.1)


async def drain(variant: str, tag: str, procs: Processes, dsn: str, server: TagrunProc,
                client: httpx.AsyncClient, db: asyncpg.Connection, *, jobs: int, workers: int,
                slots: int, batch: int, timeout_s: float) -> dict[str, Any]:
    r = await client.post(f"/api/tags/{tag}/pause", json={"note": PAUSE_NOTE})
    r.raise_for_status()
    enqueue_s = await submit_all(client, tag, jobs, batch)
    await db.execute("ANALYZE")  # the peers' harness starts every drain this way
    await db.execute("CHECKPOINT")
    if variant == "direct":
        runners = await direct_workers(procs, dsn, tag, workers, slots)
    else:
        runners = await agents(procs, client, server, tag, workers, slots)
    await asyncio.sleep(0.5)  # every runner idle, waiting on the paused tag
    log(f"tagrun {variant}: {workers} processes x {slots} slots up, {jobs} jobs queued")
    try:
        return await _run(tag, procs, dsn, server, client, db, runners, jobs, timeout_s,
                          enqueue_s)
    finally:
        for proc in runners:
            procs.stop(proc)


async def _run(tag: str, procs: Processes, dsn: str, server: TagrunProc,
               client: httpx.AsyncClient, db: asyncpg.Connection, runners: list[Proc],
               jobs: int, timeout_s: float, enqueue_s: float) -> dict[str, Any]:
    meters = {"server": CpuMeter(), "workers": CpuMeter(), "postgres": CpuMeter()}
    pg = [row["pid"] for row in await db.fetch(BACKENDS, db_name(dsn))]
    meters["server"].start([server.pid])
    meters["workers"].start([p.pid for p in runners])
    meters["postgres"].start(pg)
    t0 = float(await db.fetchval(NOW))
    r = await client.post(f"/api/tags/{tag}/resume")
    r.raise_for_status()
    deadline = time.monotonic() + timeout_s
    while await db.fetchval(OPEN, tag):  # every job was queued before the resume
        if time.monotonic() > deadline:
            done = await db.fetchval(FINISHED, tag)
            raise RuntimeError(f"only {done}/{jobs} jobs finished after {timeout_s:.0f} s")
        for proc in runners:
            if not proc.alive():
                raise RuntimeError(f"{proc.label} exited:\n{proc.log_tail()}")
        await asyncio.sleep(0.25)
    pg = [row["pid"] for row in await db.fetch(BACKENDS, db_name(dsn))]
    cpu = {"server": meters["server"].stop([server.pid]),
           "workers": meters["workers"].stop([p.pid for p in runners]),
           "postgres": meters["postgres"].stop(pg)}
    s = await db.fetchrow(RESULT, tag)
    assert s is not None  # an aggregate: always one row
    elapsed = s["last_finished"] - s["first_started"]
    errors = [] if s["succeeded"] == s["total"] == jobs else [
        f"{s['succeeded']} of {jobs} jobs succeeded ({s['total']} rows)"]
    if s["max_attempt"] != 1:
        errors.append(f"a job was claimed {s['max_attempt']} times")
    return {"ok": not errors, "errors": errors, "jobs": jobs,
            "drain_jobs_per_s": round(jobs / elapsed, 1), "elapsed_s": round(elapsed, 3),
            "first_start_after_resume_s": round(s["first_started"] - t0, 4),
            "enqueue_jobs_per_s": round(jobs / enqueue_s, 1),
            "succeeded": s["succeeded"], "max_attempt": s["max_attempt"],
            "cpu_ms_per_job": {k: round(v * 1000 / jobs, 3) for k, v in cpu.items()}}


async def measure(variant: str, label: str, *, jobs: int, workers: int, slots: int, batch: int,
                  latency_jobs: int, latency_warmup: int, settle_ms: float,
                  timeout_s: float) -> dict[str, Any]:
    """`variant` "direct" or "agents" on a fresh database and server; with `latency_jobs`,
    dispatch latency first (agents only)."""
    async with scratch_database() as dsn:
        with Processes() as procs:
            server = procs.tagrun("server", dsn)
            await asyncio.to_thread(server.wait_healthy)
            db = await asyncpg.connect(dsn)
            try:
                async with api(server.url, timeout=120) as client:
                    latency = None
                    if variant == "agents" and latency_jobs > 0:
                        log(f"tagrun: {latency_warmup} warm-up + {latency_jobs} jobs, one at a "
                            f"time, to an idle long-polling agent")
                        latency = await simulated(client, server.url, latency_jobs,
                                                  latency_warmup, 1, settle_ms)
                    out = await drain(variant, f"compare-{label}", procs, dsn, server, client,
                                      db, jobs=jobs, workers=workers, slots=slots, batch=batch,
                                      timeout_s=timeout_s)
            finally:
                await db.close()
    if latency is not None:
        out["dispatch"] = latency
    return out
