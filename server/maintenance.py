"""Maintenance a server process runs: lease expiry every second, a vacuum of the claim table
when claims have left enough dead rows in it, and the built-in schedules.

Lease expiry is safe on any number of replicas: it claims rows with SKIP LOCKED and
re-checks their state. The rest (job retention, expired agent tokens, idempotency keys,
stale agent records) are built-in cron schedules, seeded at start in workspace `default`:
their fires queue jobs with tag `tagrun-maintenance`, which the maintenance worker of any
server process claims, runs and completes like any job, so every run is visible in the job
list, with its counts as result and a line of log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tagrun.server import events
from tagrun.server.config import ConfigError
from tagrun.server.errors import TagrunError
from tagrun.server.listener import Listener
from tagrun.server.services import broadcast
from tagrun.server.services.maintenance import MAINTENANCE_TAG
from tagrun.server.store import DATABASE_ERRORS, ClaimedRow, Store
from tagrun.server.store._base import iso
from tagrun.shared.executors import ErrorKind
from tagrun.shared.loglines import CODES, STDOUT
from tagrun.shared.logstream import now_ms

log = logging.getLogger("tagrun.maintenance")

LEASE_CHECK_INTERVAL_S = 1.0
STALE_CHECK_INTERVAL_S = 2.0
QUEUE_VACUUM_INTERVAL_S = 10.0
QUEUE_VACUUM_MIN_DEAD_ROWS = 5000
BATCH = 1000
KEEP_EXPIRED_TOKENS = timedelta(days=7)
STALE_RECORD_AGE = timedelta(days=7)
SAFETY_POLL_S = 30.0  # a NOTIFY wakes the maintenance worker; this covers a missed one




def job_retention_days(env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get("TAGRUN_JOB_RETENTION_DAYS", "")
    if not raw.strip():
        return 30.0
    try:
        days = float(raw)
    except ValueError:
        raise ConfigError(f"TAGRUN_JOB_RETENTION_DAYS={raw!r} is not a number") from None
    if not 0 < days <= 36500:  # also refuses nan
        raise ConfigError(f"TAGRUN_JOB_RETENTION_DAYS={raw!r} must be more than 0 days "
                          "and at most 36500")
    return days


async def expire_leases_once(store: Store) -> None:
    # Unacknowledged claims first: a job whose claim answer was lost uses no attempt.
    for job_id, status in await store.release_unacked():
        events.claim_unacknowledged(job_id, status)
    for job_id, status in await store.expire_leases():
        events.lease_expired(job_id, status)


async def report_stale_agents(store: Store, stale_after_s: float,
                              fold_after_s: float | None = None) -> None:
    """`fold_after_s`: inline workers not seen this long (or stopped) are deleted; longer than
    a live one's heartbeat could ever leave it (the runtime gives 3 leases at least)."""
    for agent in await store.mark_stale_agents(stale_after_s):
        log.warning("agent.stale", extra={
            "agent": agent.name, "group": agent.grp, "tags": list(agent.tags), "ip": agent.ip,
            "last_seen": iso(agent.last_seen), "stale_after_s": stale_after_s})
    folded = await store.fold_inline_workers(fold_after_s or stale_after_s)
    if folded:  # dead server processes' own workers: not something to keep listing
        log.info("maintenance.inline_workers_folded", extra={"workers": folded})


async def vacuum_queue(store: Store) -> None:
    dead = await store.vacuum_queue(QUEUE_VACUUM_MIN_DEAD_ROWS)
    if dead is not None:
        log.info("maintenance.queue_vacuumed", extra={"dead_rows": dead})


