"""Claim + complete throughput of the store, with a large history of finished jobs.

    .venv/bin/python scripts/bench/claim.py [--history 100000] [--jobs 3000]

Prints JSON. Shows that finished jobs do not slow claims: the claim path reads only the
`queue` table, which holds queued jobs and nothing else (the dead rows claims leave in it are
vacuumed by the server's maintenance, as here after the history is made).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import scratch_database  # noqa: E402

from tagrun.server.store import NewJob, Store, create_pool  # noqa: E402

JOB = NewJob(None, None, "identity", "", {"n": 1}, "bench", 0, None, None, 3)


async def fill_history(store: Store, count: int) -> None:
    for start in range(0, count, 5000):
        await store.insert_jobs("default", [JOB] * min(5000, count - start))
        while claimed := await store.claim_jobs("h", ["bench"], 1000, 60):
            await store.pool.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = now(), "
                "lease_expires_at = NULL WHERE id = ANY($1::bigint[])",
                [j.id for j in claimed])


async def claim_and_complete(store: Store, jobs: int, batch: int) -> float:
    await store.insert_jobs("default", [JOB] * jobs)
    started = time.perf_counter()
    done = 0
    while claimed := await store.claim_jobs("w", ["bench"], batch, 60):
        for job in claimed:
            await store.complete_job("w", job.id, job.attempt, "succeeded", {}, None, 5)
        done += len(claimed)
    return done / (time.perf_counter() - started)


async def main(history: int, jobs: int) -> dict[str, object]:
    async with scratch_database() as dsn:
        pool = await create_pool(dsn, size=2)
        store = Store(pool)
        await fill_history(store, history)
        # Filling left `history` dead rows in `queue`; a running server's maintenance vacuums
        # them within 10 s (maintenance.queue_vacuumed). Without it: ~140 claims/s, not ~530.
        await store.vacuum_queue(0)
        one = await claim_and_complete(store, jobs, 1)
        fifty = await claim_and_complete(store, jobs, 50)
        await pool.close()
    return {
        "bench": "claim",
        "finished_jobs_in_table": history,
        "jobs": jobs,
        "claim1_complete_per_s": round(one),
        "claim50_complete_per_s": round(fifty),
        "note": "one connection; each claim is one statement, each completion one statement",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=3000)
    ns = parser.parse_args()
    print(json.dumps(asyncio.run(main(ns.history, ns.jobs))))
