"""The lease holder, written once for both kinds: the direct worker (server/worker.py, over
the store) and the agent (agent/runner.py, over HTTP).

Each gives a `Port` that carries a job's log and outcome, heartbeats and releases to the
server or the database; this module does the rest, the same way for both. A claimed job runs
with its log streamed (`HeldJob`). A heartbeat renews the leases of the jobs held, cancels
those a user cancelled and abandons those lost (`Holder.beat`). While the holder cannot reach
the server the jobs run on, their logs waiting, and every write is retried until the job's
lease, as last renewed, would run out: then another holder may have the job, so it is killed
and what waited is dropped. On stop, jobs get the drain timeout to finish; those still running
are killed and handed back (`Holder.drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tagrun.shared import tracing
from tagrun.shared.agent_wire import AgentJob, CompletedJob, ErrorIn, SignatureCheck
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
from tagrun.shared.loglines import STDERR, STDOUT, Mark
from tagrun.shared.logstream import Backlog, LogStream, StreamEnded
from tagrun.shared.redact import Redactor
from tagrun.shared.signing import SIGNATURE_INVALID, Verifier
from tagrun.shared.workdirs import remove_tree

Deadline = Callable[[], float]  # the time.monotonic() after which a call stops retrying
Held = list[tuple[int, int]]  # (job id, attempt) of jobs held
LEASE_RAN_OUT = "its lease ran out while the server was out of reach"
KILL_GRACE_S = 10.0  # after killing jobs: time for their last logs and the release


class LeaseGone(Exception):
    """The holder no longer holds the job's lease: another may run it now."""


class OutOfReach(Exception):
    """The server (or database) stayed out of reach until the call's deadline."""


class Refused(Exception):
    """The server would not take this (a result too large, say). `again`: it would refuse
    the same outcome every time, so the job should fail now, saying why."""

    def __init__(self, message: str, *, again: bool = False) -> None:
        super().__init__(message)
        self.again = again


class Fatal(Exception):
    """The holder itself can go on no more (the agent's token was refused)."""


class Port(Protocol):
    """How a holder reaches the server. Calls with `until` retry what is transient until
    then and raise OutOfReach after; each raises LeaseGone, Refused or Fatal as it applies."""

    name: str

    async def append_logs(self, job: AgentJob, offset: int, data: str, until: Deadline,
                          marks: Sequence[Mark] = ()) -> None:
        """`marks`: where the chunk's lines begin, when, on which stream (loglines.py)."""
        ...

    async def complete(self, job: AgentJob, outcome: CompletedJob, until: Deadline) -> None: ...

    async def heartbeat(self, held: Held, acknowledges: bool
                        ) -> tuple[list[int], list[int], float]:
        """(ids to cancel, ids lost) of `held`, and the time.monotonic() at which the
        heartbeat that got through was sent: the leases run from then."""
        ...

    async def release(self, held: Held) -> list[int]: ...

    async def refuse(self, job: AgentJob, kind: str, reason: str) -> bool:
        """Give back a job the holder will not run (`kind` policy or hook), saying why:
        no attempt used, and the server leases it to this holder no more. True if it was
        still the holder's to give back."""
        ...


@dataclass(frozen=True)
class Refusal:
    """Why a holder will not run a job: its local policy or its pre-job hook said no."""

    kind: str  # policy, hook
    reason: str


# A holder's check before it runs a job (after its signature checked out): a Refusal gives
# the job back unrun.
Gate = Callable[[AgentJob], Awaitable[Refusal | None]]


