"""A direct worker: claims jobs from PostgreSQL by tag, runs them, holds their leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagrun.server import events
from tagrun.server.errors import InvalidInput, LeaseLost, TagrunError
from tagrun.server.fleet_controls import FleetControls
from tagrun.server.listener import Listener
from tagrun.server.services.jobs import check_dict, claimed
from tagrun.server.services.secrets import Opened, SecretBox
from tagrun.server.store import DATABASE_ERRORS, ClaimedRow, Store
from tagrun.shared.agent_wire import AgentJob, CompletedJob
from tagrun.shared.holder import (
    Deadline,
    Held,
    HeldJob,
    Holder,
    LeaseGone,
    OutOfReach,
    Refused,
)
from tagrun.shared.loglines import Mark
from tagrun.shared.redact import DEFAULT_REDACT_VARS, env_secrets
from tagrun.shared.signing import Verifier
from tagrun.shared.version import __version__

log = logging.getLogger("tagrun.worker")


@dataclass
class WorkerSettings:
    name: str
    tags: tuple[str, ...]
    slots: int
    lease_s: float
    heartbeat_s: float
    poll_interval_s: float
    retry_backoff_s: float = 5.0
    max_log_chars: int = 10 << 20
    drain_timeout_s: float = 10.0
    kind: str = "worker"
    work_root: Path | None = None
    verifier: Verifier | None = None  # WORKER_VERIFY_KEYS: signatures checked before a run


class StorePort:
    """The direct worker's side of a lease, over the store: a database blip is retried
    until the job's lease would run out (OutOfReach after)."""

    def __init__(self, store: Store, settings: WorkerSettings) -> None:
        self.name = settings.name
        self._store = store
        self._settings = settings

    async def append_logs(self, job: AgentJob, offset: int, data: str, until: Deadline,
                          marks: Sequence[Mark] = ()) -> None:
        max_chars = self._settings.max_log_chars

        def truncated() -> None:
            events.job_log_truncated(job.id, max_chars)

        async def append() -> None:
            try:
                await self._store.append_logs(self.name, job.id, job.attempt, offset, data,
                                              max_chars=max_chars, on_truncated=truncated,
                                              marks=marks)
            except LeaseLost as exc:
                raise LeaseGone(exc.message) from exc
        await _until(append, until, "worker.db_unavailable", job.id)

    async def complete(self, job: AgentJob, outcome: CompletedJob, until: Deadline) -> None:
        error = {"kind": outcome.error.kind, "message": outcome.error.message} \
            if outcome.error else None

        async def complete() -> None:
            try:
                recorded = await self._store.complete_job(
                    self.name, job.id, job.attempt, outcome.status, outcome.result, error,
                    self._settings.retry_backoff_s, retryable=outcome.retryable,
                    log_chunks_lost=outcome.log_chunks_lost,
                    signature_check=check_dict(outcome.signature_check))
            except LeaseLost as exc:
                raise LeaseGone(exc.message) from exc
            except TagrunError as exc:
                # InvalidInput: the database will refuse this outcome every time.
                raise Refused(exc.message, again=isinstance(exc, InvalidInput)) from exc
            if not recorded["repeat"]:
                events.job_finished(recorded, error, outcome.traceparent)
        await _until(complete, until, "job.completion_retry", job.id)

    async def heartbeat(self, held: Held, acknowledges: bool
                        ) -> tuple[list[int], list[int], float]:
        sent_at = time.monotonic()
        cancel, lost = await self._store.extend_leases(self.name, held, self._settings.lease_s)
        return cancel, lost, sent_at

    async def release(self, held: Held) -> list[int]:
        try:
            return await self._store.release_jobs(self.name, held)
        except DATABASE_ERRORS as exc:
            raise OutOfReach(str(exc)) from exc

    async def refuse(self, job: AgentJob, kind: str, reason: str) -> bool:
        released = await self.release([(job.id, job.attempt)])
        if job.id in released:
            try:
                await self._store.record_refusals(self.name, [(job.id, kind, reason)])
            except DATABASE_ERRORS as exc:
                raise OutOfReach(str(exc)) from exc
            events.job_refused(job.id, self.name, kind, reason)
        return job.id in released


