"""A direct worker: claims jobs from PostgreSQL by tag, runs them, holds their leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagrun.server import events
from tagrun.server.errors import InvalidInput, LeaseLost, TagrunError
from tagrun.server.listener import Listener
from tagrun.server.store import DATABASE_ERRORS, Store
from tagrun.shared.executors import (
    NO_PROCESS,
    ErrorKind,
    ExecSpec,
    Execution,
    Outcome,
    job_identity_env,
    sendable,
)
from tagrun.shared.logstream import LogStream, StreamEnded
from tagrun.shared.version import __version__

log = logging.getLogger("tagrun.worker")

LOG_RETRY_S = 60.0  # how long a log write is retried while the database is unreachable


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


@dataclass
class RunningJob:
    id: int
    attempt: int
    execution: Execution
    lost: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Worker:
    def __init__(self, store: Store, listener: Listener, settings: WorkerSettings) -> None:
        self.store = store
        self.listener = listener
        self.settings = settings
        self.running: dict[int, RunningJob] = {}
        self._slot_freed = asyncio.Event()
        # When the next delayed job of our tags (a retry's backoff, a future run_at) is due,
        # in loop time: no NOTIFY comes then, so the wait ends at it instead of at the poll.
        self._due: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await self._until_ok(lambda: self.store.register_worker(
            s.name, s.kind, "", s.tags, None, __version__), stop)
        log.info("worker.started", extra={"worker": s.name, "tags": list(s.tags), "slots": s.slots})
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        self.listener.on_cancel(self._cancel_now)
        waiter = self.listener.waiter(s.tags)
        look_ahead = True
        try:
            while not stop.is_set():
                claimed = await self._claim()
                if claimed and len(self.running) < s.slots:
                    continue  # there may be more: claim again before sleeping
                if look_ahead and len(self.running) < s.slots:
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
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
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
        self._slot_freed.clear()
        waits = [asyncio.create_task(e.wait()) for e in (woken, stop, self._slot_freed)]
        timeout = self.settings.poll_interval_s
        if self._due is not None:
            timeout = min(timeout, max(self._due - self._loop_time(), 0.0))
        if len(self.running) >= self.settings.slots:
            waits.pop(0)  # full: only a free slot or stop matters
            timeout = 3600
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()

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
        free = s.slots - len(self.running)
        if free <= 0:
            return 0
        try:
            jobs = await self.store.claim_jobs(s.name, s.tags, free, s.lease_s,
                                               inline=s.kind == "inline")
        except DATABASE_ERRORS as exc:
            log.warning("worker.claim_failed", extra={"error": str(exc)})
            await asyncio.sleep(min(s.poll_interval_s, 1.0))
            return 0
        for job in jobs:
            self._start(job)
        return len(jobs)

    def _start(self, job: dict[str, Any]) -> None:
        root = self.settings.work_root
        work_dir = None if job["language"] in NO_PROCESS else Path(  # nothing runs: no dir
            tempfile.mkdtemp(prefix=f"tagrun-job{job['id']}-", dir=root))
        stream = LogStream(self._log_sink(job["id"], job["attempt"]), job["log_offset"],
                           job_id=job["id"])
        if job["attempt"] > 1:
            stream.write(f"\n--- attempt {job['attempt']} ---\n")
        spec = ExecSpec(
            job["language"], job["content"], job["args"] or {}, job["timeout_s"],
            work_dir or Path(tempfile.gettempdir()),
            env=job_identity_env(job["id"], job["workspace"], job["attempt"], job["tag"],
                                 self.settings.name),
        )
        running = RunningJob(job["id"], job["attempt"], Execution(spec, stream.write))
        running.task = asyncio.create_task(self._execute(running, stream, work_dir))
        self.running[job["id"]] = running
        events.job_claimed(job)

    def _log_sink(self, job_id: int, attempt: int) -> Any:
        def truncated() -> None:
            events.job_log_truncated(job_id, self.settings.max_log_chars)

        async def sink(offset: int, data: str) -> None:
            # A database blip (a restart, a failover) must not cost the job the rest of its
            # logs: retry for a while (a resent chunk is recognised by its offset). Output
            # meanwhile waits in the stream; a refusal (lease lost) ends the stream at once.
            delay, deadline = 0.1, self._loop_time() + LOG_RETRY_S
            while True:
                try:
                    await self.store.append_logs(
                        self.settings.name, job_id, attempt, offset, data,
                        max_chars=self.settings.max_log_chars, on_truncated=truncated)
                    return
                except LeaseLost as exc:
                    raise StreamEnded(exc.message) from exc
                except DATABASE_ERRORS as exc:
                    if self._loop_time() + delay > deadline:
                        raise StreamEnded(str(exc)) from exc
                    log.warning("worker.db_unavailable", extra={"job_id": job_id,
                                                                 "error": str(exc)})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        return sink

    async def _execute(self, job: RunningJob, stream: LogStream, work_dir: Path | None) -> None:
        try:
            outcome = await job.execution.run()
        except Exception as exc:  # noqa: BLE001 - an executor bug fails the job, not the worker
            log.exception("job.executor_crashed", extra={"job_id": job.id})
            outcome = Outcome("failed", error={"kind": ErrorKind.INTERNAL, "message": str(exc)})
        await stream.close()
        try:
            if not job.lost:
                outcome, retryable = sendable(outcome)
                await self._complete(job, outcome, retryable=retryable,
                                     log_chunks_lost=stream.lost_chunks)
        finally:
            if work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)
            self.running.pop(job.id, None)
            self._slot_freed.set()

    async def _complete(self, job: RunningJob, outcome: Outcome, *, retryable: bool = True,
                        log_chunks_lost: int = 0) -> None:
        for delay in (0.1, 0.5, 1, 2, 5, 10):
            try:
                recorded = await self.store.complete_job(
                    self.settings.name, job.id, job.attempt, outcome.status, outcome.result,
                    outcome.error, self.settings.retry_backoff_s, retryable=retryable,
                    log_chunks_lost=log_chunks_lost)
                if not recorded["repeat"]:
                    events.job_finished(recorded, outcome.error)
                return
            except TagrunError as exc:
                log.warning("job.completion_refused",
                            extra={"job_id": job.id, "error": exc.message})
                if isinstance(exc, InvalidInput) and retryable:
                    # The database will refuse this outcome every time: fail the job now,
                    # saying why, rather than leave it running until its lease expires.
                    message = f"the database refused the job's result: {exc.message}"
                    failed = Outcome("failed", error={"kind": ErrorKind.INTERNAL,
                                                      "message": message})
                    await self._complete(job, failed, retryable=False,
                                         log_chunks_lost=log_chunks_lost)
                return
            except DATABASE_ERRORS as exc:
                log.warning("job.completion_retry", extra={"job_id": job.id, "error": str(exc)})
                await asyncio.sleep(delay)
        log.error("job.completion_abandoned", extra={"job_id": job.id})  # expiry requeues it

    def _cancel_now(self, job_id: int) -> None:
        """A cancel reaches a direct worker at once; the next heartbeat would confirm it."""
        if job_id in self.running:
            log.info("job.cancelling", extra={"job_id": job_id})
            self.running[job_id].execution.cancel()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            held = [(j.id, j.attempt) for j in self.running.values() if not j.lost]
            try:
                cancel, lost = await self.store.extend_leases(
                    self.settings.name, held, self.settings.lease_s)
            except DATABASE_ERRORS as exc:
                log.warning("worker.heartbeat_failed", extra={"error": str(exc)})
                continue
            for job_id in cancel:
                self._cancel_now(job_id)
            for job_id in lost:
                if job_id in self.running:
                    log.warning("job.lease_lost", extra={"job_id": job_id})
                    self.running[job_id].lost = True
                    self.running[job_id].execution.cancel()

    def kill_all(self) -> None:
        """Kill every running job's process tree now (the process is about to exit)."""
        for job in self.running.values():
            job.execution.cancel()

    async def _drain(self) -> None:
        tasks = [j.task for j in self.running.values() if j.task is not None]
        if not tasks:
            return
        log.info("worker.draining", extra={"running": len(tasks)})
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
        if not pending:
            return
        held = [(j.id, j.attempt) for j in self.running.values()]
        for job in self.running.values():
            job.lost = True  # released below: no completion for these
            job.execution.cancel()
        await asyncio.wait(pending, timeout=5)
        with contextlib.suppress(*DATABASE_ERRORS):
            released = await self.store.release_jobs(self.settings.name, held)
            log.info("worker.released", extra={"jobs": released})