class HeldJob:
    """One claimed job, run under its lease and reported through the port."""

    def __init__(
        self, job: AgentJob, port: Port, work_root: Path, log: logging.Logger, *,
        python_cmd: list[str] | None = None, user: JobUser | None = None,
        spool_bytes: int | None = None, on_fatal: Callable[[Fatal], None] | None = None,
        redact: Mapping[str, str] | None = None, withhold: frozenset[str] = frozenset(),
        verifier: Verifier | None = None, gate: Gate | None = None,
    ) -> None:
        """`redact`: values ({name: value}) redacted from the job's log, result and error
        besides its own secrets (the holder's credentials); `withhold`: this process's
        environment variables the job's process never gets; `verifier`: the holder's
        trusted keys, when it checks jobs' signatures before running them; `gate`: what
        may still refuse the job then (an agent's local policy and pre-job hook)."""
        self.job = job
        self.refusal: Refusal | None = None  # why it was given back unrun
        self._verifier = verifier
        self._gate = gate
        self._signature_check: SignatureCheck | None = None
        self._retryable = True
        self.lost = False  # lease lost or job released: its outcome must not be reported
        self.executing = True
        self.on_executed: Callable[[], None] | None = None  # its slot is free (Holder)
        # The lease as the server granted it: from the claim, then from the sending of each
        # heartbeat that renewed it (never later than the server's own clock has it).
        self.lease_until = time.monotonic() + job.lease_s
        self._port = port
        self._log = log
        self._on_fatal = on_fatal
        self._work_dir = work_root / f"job{job.id}-{job.attempt}-{secrets.token_hex(3)}"
        # Past a megabyte the log waits in a 0600 spool file beside (not in) the job's
        # directory, out of the job's reach; without one it waits in memory.
        spool = self._work_dir.with_name(self._work_dir.name + ".log")
        backlog = Backlog(spool, spool_bytes, job_id=job.id) if spool_bytes else None
        self._stream = LogStream(self._send_logs, job.log_offset, job_id=job.id,
                                 backlog=backlog, marks=job.log_marks)
        self._discarding: asyncio.Task[None] | None = None
        if job.attempt > 1:
            self._stream.write(f"\n--- attempt {job.attempt} ---\n")
        for name, reason in job.withheld.items():
            self._stream.write(f"[tagrun: secret {name} was not given to this job: {reason}]\n")
        # The job's own secrets win over a holder's value of the same name; without any, the
        # holder's redactor is built once, not per job.
        self._redactor = Redactor({**(redact or {}), **job.secrets}) if job.secrets \
            else _holder_redactor(tuple(sorted((redact or {}).items())))
        # One redacting stream per pipe: a secret split across writes of one is still whole.
        self._outputs = {STDOUT: self._redactor.stream(), STDERR: self._redactor.stream()}
        env = {**job.secrets,
               **job_identity_env(job.id, job.workspace, job.attempt, job.tag, port.name)}
        self._span = _run_span(job, port.name)
        if traceparent := self._span.traceparent if self._span else job.traceparent:
            env["TRACEPARENT"] = traceparent  # the job's own spans join its trace
        spec = ExecSpec(job.language, job.content, job.args, job.timeout_s, self._work_dir,
                        python_cmd=python_cmd, env=env, user=user, withhold=withhold)
        self._execution = Execution(spec, on_stream=self._write)

    def _write(self, text: str, stream: str) -> None:
        """The job's output, redacted on its way to the log (a possible start of a secret
        waits for the next write of its stream)."""
        if data := self._outputs[stream].write(text):
            self._stream.write(data, stream)

    def cancel(self) -> None:
        """Cancelled by a user: kill the process; the outcome is reported as cancelled."""
        if self.executing:
            self._log.info("job.cancelling", extra={"job_id": self.job.id,
                                                    "attempt": self.job.attempt})
        self._execution.cancel()

    def abandon(self, reason: str, *, lease_gone: bool = False) -> None:
        """The job is no longer ours to report (lost, released): kill it, report nothing.
        `lease_gone`: another may run it now, so its waiting log is dropped too."""
        if not self.lost and self.executing:
            self._log.warning("job.abandoned", extra={
                "job_id": self.job.id, "attempt": self.job.attempt, "reason": reason})
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
        watchdog = self._watch_lease()
        try:
            outcome = await self._execute()
            self.executing = False
            if self.on_executed is not None:  # the slot takes a new job while this reports
                self.on_executed()
            self._trace_outcome(outcome)
            for stream, output in self._outputs.items():
                if rest := output.flush():
                    self._stream.write(rest, stream)
            await self._stream.close()
            if self.lost:
                pass
            elif self.refusal is not None:
                await self._give_back(self.refusal)
            else:
                await self._report(outcome)
        except Fatal as exc:
            self._fatal(exc)
        finally:
            watchdog.cancel()
            if self._span is not None:
                self._span.end()
            if self._discarding is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._discarding
            if self.job.language not in NO_PROCESS:
                remove_tree(self._work_dir, self._log, job_id=self.job.id)

    def _trace_outcome(self, outcome: Outcome) -> None:
        if self._span is None:
            return
        self._span.set("tagrun.job.status", "lost" if self.lost else "refused"
                       if self.refusal is not None else outcome.status)
        if outcome.status != "succeeded" and outcome.error:
            self._span.fail(f"{outcome.error.get('kind')}: {outcome.error.get('message', '')}"
                            [:500])

    def _fatal(self, exc: Fatal) -> None:
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _watch_lease(self) -> _Watchdog:
        """Kill the job when its lease runs out unrenewed (the server out of reach all that
        time): by then the server has put it back in the queue. A timer, not a task: it
        costs nothing until the lease's end, when it looks again if the lease was renewed."""
        watchdog = _Watchdog()
        loop = asyncio.get_running_loop()

        def check() -> None:
            if (left := self.lease_until - time.monotonic()) > 0:
                watchdog.handle = loop.call_later(left, check)
                return
            self._log.warning("job.lease_ran_out", extra={
                "job_id": self.job.id, "attempt": self.job.attempt,
                "lease_s": self.job.lease_s})
            self.abandon(LEASE_RAN_OUT, lease_gone=True)

        watchdog.handle = loop.call_later(max(self.lease_until - time.monotonic(), 0), check)
        return watchdog

    def _verify(self) -> Outcome | None:
        """With a verifier: the job's signature checked before anything of it runs. A job
        that does not verify is refused unrun (AGENT_VERIFY=block: failed, never retried,
        since no holder with these keys would run it) or run with a warning (warn)."""
        if self._verifier is None:
            return None
        verdict = self._verifier.check(self.job)
        fields = {"job_id": self.job.id, "attempt": self.job.attempt, "key_id": verdict.key_id}
        if verdict.ok:  # said by the job's signature_check, not its log (no extra write)
            self._signature_check = SignatureCheck("verified", verdict.key_id, verdict.message)
            return None
        variable = self._verifier.source.removesuffix("_KEYS")
        if not self._verifier.blocks:
            self._signature_check = SignatureCheck("unverified", verdict.key_id,
                                                   verdict.message)
            self._log.warning("job.signature_unverified", extra={**fields,
                                                                "reason": verdict.message})
            self._stream.write(f"[tagrun: signature not verified: {verdict.message}; running "
                               f"it anyway ({variable}=warn)]\n")
            return None
        self._signature_check = SignatureCheck("refused", verdict.key_id, verdict.message)
        self._log.warning("job.signature_refused", extra={**fields, "reason": verdict.message})
        message = f"{verdict.message}: refused unrun by {self._port.name} ({variable}=block)"
        self._stream.write(f"[tagrun: {message}]\n")
        self._retryable = False
        return Outcome("failed", error={"kind": SIGNATURE_INVALID, "message": message})

    async def _execute(self) -> Outcome:
        if (refused := self._verify()) is not None:
            return refused
        if self._gate is not None and (refusal := await self._gate(self.job)) is not None:
            self.refusal = refusal
            self._stream.write(f"[tagrun: {self._port.name} will not run this job "
                               f"({refusal.kind}): {refusal.reason}; it goes back to the "
                               "queue without using an attempt]\n")
            return Outcome("failed")  # never reported: the job is given back
        if self.lost:  # lost while the gate decided
            return Outcome("failed")
        try:
            if self.job.language not in NO_PROCESS:
                self._work_dir.mkdir(mode=0o700)  # the job's alone (a job user's: chowned)
        except OSError as exc:
            message = f"cannot create the job's directory {self._work_dir}: {exc.strerror}"
            return Outcome("failed", error={"kind": ErrorKind.INTERNAL, "message": message})
        try:
            return await self._execution.run()
        except Exception as exc:  # noqa: BLE001 - an executor bug fails the job, not the holder
            self._log.exception("job.executor_crashed", extra={"job_id": self.job.id})
            return Outcome("failed", error={"kind": ErrorKind.INTERNAL, "message": str(exc)})

    async def _send_logs(self, offset: int, data: str, marks: list[Mark]) -> None:
        """LogStream's sink: StreamEnded stops the stream; a chunk the server refuses for
        another reason is marked lost in the log, and the rest still flows."""
        try:
            await self._port.append_logs(self.job, offset, data, self.lease_deadline, marks)
        except LeaseGone as exc:
            self.abandon("lease_lost", lease_gone=True)
            raise StreamEnded(str(exc)) from exc
        except Fatal as exc:
            self._fatal(exc)
            raise StreamEnded(str(exc)) from exc
        except OutOfReach as exc:  # until the lease ran out: the job is not ours any more
            self.abandon(LEASE_RAN_OUT, lease_gone=True)
            raise StreamEnded(str(exc)) from exc

    async def _give_back(self, refusal: Refusal) -> None:
        event = "job.policy_refused" if refusal.kind == "policy" else "job.hook_refused"
        fields = {"job_id": self.job.id, "attempt": self.job.attempt, "reason": refusal.reason}
        self._log.warning(event, extra=fields)
        try:
            await self._port.refuse(self.job, refusal.kind, refusal.reason)
        except (LeaseGone, Refused, OutOfReach) as exc:  # its lease runs out: requeued then
            self._log.error("job.refusal_failed", extra={**fields, "error": str(exc)})

    async def _report(self, outcome: Outcome) -> None:
        job = self.job
        outcome, retryable = sendable(outcome)
        retryable = retryable and self._retryable
        try:
            await self._complete(outcome, retryable=retryable)
        except LeaseGone:
            self._log.warning("job.lease_lost", extra={"job_id": job.id, "attempt": job.attempt})
        except Refused as exc:
            if exc.again and retryable:
                await self._report_refusal(exc)
            else:
                self._log.error("job.completion_refused", extra={"job_id": job.id,
                                                                 "error": str(exc)})
        except OutOfReach as exc:
            # Left to lease expiry, which requeues the job (or fails it when out of attempts).
            self._log.error("job.completion_abandoned", extra={"job_id": job.id,
                                                               "error": str(exc)})

    async def _report_refusal(self, refusal: Refused) -> None:
        """The server would not take the result (too large, not JSON it accepts): say so."""
        message = f"the server refused the job's result: {refusal}"
        try:  # the same result would be refused again: no retry
            await self._complete(Outcome("failed", error={"kind": ErrorKind.INTERNAL,
                                                          "message": message}), retryable=False)
        except (LeaseGone, Refused, OutOfReach) as exc:
            self._log.error("job.completion_refused", extra={"job_id": self.job.id,
                                                             "error": str(exc)})

    async def _complete(self, outcome: Outcome, *, retryable: bool = True) -> None:
        error, redacted = outcome.error, self._redactor
        done = CompletedJob(
            self.job.id, self.job.attempt, outcome.status, redacted.value(outcome.result),
            ErrorIn(error["kind"], redacted.text(error.get("message", ""))) if error else None,
            retryable, self._stream.lost_chunks, self._signature_check,
            # Only to a server that sent a traceparent: an older one refuses the field.
            self._span.traceparent if self._span and self.job.traceparent else None)
        await self._port.complete(self.job, done, self.lease_deadline)


