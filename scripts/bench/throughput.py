"""Identity-job throughput: HTTP agents against direct (database) workers.

    .venv/bin/python scripts/bench/throughput.py [--jobs 5000] [--procs 2] [--slots 8]
        [--batch 1000] [--variants direct,agents] [--rounds 2] [--timeout-s 150]

Starts a scratch database (embedded PostgreSQL, or TAGRUN_BENCH_DATABASE_URL) and a real
`tagrun start --mode server` on a free 127.0.0.1 port (no in-process worker), then runs:

- `direct`: --procs `tagrun start --mode worker` processes (WORKER_TAGS=bench-direct,
  WORKER_SLOTS=--slots) claiming from PostgreSQL;
- `agents`: --procs real `tagrun-agent` processes (.venv/bin/tagrun-agent; AGENT_SLOTS=--slots,
  AGENT_POLL_WAIT_S=25) with an agent token for tag bench-agent, over HTTP to the server.

The variants alternate for --rounds rounds (direct, agents, direct, agents, ...; each round
on its own tags: bench-direct-<n>, bench-agent-<n>), so a slow drift of the machine hits
both alike. Each variant has the machine to itself (the other's processes are stopped) and
gets the same --jobs `identity` jobs, submitted through `POST /api/w/default/jobs/batch` in batches
of --batch, as fast as the server takes them. Every 0.25 s the bench asks the scratch
database, not the server it measures, whether a job of the tag is still queued or running
(two index probes); the peers' harness counts handled jobs in the workers themselves.

Per variant: `jobs_per_s` = jobs / (last finished_at - first created_at), database clock;
`wall_s`, from the first submit to the poll that saw the last job finish; `submit_s`;
`steady_jobs_per_s` over the middle 80% of completions; CPU seconds used by the server, the
workers or agents, and the PostgreSQL backends of the scratch database; database
transactions per job (pg_stat_database). `ratio_agents_to_direct` compares the medians of
jobs_per_s over the rounds. `loadavg_before/after`: other work on the machine skews all
of this; rerun when it is high.
Spec target (SPEC 8): throughput through HTTP agents at least 80% of direct workers.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from _db import scratch_database  # noqa: E402
from _proc import (  # noqa: E402
    CpuMeter,
    Proc,
    Processes,
    TagrunProc,
    api,
    db_name,
    log,
    mint_agent_token,
    sigterm_as_exit,
)

FINISHED = """
SELECT count(*) FROM jobs WHERE tag = $1 AND status IN ('succeeded', 'failed', 'cancelled')"""
# Whether a job of the tag is still queued or running: two index probes (a few rows of
# `running`), where FINISHED reads every job of the tag (13 ms at 40,000 jobs, every look,
# on the machine it measures). Once every job was submitted, none open means all finished.
OPEN = """
SELECT EXISTS (SELECT FROM queue WHERE tag = $1)
    OR EXISTS (SELECT FROM running r JOIN jobs j ON j.id = r.job_id WHERE j.tag = $1)"""
SUMMARY = """
SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded, count(*) AS total,
       max(attempt) AS max_attempt,
       extract(epoch FROM max(finished_at) - min(created_at)) AS span_s,
       extract(epoch FROM min(started_at) - min(created_at)) AS first_start_s,
       extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY finished_at)
                        - percentile_disc(0.1) WITHIN GROUP (ORDER BY finished_at)) AS mid80_s