async def _until(call: Callable[[], Awaitable[None]], until: Deadline, event: str,
                 job_id: int) -> None:
    """Call, retrying database errors (a restart, a failover) with backoff until `until`."""
    delay = 0.1
    while True:
        try:
            return await call()
        except DATABASE_ERRORS as exc:
            if time.monotonic() + delay > until():
                raise OutOfReach(str(exc)) from exc
            log.warning(event, extra={"job_id": job_id, "error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


# What a direct worker's jobs never see of the server's environment, which they otherwise
# inherit: the server's own credentials and the secrets key.
WITHHELD_VARS = frozenset({"TAGRUN_SECRETS_KEY", "TAGRUN_SUPERADMIN_TOKEN",
                           "TAGRUN_METRICS_TOKEN", "TAGRUN_TOKEN", "DATABASE_URL"})


class Worker:
    def __init__(self, store: Store, listener: Listener, settings: WorkerSettings,
                 secrets: SecretBox | None = None, controls: FleetControls | None = None,
                 ) -> None:
        self.store = store
        self._controls = controls  # paused tags are left out of its claims
        self.listener = listener
        self._secrets = secrets
        # Values of the server's variables named like credentials, and the withheld ones,
        # are redacted from its jobs' output like the jobs' own secrets.
        env = dict(os.environ)
        self._redact = {**env_secrets(env, DEFAULT_REDACT_VARS),
                        **{k: v for k, v in env.items() if k in WITHHELD_VARS}}
        self.settings = settings
        self.holder = Holder(StorePort(store, settings), "worker", log,
                             settings.drain_timeout_s, self._held_job)
        self._work_root = settings.work_root or Path(tempfile.gettempdir())
        # When the next delayed job of our tags (a retry's backoff, a future run_at) is due,
        # in loop time: no NOTIFY comes then, so the wait ends at it instead of at the poll.
        self._due: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await self._until_ok(lambda: self.store.register_worker(
            s.name, s.kind, "", s.tags, None, __version__,
            {"mode": s.verifier.mode, "keys": s.verifier.key_ids()} if s.verifier else None),
            stop)
        log.info("worker.started", extra={"worker": s.name, "tags": list(s.tags), "slots": s.slots})
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        self.listener.on_cancel(self._cancel_now)
        waiter = self.listener.waiter(s.tags)
        look_ahead = True
        try:
            while not stop.is_set():
                claimed = await self._claim()
                if claimed and self.holder.free(s.slots):
                    continue  # there may be more: claim again before sleeping
                if look_ahead and self.holder.free(s.slots):
                    await self._note_due()
                await self._wait(waiter.event, stop)
                # Look ahead again only after a NOTIFY (new queue rows, delayed ones among
                # them) or once the delayed job is due: an idle poll costs one query.
                due_passed = self._due is not None and self._loop_time() >= self._due
                if due_passed:
                    self._due = None
                look_ahead = waiter.event.is_set() or due_passed
                waiter.event.clear()
        finally:
            waiter.close()
            await self.holder.drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(*DATABASE_ERRORS):  # its record shows it stopped at once
                await self.store.worker_stopped(s.name, "stopped")
            log.info("worker.stopped", extra={"worker": s.name})

    async def _until_ok(self, call: Any, stop: asyncio.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                await call()
                return
            except DATABASE_ERRORS as exc:
                log.warning("worker.db_unavailable", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _wait(self, woken: asyncio.Event, stop: asyncio.Event) -> None:
        slot_freed = self.holder.slot_freed
        slot_freed.clear()
        waits = [asyncio.create_task(e.wait()) for e in (woken, stop, slot_freed)]
        timeout = self.settings.poll_interval_s
        if self._due is not None:
            timeout = min(timeout, max(self._due - self._loop_time(), 0.0))
        if self._controls is not None and (resume := self._controls.next_tag_resume_s()):
            timeout = min(timeout, resume + 0.01)  # a timed tag pause ends: claim it then
        if not self.holder.free(self.settings.slots):
            waits.pop(0)  # full: only a free slot or stop matters
            timeout = 3600
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()
        await asyncio.sleep(0)  # the jobs that end in the same turn: one claim for all

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def _note_due(self) -> None:
        """Remember when the next not-yet-due job of our tags becomes due."""
        try:
            seconds = await self.store.seconds_to_next_due(self.settings.tags)
        except DATABASE_ERRORS:
            return  # the poll looks again
        if seconds is not None and seconds > 0:  # <= 0: due but held back by a cap
            due = self._loop_time() + seconds + 0.005
            self._due = due if self._due is None else min(self._due, due)

    async def _claim(self) -> int:
        s = self.settings
        if self._controls is not None:
            await self._controls.settled()  # a pause just heard of holds for this claim
        free = self.holder.free(s.slots)
        tags = self._controls.unpaused(s.tags) if self._controls is not None else s.tags
        if free <= 0 or not tags:
            return 0
        try:
            jobs = await self.store.claim_jobs(s.name, tags, free, s.lease_s,
                                               inline=s.kind == "inline")
        except DATABASE_ERRORS as exc:
            log.warning("worker.claim_failed", extra={"error": str(exc)})
            await asyncio.sleep(min(s.poll_interval_s, 1.0))
            return 0
        try:
            opened = await self._secrets.open_for(jobs) if self._secrets else {}
        except DATABASE_ERRORS as exc:  # they go back to the queue; the next claim retries
            log.warning("worker.claim_failed", extra={"error": str(exc)})
            with contextlib.suppress(*DATABASE_ERRORS):
                await self.store.release_jobs(s.name, [(j.id, j.attempt) for j in jobs])
            await asyncio.sleep(min(s.poll_interval_s, 1.0))
            return 0
        for job in jobs:
            self._start(job, opened.get(job.id))
        return len(jobs)

    def _start(self, row: ClaimedRow, secrets: Opened | None = None) -> None:
        self.holder.start(claimed(row, self.settings.lease_s, self.settings.heartbeat_s,
                                  secrets=secrets))
        events.job_claimed(row)

    def _held_job(self, job: AgentJob) -> HeldJob:
        return HeldJob(job, self.holder.port, self._work_root, log, redact=self._redact,
                       withhold=WITHHELD_VARS, verifier=self.settings.verifier)

    def _cancel_now(self, job_id: int) -> None:
        """A cancel reaches a direct worker at once; the next heartbeat would confirm it."""
        self.holder.cancel(job_id)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval())
            try:
                await self.holder.beat(empty=True)  # idle too: it keeps our record alive
            except DATABASE_ERRORS as exc:
                log.warning("worker.heartbeat_failed", extra={"error": str(exc)})

    def _heartbeat_interval(self) -> float:
        """Often enough for the shortest lease held (a job's own lease_s may be short)."""
        return min((r.job.heartbeat_s for r in self.holder.runs.values()),
                   default=self.settings.heartbeat_s)

    def kill_all(self) -> None:
        """Kill every running job's process tree now (the process is about to exit)."""
        self.holder.kill_all("worker exiting")