@dataclass
class _Watchdog:
    handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


def _run_span(job: AgentJob, holder: str) -> tracing.Span | None:
    """The job's run span, when this process traces: a child of the job's trace (across
    the HTTP hop for an agent), else the root of a trace of its own."""
    tracer = tracing.tracer()
    if tracer is None:
        return None
    return tracer.start("tagrun.run", job.traceparent, {
        **tracing.job_attributes(job.id, job.workspace, job.tag, job.attempt),
        "tagrun.worker": holder, "tagrun.job.language": job.language}, kind="consumer")


@functools.lru_cache(maxsize=8)
def _holder_redactor(values: tuple[tuple[str, str], ...]) -> Redactor:
    return Redactor(dict(values))


class Holder:
    """The jobs one holder runs at once: started, renewed, cancelled, drained, released."""

    def __init__(self, port: Port, kind: str, log: logging.Logger, drain_timeout_s: float,
                 make: Callable[[AgentJob], HeldJob]) -> None:
        self.port = port
        self.kind = kind  # "agent" or "worker": the subject of the holder's own events
        self.runs: dict[int, HeldJob] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.slot_freed = asyncio.Event()
        self._log = log
        self._drain_timeout_s = drain_timeout_s
        self._make = make

    def __len__(self) -> int:
        return len(self.runs)

    def free(self, slots: int) -> int:
        """How many more jobs to take with `slots`: a job whose process has ended no longer
        takes a slot while its log and outcome are sent (the next claim overlaps them), but
        at most `slots` jobs may be reporting at once besides those running."""
        running = sum(1 for r in self.runs.values() if r.executing)
        return max(min(slots - running, 2 * slots - len(self.runs)), 0)

    def start(self, job: AgentJob) -> HeldJob:
        previous = self.runs.get(job.id)
        if previous is not None:  # handed out again: our old attempt's lease must be gone
            previous.abandon("claimed again")
        run = self._make(job)
        run.on_executed = self.slot_freed.set
        self.runs[job.id] = run
        self.tasks[job.id] = asyncio.create_task(self._run(run), name=f"job-{job.id}")
        return run

    async def _run(self, run: HeldJob) -> None:
        try:
            await run.run()
        finally:
            if self.runs.get(run.job.id) is run:
                del self.runs[run.job.id]
                del self.tasks[run.job.id]
            self.slot_freed.set()

    def cancel(self, job_id: int) -> None:
        if job_id in self.runs:
            self.runs[job_id].cancel()

    def held(self) -> list[HeldJob]:
        """The jobs whose leases are still ours."""
        return [r for r in self.runs.values() if not r.lost]

    async def beat(self, *, acknowledges: bool = False, empty: bool = False) -> None:
        """One heartbeat for every job held: leases renewed from when it was sent, cancels
        and losses acted on. Raises what the port's heartbeat raises. `empty`: sent even
        when no job is held (a direct worker's heartbeat also keeps its record alive)."""
        runs = self.held()
        if not runs and not empty:
            return
        cancel, lost, sent_at = await self.port.heartbeat(
            [(r.job.id, r.job.attempt) for r in runs], acknowledges)
        for run in runs:
            if run.job.id not in lost:
                run.renewed(sent_at)
        for job_id in cancel:
            self.cancel(job_id)
        for job_id in lost:
            if job_id in self.runs:
                self.runs[job_id].abandon("lease_lost", lease_gone=True)

    def kill_all(self, reason: str) -> None:
        """Kill every running job's process tree now (the holder is about to exit)."""
        for run in self.runs.values():
            run.abandon(reason)

    async def drain(self) -> None:
        """Let running jobs finish for up to the drain timeout; then kill those still
        executing and hand them back (those already reporting finish)."""
        if not self.tasks:
            return
        event = "agent.draining" if self.kind == "agent" else "worker.draining"
        self._log.info(event, extra={
            "running": len(self.tasks), "timeout_s": self._drain_timeout_s})
        _, pending = await asyncio.wait(list(self.tasks.values()),
                                        timeout=self._drain_timeout_s)
        if not pending:
            return
        killed = [r for r in self.runs.values() if r.executing and not r.lost]
        for run in killed:
            run.abandon("drain timeout")
        _, late = await asyncio.wait(pending, timeout=KILL_GRACE_S)
        for task in late:
            task.cancel()
        await self.release([(r.job.id, r.job.attempt) for r in killed])

    async def release(self, held: Held) -> None:
        if not held:
            return
        try:
            released = await self.port.release(held)
        except (Refused, OutOfReach) as exc:
            failed = "agent.release_failed" if self.kind == "agent" else "worker.release_failed"
            self._log.error(failed, extra={"jobs": [j for j, _ in held], "error": str(exc)})
            return
        self._log.info("agent.released" if self.kind == "agent" else "worker.released",
                       extra={"jobs": released})