FROM jobs WHERE tag = $1"""
XACTS = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1"
BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"


async def submit_all(client: httpx.AsyncClient, tag: str, jobs: int, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, jobs, batch):
        body = {"jobs": [{"language": "identity", "content": "", "tag": tag, "args": {"n": i}}
                         for i in range(start, min(jobs, start + batch))]}
        r = await client.post("/api/w/default/jobs/batch", json=body)
        r.raise_for_status()
    return time.perf_counter() - started


async def run_variant(name: str, client: httpx.AsyncClient, db: asyncpg.Connection,
                      tag: str, ns: argparse.Namespace, server: TagrunProc,
                      runners: list[Proc]) -> dict[str, Any]:
    dbname = ns.dbname
    meters = {"server": CpuMeter(), "runners": CpuMeter(), "postgres": CpuMeter()}
    backends = [r["pid"] for r in await db.fetch(BACKENDS, dbname)]
    meters["server"].start([server.pid])
    meters["runners"].start([p.pid for p in runners])
    meters["postgres"].start(backends)
    xacts0 = await db.fetchval(XACTS, dbname)
    own = 0
    t0 = time.perf_counter()
    submit = asyncio.create_task(submit_all(client, tag, ns.jobs, ns.batch))
    while True:
        await asyncio.sleep(0.25)
        finished = submit.done() and not await db.fetchval(OPEN, tag)
        own += 1
        if finished:
            break
        if time.perf_counter() - t0 > ns.timeout_s:
            submit.cancel()
            done = await db.fetchval(FINISHED, tag)
            raise RuntimeError(f"{name}: only {done}/{ns.jobs} jobs finished after "
                               f"{ns.timeout_s}s:\n" + "\n".join(p.log_tail(800) for p in runners))
        for proc in runners:
            if not proc.alive():
                raise RuntimeError(f"{name}: {proc.label} exited:\n{proc.log_tail()}")
    wall = time.perf_counter() - t0
    submit_s = await submit
    backends = [r["pid"] for r in await db.fetch(BACKENDS, dbname)]
    cpu = {"server": meters["server"].stop([server.pid]),
           "runners": meters["runners"].stop([p.pid for p in runners]),
           "postgres": meters["postgres"].stop(backends)}
    await asyncio.sleep(1.2)  # backends flush their statistics about once a second
    xacts = await db.fetchval(XACTS, dbname) - xacts0 - own - 2
    s = await db.fetchrow(SUMMARY, tag)
    span = float(s["span_s"])
    return {
        "jobs": ns.jobs, "succeeded": s["succeeded"], "max_attempt": s["max_attempt"],
        "jobs_per_s": round(ns.jobs / span, 1),
        "steady_jobs_per_s": round(0.8 * ns.jobs / float(s["mid80_s"]), 1)
        if s["mid80_s"] else None,
        "span_s": round(span, 2), "wall_s": round(wall, 2), "submit_s": round(submit_s, 2),
        "first_start_after_s": round(float(s["first_start_s"]), 3),
        "cpu_s": cpu, "cpu_s_per_1000_jobs": {k: round(v * 1000 / ns.jobs, 2)
                                              for k, v in cpu.items()},
        "db_xacts_per_job": round(xacts / ns.jobs, 2),
    }


async def direct(ns: argparse.Namespace, procs: Processes, dsn: str, server: TagrunProc,
                 client: httpx.AsyncClient, db: asyncpg.Connection, tag: str) -> dict[str, Any]:
    workers = [procs.tagrun("worker", dsn, label=f"{tag}-worker-{i}", env={
        "WORKER_TAGS": tag, "WORKER_SLOTS": str(ns.slots),
        "WORKER_NAME": f"{tag}-{i}"}) for i in range(ns.procs)]
    for w in workers:
        await asyncio.to_thread(w.wait_logged, "worker.started")
    log(f"direct: {ns.procs} workers x {ns.slots} slots up")
    try:
        return await run_variant("direct", client, db, tag, ns, server, list(workers))
    finally:
        for w in workers:
            procs.stop(w)


async def agents(ns: argparse.Namespace, procs: Processes, server: TagrunProc,
                 client: httpx.AsyncClient, db: asyncpg.Connection, tag: str) -> dict[str, Any]:
    token = await mint_agent_token(client, "bench-throughput", [tag])
    names = [f"{tag}-{i}" for i in range(ns.procs)]
    runners = [procs.agent(server.url, token, name, env={
        "AGENT_SLOTS": str(ns.slots), "AGENT_POLL_WAIT_S": "25"}) for name in names]
    deadline = time.monotonic() + 30
    while True:  # an agent is listed once its first claim reached the server
        r = await client.get("/api/workers")
        r.raise_for_status()
        listed = {a["name"] for a in r.json()["agents"]}
        if all(n in listed for n in names):
            break
        for proc in runners:
            if not proc.alive():
                raise RuntimeError(f"{proc.label} exited:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("agents not listed after 30 s")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    log(f"agents: {ns.procs} tagrun-agent x {ns.slots} slots up")
    try:
        return await run_variant("agents", client, db, tag, ns, server, runners)
    finally:
        for proc in runners:
            procs.stop(proc)


async def main(ns: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {"bench": "throughput", "jobs": ns.jobs, "procs": ns.procs,
                              "slots": ns.slots, "batch": ns.batch, "rounds": ns.rounds,
                              "cpus": os.cpu_count(),
                              "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in ns.variants.split(",")}
    async with scratch_database() as dsn:
        ns.dbname = db_name(dsn)
        with Processes() as procs:
            server = procs.tagrun("server", dsn)
            await asyncio.to_thread(server.wait_healthy)
            log(f"server up on {server.url} (pid {server.pid})")
            db = await asyncpg.connect(dsn)
            try:
                async with api(server.url, timeout=120) as client:
                    for n in range(ns.rounds):  # alternated, so drift hits both alike
                        for variant in runs:
                            tag = f"bench-{variant}-{n}"
                            if variant == "direct":
                                out = await direct(ns, procs, dsn, server, client, db, tag)
                            elif variant == "agents":
                                out = await agents(ns, procs, server, client, db, tag)
                            else:
                                raise SystemExit(f"unknown variant {variant!r}")
                            if out["succeeded"] != ns.jobs:
                                raise RuntimeError(f"{variant}: {out}")
                            runs[variant].append(out)
                            log(f"{variant} round {n}: {out}")
            finally:
                await db.close()
    for variant, outs in runs.items():
        rates = sorted(o["jobs_per_s"] for o in outs)
        result[variant] = {"jobs_per_s_median": statistics.median(rates),
                           "jobs_per_s_each_round": [o["jobs_per_s"] for o in outs],
                           "rounds": outs}
    if "direct" in runs and "agents" in runs:
        ratio = result["agents"]["jobs_per_s_median"] / result["direct"]["jobs_per_s_median"]
        result["ratio_agents_to_direct"] = round(ratio, 3)
        result["target"] = {"ratio_at_least": 0.8, "met": ratio >= 0.8}
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--procs", type=int, default=2,
                        help="worker processes (direct) and agent processes (agents)")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--variants", default="direct,agents")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of the variants, alternated; medians are compared")
    parser.add_argument("--timeout-s", type=float, default=150.0)
    sigterm_as_exit()
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
