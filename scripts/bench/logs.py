"""Log throughput: jobs that print a lot, through a direct worker and through an HTTP agent.

    .venv/bin/python scripts/bench/logs.py [--jobs 3] [--lines 100000] [--width 60]
        [--variants direct,agents] [--rounds 2]

Starts a scratch database (embedded PostgreSQL, or TAGRUN_BENCH_DATABASE_URL), a real
`tagrun start --mode server` (no in-process worker), then alternates for --rounds rounds:

- `direct`: one `tagrun start --mode worker` (WORKER_SLOTS=1);
- `agents`: one real `tagrun-agent` (AGENT_SLOTS=1) over HTTP.

Each variant runs --jobs Python jobs one after another; each prints --lines lines of about
--width characters, one write per line (unbuffered), three to stdout for one to stderr:
everything the log path does per write (reading the pipes, redaction, the log stream, its
chunks to the database or over HTTP, and the per-line marks) is on the clock. A job's
`run_s` is its started_at to finished_at (database clock): its log is all stored by then.

Per variant: `chars_per_s` (median of the jobs), `run_s` of each job, CPU seconds used by
the server and by the worker or agent. `loadavg_before/after`: other work on the machine
skews all of this; rerun when it is high. Prints one JSON object on stdout; progress goes
to stderr.
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
    Proc,
    Processes,
    TagrunProc,
    api,
    log,
    mint_agent_token,
    sigterm_as_exit,
)

JOB = """
import sys

def main(lines, width):
    pad = "x" * width
    for i in range(lines):
        (sys.stderr if i % 4 == 3 else sys.stdout).write(f"{i:08d} {pad}\\n")
    return lines
"""
RUN = """
SELECT status, extract(epoch FROM finished_at - started_at) AS run_s, log_size
FROM jobs WHERE id = $1"""


async def run_jobs(ns: argparse.Namespace, client: httpx.AsyncClient, db: asyncpg.Connection,
                   tag: str, server: TagrunProc, runner: Proc) -> dict[str, Any]:
    cpu_before = (server.cpu_s(), runner.cpu_s())
    runs: list[dict[str, Any]] = []
    for _ in range(ns.jobs):
        r = await client.post("/api/w/default/jobs", json={
            "language": "python", "content": JOB, "tag": tag,
            "args": {"lines": ns.lines, "width": ns.width}})
        r.raise_for_status()
        job_id = r.json()["id"]
        deadline = time.monotonic() + ns.timeout_s
        while True:
            r = await client.get(f"/api/w/default/jobs/{job_id}", params={"wait_s": 30})
            r.raise_for_status()
            if r.json()["status"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} not done after {ns.timeout_s}s")
        row = await db.fetchrow(RUN, job_id)
        assert row is not None
        if row["status"] != "succeeded":
            raise RuntimeError(f"job {job_id}: {r.json()}")
        runs.append({"run_s": round(float(row["run_s"]), 3), "log_chars": row["log_size"]})
    rates = [r["log_chars"] / r["run_s"] for r in runs]
    return {"chars_per_s": round(statistics.median(rates)),
            "run_s": [r["run_s"] for r in runs], "log_chars": runs[0]["log_chars"],
            "server_cpu_s": round(server.cpu_s() - cpu_before[0], 2),
            "runner_cpu_s": round(runner.cpu_s() - cpu_before[1], 2)}


async def direct(ns: argparse.Namespace, procs: Processes, dsn: str, server: TagrunProc,
                 client: httpx.AsyncClient, db: asyncpg.Connection, tag: str) -> dict[str, Any]:
    worker = procs.tagrun("worker", dsn, label=f"{tag}-worker", env={
        "WORKER_TAGS": tag, "WORKER_SLOTS": "1", "WORKER_NAME": tag})
    await asyncio.to_thread(worker.wait_logged, "worker.started")
    try:
        return await run_jobs(ns, client, db, tag, server, worker)
    finally:
        procs.stop(worker)


async def agents(ns: argparse.Namespace, procs: Processes, server: TagrunProc,
                 client: httpx.AsyncClient, db: asyncpg.Connection, tag: str) -> dict[str, Any]:
    token = await mint_agent_token(client, "bench-logs", [tag])
    # A short long-poll: connected (its first claim answered) in a second, not 25.
    agent = procs.agent(server.url, token, tag, env={"AGENT_SLOTS": "1",
                                                     "AGENT_POLL_WAIT_S": "1"})
    deadline = time.monotonic() + 30
    while not agent.logged("agent.connected"):  # its first claim was answered
        if not agent.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{agent.label} did not connect:\n{agent.log_tail()}")
        await asyncio.sleep(0.05)
    try:
        return await run_jobs(ns, client, db, tag, server, agent)
    finally:
        procs.stop(agent)


async def main(ns: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {"bench": "logs", "jobs": ns.jobs, "lines": ns.lines,
                              "width": ns.width, "rounds": ns.rounds, "cpus": os.cpu_count(),
                              "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in ns.variants.split(",")}
    async with scratch_database() as dsn:
        with Processes() as procs:
            server = procs.tagrun("server", dsn)
            await asyncio.to_thread(server.wait_healthy)
            db = await asyncpg.connect(dsn)
            try:
                async with api(server.url, timeout=120) as client:
                    for n in range(ns.rounds):
                        for variant in runs:
                            tag = f"bench-logs-{variant}-{n}"
                            if variant == "direct":
                                out = await direct(ns, procs, dsn, server, client, db, tag)
                            elif variant == "agents":
                                out = await agents(ns, procs, server, client, db, tag)
                            else:
                                raise SystemExit(f"unknown variant {variant!r}")
                            runs[variant].append(out)
                            log(f"{variant} round {n}: {out}")
            finally:
                await db.close()
    for variant, outs in runs.items():
        result[variant] = {
            "chars_per_s_median": statistics.median(o["chars_per_s"] for o in outs),
            "rounds": outs}
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=60)
    parser.add_argument("--variants", default="direct,agents")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    sigterm_as_exit()
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