async def run_maintenance(store: Store, stop: asyncio.Event, *, stale_after_s: float,
                          fold_after_s: float | None = None) -> None:
    stale_checked = vacuumed = 0.0
    while not stop.is_set():
        try:
            await expire_leases_once(store)
            if time.monotonic() - stale_checked >= STALE_CHECK_INTERVAL_S:
                stale_checked = time.monotonic()
                await report_stale_agents(store, stale_after_s, fold_after_s)
                await broadcast.sweep(store, stale_after_s)
            if time.monotonic() - vacuumed >= QUEUE_VACUUM_INTERVAL_S:
                vacuumed = time.monotonic()
                await vacuum_queue(store)
        except DATABASE_ERRORS as exc:
            log.warning("maintenance.failed", extra={"error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LEASE_CHECK_INTERVAL_S)


class _Cancelled(Exception):
    pass


class _LeaseLost(Exception):
    pass


class MaintenanceRun:
    """One maintenance job being run: its lease, its log, and the task's context."""

    def __init__(self, worker: MaintenanceWorker, job: ClaimedRow) -> None:
        self.worker, self.store, self.job = worker, worker.store, job
        self.now = worker.clock()
        self._log_offset = job.log_offset
        self._extended_at = time.monotonic()

    async def batched(self, delete: Callable[[], Awaitable[int]]) -> int:
        """Call `delete` (one batch) until a batch comes back short; the total deleted."""
        total = 0
        while True:
            deleted = await delete()
            total += deleted
            if deleted < BATCH:
                return total
            await self.keep_lease()

    async def keep_lease(self) -> None:
        lease_s = self.worker.lease_s
        if time.monotonic() - self._extended_at < lease_s / 3:
            return
        cancel, lost = await self.store.extend_leases(
            self.worker.name, [(self.job.id, self.job.attempt)], lease_s)
        self._extended_at = time.monotonic()
        if lost:
            raise _LeaseLost()
        if cancel:
            raise _Cancelled()

    async def write(self, line: str) -> None:
        self._log_offset = await self.store.append_logs(
            self.worker.name, self.job.id, self.job.attempt, self._log_offset, line + "\n",
            marks=[(0, now_ms(), CODES[STDOUT])])


async def _job_retention(run: MaintenanceRun) -> dict[str, Any]:
    days = run.worker.retention_days
    cutoff = run.now - timedelta(days=days)
    jobs = await run.batched(lambda: run.store.delete_old_jobs(cutoff, BATCH))
    fires = await run.batched(lambda: run.store.delete_old_fires(cutoff, BATCH))
    await run.write(f"deleted {jobs} finished jobs and {fires} schedule fires older than "
                    f"{days:g} days")
    return {"jobs_deleted": jobs, "fires_deleted": fires, "retention_days": days}


async def _idempotency_keys(run: MaintenanceRun) -> dict[str, Any]:
    keys = await run.store.prune_idempotency_keys()
    await run.write(f"forgot {keys} idempotency keys older than 24 hours")
    return {"keys_deleted": keys}


async def _expired_agent_tokens(run: MaintenanceRun) -> dict[str, Any]:
    tokens = await run.store.delete_expired_agent_tokens(run.now - KEEP_EXPIRED_TOKENS)
    await run.write(f"deleted {tokens} agent tokens expired more than 7 days ago")
    return {"tokens_deleted": tokens}


async def _stale_agents(run: MaintenanceRun) -> dict[str, Any]:
    records = await run.store.delete_stale_workers(run.now - STALE_RECORD_AGE)
    await run.write(f"deleted {records} agent and worker records not seen for 7 days")
    events = await run.store.prune_worker_events(run.now - STALE_RECORD_AGE)
    await run.write(f"deleted {events} state history lines of agents and groups gone")
    return {"records_deleted": records, "history_deleted": events}


TASKS: dict[str, Callable[[MaintenanceRun], Awaitable[dict[str, Any]]]] = {
    "job_retention": _job_retention,
    "idempotency_keys": _idempotency_keys,
    "expired_agent_tokens": _expired_agent_tokens,
    "stale_agents": _stale_agents,
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MaintenanceWorker:
    """Claims and runs the jobs of the built-in schedules inside a server process."""

    def __init__(self, store: Store, listener: Listener, *, lease_s: float,
                 retention_days: float, clock: Callable[[], datetime] = _utc_now) -> None:
        self.store, self.listener = store, listener
        self.lease_s, self.retention_days, self.clock = lease_s, retention_days, clock
        self.name = f"{socket.gethostname()}-maintenance-{secrets.token_hex(3)}"

    async def run(self, stop: asyncio.Event) -> None:
        waiter = self.listener.waiter([MAINTENANCE_TAG])
        try:
            while not stop.is_set():
                try:
                    if await self.run_once():
                        continue
                except DATABASE_ERRORS as exc:
                    log.warning("maintenance.claim_failed", extra={"error": str(exc)})
                woken = asyncio.create_task(waiter.wait(SAFETY_POLL_S))
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait([woken, stopped], return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                stopped.cancel()
        finally:
            waiter.close()

    async def run_once(self) -> bool:
        """Claim and run one maintenance job; False when none was waiting."""
        jobs = await self.store.claim_jobs(self.name, [MAINTENANCE_TAG], 1, self.lease_s)
        for job in jobs:
            events.job_claimed(job)
            await self._run(job)
        return bool(jobs)

    async def _run(self, job: ClaimedRow) -> None:
        run = MaintenanceRun(self, job)
        task = TASKS.get(job.content or "")
        result: Any = None
        error: dict[str, str] | None = None
        try:
            if task is None:
                raise ValueError(f"unknown maintenance task {job.content!r}")
            result, status = await task(run), "succeeded"
        except _LeaseLost:
            log.warning("job.lease_lost", extra={"job_id": job.id})
            return
        except _Cancelled:
            status, error = "cancelled", {"kind": ErrorKind.CANCELLED, "message": "cancelled"}
        except (TagrunError, ValueError, *DATABASE_ERRORS) as exc:
            log.warning("maintenance.task_failed",
                        extra={"job_id": job.id, "error": str(exc)})
            status, error = "failed", {"kind": ErrorKind.INTERNAL, "message": str(exc)}
        with contextlib.suppress(TagrunError, *DATABASE_ERRORS):  # else lease expiry ends the job
            recorded = await self.store.complete_job(
                self.name, job.id, job.attempt, status, result, error, 0.0)
            if not recorded["repeat"]:
                events.job_finished(recorded, error)
            log.info("maintenance.ran", extra={"job_id": job.id, "task": job.content,
                                               "status": status, "result": result})
