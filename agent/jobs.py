"""One claimed job on this agent: run it, stream its logs, report its outcome over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tagrun.agent.client import AgentClient
from tagrun.agent.completions import Completions
from tagrun.agent.errors import GaveUp, ServerAnswer, TokenRefused
from tagrun.shared.agent_wire import AgentJob
from tagrun.shared.executors import (
    NO_PROCESS,
    ErrorKind,
    ExecSpec,
    Execution,
    JobUser,
    Outcome,
    job_identity_env,
    sendable,
)
from tagrun.shared.logstream import Backlog, LogStream, StreamEnded

log = logging.getLogger("tagrun.agent")

LEASE_RAN_OUT = "its lease ran out while the server was out of reach"

OnFatal = Callable[[TokenRefused], None]


class JobRun:
    """While the server is out of reach the job runs on: its log waits (on disk past a
    megabyte, in a 0600 spool file beside the job directories, out of the job's reach) and
    its writes are retried until its lease, as last renewed, would have run out. Then the
    server will have given the job to another: the agent kills it and drops what waited."""

    def __init__(
        self, job: AgentJob, client: AgentClient, completions: Completions, work_root: Path,
        python_cmd: list[str], on_fatal: OnFatal, user: JobUser | None = None, *,
        spool_bytes: int,
    ) -> None:
        self.job = job
        self.lost = False  # lease lost or job released: its outcome must not be reported
        self.executing = True
        # The lease as the server granted it: from the claim's answer, then from the sending
        # of each heartbeat that renewed it (never later than the server's own clock has it).
        self.lease_until = time.monotonic() + job.lease_s
        self._client = client
        self._completions = completions
        self._on_fatal = on_fatal
        self._work_dir = work_root / f"job{job.id}-{job.attempt}-{secrets.token_hex(3)}"
        backlog = Backlog(self._work_dir.with_name(self._work_dir.name + ".log"), spool_bytes,
                          job_id=job.id)
        self._stream = LogStream(self._send_logs, job.log_offset, job_id=job.id,
                                 backlog=backlog)
        self._discarding: asyncio.Task[None] | None = None
        if job.attempt > 1:
            self._stream.write(f"\n--- attempt {job.attempt} ---\n")
        env = job_identity_env(job.id, job.workspace, job.attempt, job.tag, client.name)
        spec = ExecSpec(job.language, job.content, job.args, job.timeout_s, self._work_dir,
                        python_cmd=python_cmd, env=env, user=user)
        self._execution = Execution(spec, self._stream.write)

    def cancel(self) -> None:
        """Cancelled by a user: kill the process; the outcome is reported as cancelled."""
        if self.executing:
            log.info("job.cancelling", extra={"job_id": self.job.id, "attempt": self.job.attempt})
        self._execution.cancel()

    def abandon(self, reason: str, *, lease_gone: bool = False) -> None:
        """The job is no longer ours to report (lost, released): kill it, report nothing.
        `lease_gone`: another may run it now, so its waiting log is dropped too."""
        if not self.lost and self.executing:
            log.warning("job.abandoned", extra={"job_id": self.job.id, "attempt": self.job.attempt,
                                                "reason": reason})
        # Once the job has ended, a heartbeat answer that crossed its completion calls it
        # lost: nothing to kill, and the completion's own answer says what became of it.
        self.lost = True
        self._execution.cancel()
        if lease_gone and self._discarding is None:
            self._discarding = asyncio.create_task(self._stream.discard(), name="log-discard")

    def renewed(self, sent_at: float) -> None:
        """A heartbeat sent at `sent_at` (time.monotonic()) renewed the lease."""
        self.lease_until = max(self.lease_until, sent_at + self.job.lease_s)

    def lease_deadline(self) -> float:
        return self.lease_until

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._watch_lease(), name=f"lease-{self.job.id}")
        try:
            outcome = await self._execute()
            self.executing = False
            await self._stream.close()
            if not self.lost:
                await self._report(outcome)
        except TokenRefused as exc:
            self._on_fatal(exc)
        finally:
            watchdog.cancel()
            if self._discarding is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._discarding
            if self.job.language not in NO_PROCESS:
                shutil.rmtree(self._work_dir, ignore_errors=True)

    async def _watch_lease(self) -> None:
        """Kill the job when its lease runs out unrenewed (the server out of reach all that
        time): by then the server has put it back in the queue."""
        while (left := self.lease_until - time.monotonic()) > 0:
            await asyncio.sleep(left)
        log.warning("job.lease_ran_out", extra={
            "job_id": self.job.id, "attempt": self.job.attempt, "lease_s": self.job.lease_s})
        self.abandon(LEASE_RAN_OUT, lease_gone=True)

    async def _execute(self) -> Outcome:
        try:
            if self.job.language not in NO_PROCESS:
                self._work_dir.mkdir(parents=True)
        except OSError as exc:
            message = f"cannot create the job's directory {self._work_dir}: {exc.strerror}"
            return Outcome("failed", error={"kind": ErrorKind.INTERNAL, "message": message})
        try:
            return await self._execution.run()
        except Exception as exc:  # noqa: BLE001 - an executor bug fails the job, not the agent
            log.exception("job.executor_crashed", extra={"job_id": self.job.id})
            return Outcome("failed", error={"kind": ErrorKind.INTERNAL, "message": str(exc)})

    async def _send_logs(self, offset: int, data: str) -> None:
        """LogStream's sink: StreamEnded stops the stream; a chunk the server refuses for
        another reason is marked lost in the log, and the rest still flows."""
        job = self.job
        try:
            await self._client.append_logs(job.workspace, job.id, job.attempt, offset, data,
                                           until=self.lease_deadline)
        except ServerAnswer as exc:
            if exc.lease_lost:
                self.abandon("lease_lost", lease_gone=True)
                raise StreamEnded(str(exc)) from exc
            raise
        except TokenRefused as exc:
            self._on_fatal(exc)
            raise StreamEnded(str(exc)) from exc
        except GaveUp as exc:  # out of reach until the lease ran out: the job is not ours
            self.abandon(LEASE_RAN_OUT, lease_gone=True)
            raise StreamEnded(str(exc)) from exc

    async def _report(self, outcome: Outcome) -> None:
        job = self.job
        outcome, retryable = sendable(outcome)
        try:
            await self._complete(outcome, retryable=retryable)
        except ServerAnswer as exc:
            if exc.lease_lost:
                log.warning("job.lease_lost", extra={"job_id": job.id, "attempt": job.attempt})
            elif exc.status in (400, 413, 422):
                await self._report_refusal(exc)
            else:
                log.error("job.completion_refused", extra={"job_id": job.id, "error": str(exc)})
        except GaveUp as exc:
            # Left to lease expiry, which requeues the job (or fails it when out of attempts).
            log.error("job.completion_abandoned", extra={"job_id": job.id, "error": str(exc)})

    async def _report_refusal(self, refusal: ServerAnswer) -> None:
        """The server would not take the result (too large, not JSON it accepts): say so."""
        message = f"the server refused the job's result: {refusal.code}: {refusal.message}"
        try:  # the same result would be refused again: no retry
            await self._complete(Outcome("failed", error={"kind": ErrorKind.INTERNAL,
                                                          "message": message}), retryable=False)
        except (ServerAnswer, GaveUp) as exc:
            log.error("job.completion_refused", extra={"job_id": self.job.id, "error": str(exc)})

    async def _complete(self, outcome: Outcome, *, retryable: bool = True) -> None:
        job = self.job
        status = await self._completions.complete(
            job.workspace, job.id, job.attempt, outcome.status, outcome.result, outcome.error,
            retryable=retryable, until=self.lease_deadline,
            log_chunks_lost=self._stream.lost_chunks)
        log.info("job.completed", extra={"job_id": job.id, "attempt": job.attempt,
                                         "status": status, "outcome": outcome.status})
