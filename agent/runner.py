"""The agent: INIT_SCRIPT, then long-poll claims, run jobs, heartbeat, drain on stop.

The HTTP twin of the direct worker (tagrun.server.worker). Stop: the first signal stops
claiming and lets running jobs finish for up to the drain timeout, then kills and releases
them (exit 0); a second signal kills everything at once (exit 130). A refused token ends the
agent with exit code 3 wherever it shows up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

from tagrun.agent.client import AgentClient, RetryPolicy
from tagrun.agent.completions import Completions
from tagrun.agent.config import AgentConfig
from tagrun.agent.errors import (
    REFUSED_FOR_WHAT_WAS_SENT,
    AgentError,
    ConfigError,
    InitScriptFailed,
    ServerAnswer,
    TokenRefused,
    VersionRefused,
)
from tagrun.agent.frozen import python_command
from tagrun.agent.jobs import HttpPort
from tagrun.agent.policy import PreJobHook, Refusals
from tagrun.agent.signals import install_stop_handlers
from tagrun.agent.workroot import run_directory
from tagrun.shared.agent_wire import DEFAULT_HEARTBEAT_S, AgentJob, claimed_job
from tagrun.shared.executors import ExecSpec, Execution
from tagrun.shared.holder import KILL_GRACE_S, Fatal, HeldJob, Holder, Refusal
from tagrun.shared.logfmt import event
from tagrun.shared.redact import env_secrets
from tagrun.shared.signing import Verifier
from tagrun.shared.version import __version__
from tagrun.shared.workdirs import remove_tree

log = logging.getLogger("tagrun.agent")

T = TypeVar("T")

EXIT_OK = 0
EXIT_ABORTED = 130
EMPTY_PAUSE_S = 1.0
ACK_DELAY_S = 0.5  # after a job starts, its acknowledgement (a heartbeat) waits this at most
_INIT_OUTPUT_CHARS = 64 * 1024


class Agent:
    def __init__(self, config: AgentConfig, client: AgentClient) -> None:
        self.config = config
        self._client = client
        self._python_cmd = python_command(config.python)
        self._completions = Completions(client)
        self._holder = Holder(HttpPort(client, self._completions), "agent", log,
                              config.drain_timeout_s, self._held_job)
        # The claim loop waits for a slot, and a job has just freed one: that job's outcome
        # (and those of jobs ending with it) is carried by the claim that follows
        # (Completions.riding). An outcome that comes later (its job's last output was still
        # being sent) would wait for the next slot to free, maybe for hours: it goes alone.
        self._parked = False
        self._completions.riding = lambda: self._parked and self._holder.slot_freed.is_set()
        self._stopping = asyncio.Event()
        self._aborted = asyncio.Event()
        self._job_started = asyncio.Event()
        self._ack_wanted = asyncio.Event()  # a job started that the server wants acknowledged
        self._unacked: dict[int, float] = {}  # such jobs: id -> its ack_s
        self._fatal: Fatal | None = None
        self._claimed = False  # it has asked for jobs: the server has (or may have) its record
        self._stop_reason = "stopped"
        self._exit_code = EXIT_OK  # a clean stop's code: 4 when the server refused our version
        self._jobs_taken = 0  # jobs started (AGENT_EXIT_AFTER_JOBS counts them)
        self._connected_logged = False
        self._was_paused = ""  # what the server last said: "", "paused" or "quarantined"
        self._heartbeats: asyncio.Task[None] | None = None
        self._work_root = config.work_dir or Path(tempfile.gettempdir())  # set by run()
        # Redacted from every job's output besides its own secrets: the agent's variables
        # named like credentials (AGENT_REDACT_VARS), and its token.
        self._redact = {**env_secrets(os.environ, config.redact_vars),
                        "AGENT_TOKEN": config.token}
        self._hook = PreJobHook(config.pre_job_hook, config.pre_job_hook_timeout_s) \
            if config.pre_job_hook else None
        self._refusals = Refusals()  # jobs it refused: its claims ask for them no more

    def request_stop(self, reason: str = "stopped") -> None:
        """First call: drain and stop (`reason`: what the goodbye says). Any later call: stop
        at once."""
        if not self._stopping.is_set():
            self._stop_reason = reason
            log.info("agent.stopping", extra={"agent": self.config.name, "reason": reason,
                                              "running": len(self._holder)})
            self._stopping.set()
        elif not self._aborted.is_set():
            log.warning("agent.aborting", extra={"agent": self.config.name,
                                                 "running": len(self._holder)})
            self._aborted.set()

    async def run(self, *, handle_signals: bool = True) -> int:
        """Run until stopped; returns the process exit code."""
        # Jobs inherit our environment: they must not be able to read (or log) the token, nor
        # learn where its file is (see secrecy.py for the environment the process started with).
        for variable in ("AGENT_TOKEN", "AGENT_TOKEN_FILE"):
            os.environ.pop(variable, None)
        if self.config.bash is not None:  # where the executor looks (and its absolute path)
            os.environ["AGENT_BASH"] = self.config.bash
        undo = install_stop_handlers(self.request_stop) if handle_signals else None
        try:
            with run_directory(self.config.work_dir, shared=self.config.job_user is not None) \
                    as self._work_root:
                code = await self._supervise()
            if code == EXIT_OK and self._claimed:  # last: the server shows us stopped at once
                await self._client.goodbye(self._stop_reason)
            if code == EXIT_OK:
                code = self._exit_code
        finally:
            if undo is not None:
                undo()
        log.info("agent.stopped", extra={"agent": self.config.name, "exit_code": code})
        return code

    async def _supervise(self) -> int:
        body = asyncio.create_task(self._serve(), name="agent")
        aborted = asyncio.create_task(self._aborted.wait())
        await asyncio.wait([body, aborted], return_when=asyncio.FIRST_COMPLETED)
        aborted.cancel()
        error = body.exception() if body.done() else None
        if body.done() and error is None and self._fatal is None:
            return EXIT_OK
        await self._kill_everything(body)
        if self._fatal is not None or isinstance(error, TokenRefused):
            log.error("agent.token_refused", extra={
                "agent": self.config.name, "detail": str(self._fatal or error)})
            return TokenRefused.exit_code
        if error is None:
            return EXIT_ABORTED
        if isinstance(error, AgentError):
            self._log_error(error)
            return error.exit_code
        raise error

    def _log_error(self, error: AgentError) -> None:
        extra: dict[str, Any] = {"agent": self.config.name, "error": str(error)}
        if isinstance(error, InitScriptFailed):
            log.error("agent.init_script_failed", extra={**extra, "output": error.output})
        else:
            log.error("agent.failed", extra=extra)

    async def _serve(self) -> None:
        await self._check_job_user()
        await self._run_init_script()
        if self._stopping.is_set():
            return
        log.info("agent.started", extra={
            "agent": self.config.name, "version": __version__, "server": self.config.base_url,
            "slots": self.config.slots, "work_dir": str(self._work_root),
            **_verify_fields(self.config.verifier), **_policy_fields(self.config)})
        self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        self._claimed = True
        await self._claim_loop()
        await self._holder.drain()
        self._heartbeats.cancel()

    # -- AGENT_JOB_USER ---------------------------------------------------------------------

    async def _check_job_user(self) -> None:
        """Start nothing unless a shell job and a Python job really run as AGENT_JOB_USER."""
        user = self.config.job_user
        if user is None:
            return
        # The agent executable's folder is shared as installed (the archive's modes): the Python
        # probe also proves that user can start it. Through the args and result files too:
        # their absolute paths must be reachable.
        probes = [(_shell(), 'id -u > "$TAGRUN_RESULT_FILE"'),
                  ("python", "import os\n\ndef main():\n    return os.getuid()\n")]
        for language, content in probes:
            work_dir = Path(tempfile.mkdtemp(prefix="probe-", dir=self._work_root))
            output: list[str] = []
            spec = ExecSpec(language, content, {}, 60.0, work_dir, python_cmd=self._python_cmd,
                            user=user)
            try:
                outcome = await Execution(spec, output.append).run()
            finally:
                remove_tree(work_dir, log)
            if outcome.status != "succeeded" or outcome.result != user.uid:
                reason = (outcome.error or {}).get("message") or "".join(output)[-500:].strip()
                raise ConfigError(f"AGENT_JOB_USER={user.name!r}: a {language} job cannot run "
                                  f"as that user: {reason or 'it ran as another user'}")
        log.info("agent.job_user", extra={"user": user.name, "uid": user.uid})

    # -- INIT_SCRIPT ------------------------------------------------------------------------

    async def _run_init_script(self) -> None:
        script = self.config.init_script
        if script is None:
            return
        work_dir = Path(tempfile.mkdtemp(prefix="init-", dir=self._work_root))
        output: list[str] = []
        language = self.config.init_script_language
        spec = ExecSpec(language, script, {}, None, work_dir, python_cmd=self._python_cmd)
        log.info("agent.init_script_started", extra={"language": language})
        try:
            task = asyncio.create_task(Execution(spec, output.append).run())
            if not await self._unless_stopping(task):
                return
            outcome = task.result()
        finally:
            remove_tree(work_dir, log)
        text = "".join(output)[-_INIT_OUTPUT_CHARS:]
        if outcome.status != "succeeded":
            message = (outcome.error or {}).get("message", outcome.status)
            raise InitScriptFailed(
                f"INIT_SCRIPT failed: {message} (INIT_SCRIPT_LANGUAGE={language})", text)
        log.info("agent.init_script_done", extra={"output": text})

    # -- claiming ---------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        try:
            await self._claim_jobs()
        finally:
            self._parked = False
            self._completions.unsent()  # no claim will carry them: each goes on its own

    async def _claim_jobs(self) -> None:
        slot_freed = self._holder.slot_freed
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            slot_freed.clear()
            free = self._holder.free(self.config.slots)
            if self._client.token_spent:  # its token's max_jobs are all claimed
                await self._finish_then_stop("token_spent")
                break
            if self.config.exit_after_jobs is not None:
                left = self.config.exit_after_jobs - self._jobs_taken
                if left <= 0:
                    await self._finish_then_stop("exit_after_jobs")
                    break
                free = min(free, left)
            if free <= 0:
                self._completions.unsent()  # those that came since: no claim is due for them
                self._parked = True
                try:
                    await self._unless_stopping(asyncio.create_task(slot_freed.wait()))
                finally:
                    self._parked = False
                await asyncio.sleep(0)  # the jobs that end in the same turn: one claim for all
                idle_since = time.monotonic()
                continue
            wait_s = self.config.poll_wait_s
            if self.config.exit_after_idle_s is not None and not self._holder.runs:
                idle_left = idle_since + self.config.exit_after_idle_s - time.monotonic()
                if idle_left <= 0:
                    self.request_stop("idle")
                    break
                wait_s = max(min(wait_s, idle_left), 1.0)
            started = time.monotonic()
            try:
                jobs, carried = await self._claim(free, wait_s)
            except VersionRefused as exc:  # it finishes what it runs, then stops (exit 4)
                log.error("agent.version_refused", extra={
                    "agent": self.config.name, "version": __version__, "detail": str(exc),
                    "running": len(self._holder)})
                self._exit_code = VersionRefused.exit_code
                self.request_stop("version_refused")
                break
            if jobs or self._holder.runs:
                idle_since = time.monotonic()
            self._heard()
            if jobs:
                event(log, logging.INFO, "agent.claimed", {"jobs": [j.get("id") for j in jobs]})
            elif not carried and time.monotonic() - started < wait_s / 2 \
                    and not self._client.token_spent:
                # An empty answer long before the wait was up (a server going away, say):
                # pause a moment rather than ask again in a tight loop.
                await self._unless_stopping(asyncio.create_task(asyncio.sleep(EMPTY_PAUSE_S)))
            for raw in jobs:
                self._start(raw)

    async def _finish_then_stop(self, reason: str) -> None:
        """Ephemeral: the jobs it runs go on to their end (no drain timeout), then it stops."""
        self._completions.unsent()
        slot_freed = self._holder.slot_freed
        if self._holder.runs:
            log.info("agent.finishing", extra={"agent": self.config.name, "reason": reason,
                                               "running": len(self._holder)})
        while self._holder.runs and not self._stopping.is_set():
            slot_freed.clear()
            await self._unless_stopping(asyncio.create_task(slot_freed.wait()))
        if not self._stopping.is_set():
            self.request_stop(reason)

    def _heard(self) -> None:
        """Act on what the server last said of this agent: paused, or asked to drain."""
        if self._client.server is not None and not self._connected_logged:
            self._connected_logged = True
            log.info("agent.connected", extra={"agent": self.config.name,
                                               **self._client.server})
        paused = "quarantined" if self._client.quarantined else \
            "paused" if self._client.paused else ""
        if paused != self._was_paused:
            self._was_paused = paused
            log.log(logging.WARNING if paused == "quarantined" else logging.INFO,
                    f"agent.{paused or 'resumed'}", extra={"agent": self.config.name})
        if self._client.drain_requested and not self._stopping.is_set():
            log.info("agent.drain_requested", extra={"agent": self.config.name,
                                                     "running": len(self._holder)})
            self.request_stop("drained")

    async def _claim(self, free: int, wait_s: float) -> tuple[list[dict[str, Any]], bool]:
        """The jobs claimed, and whether the claim carried outcomes (answered at once)."""
        claim = asyncio.create_task(self._claim_carrying(free, wait_s))
        # A claim answered as the stop came is kept: its jobs run, then drain like the rest.
        return claim.result() if await self._unless_stopping(claim) else ([], False)

    async def _claim_carrying(self, free: int, wait_s: float
                              ) -> tuple[list[dict[str, Any]], bool]:
        """The claim, with the outcomes of the jobs whose end freed its slots (then the server
        answers at once). If it fails, they are sent on their own: each hears its answer."""
        riders = self._completions.riders()
        try:
            jobs, answers = await self._client.claim_with(
                free, 0.0 if riders else wait_s, self._refusals.ids(),
                running=len(self._holder), completed=[p.item for p in riders])
        except ServerAnswer as exc:
            self._completions.unsent(riders)
            if not riders or exc.status not in REFUSED_FOR_WHAT_WAS_SENT:
                raise
            # Refused for what it carried (a body over the server's limit, say): the claim
            # alone, while the outcomes go on their own and each hears its own answer.
            log.warning("agent.claim_refused_outcomes", extra={
                "agent": self.config.name, "jobs": [p.item.id for p in riders],
                "error": str(exc)})
            jobs, _ = await self._client.claim_with(free, wait_s, self._refusals.ids(),
                                                    running=len(self._holder))
            return jobs, False
        except BaseException:
            self._completions.unsent(riders)
            raise
        self._completions.answered(riders, answers)
        return jobs, bool(riders)

    async def _unless_stopping(self, task: asyncio.Task[T]) -> bool:
        """Wait for task unless a stop comes first (then cancel it). True if it finished."""
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            finished = task.done()
            if not finished:
                task.cancel()
                await asyncio.wait([task])
        return finished

    def _start(self, raw: dict[str, Any]) -> None:
        try:
            job = claimed_job(raw)
        except ValueError as exc:
            log.error("job.malformed", extra={"error": str(exc), "job_id": raw.get("id")})
            return
        self._holder.start(job)
        self._jobs_taken += 1
        self._job_started.set()
        if job.ack_s is not None:
            self._unacked[job.id] = job.ack_s
            self._ack_wanted.set()
        event(log, logging.INFO, "job.started", {
            "job_id": job.id, "attempt": job.attempt, "workspace": job.workspace,
            "agent": self.config.name})

    def _held_job(self, job: AgentJob) -> HeldJob:
        return HeldJob(job, self._holder.port, self._work_root, log,
                       python_cmd=self._python_cmd, user=self.config.job_user,
                       spool_bytes=self.config.log_spool_bytes, on_fatal=self._on_fatal,
                       redact=self._redact, verifier=self.config.verifier,
                       gate=self._gate if self.config.policy.restricts or self._hook else None)

    async def _gate(self, job: AgentJob) -> Refusal | None:
        """The local policy, then the pre-job hook: a job either refuses is given back."""
        refusal = self.config.policy.refusal(job)
        if refusal is None and self._hook is not None:
            refusal = await self._hook.refusal(job, self.config.name)
        if refusal is not None:
            self._refusals.add(job.id)
        return refusal

    def _on_fatal(self, error: Fatal) -> None:
        self._fatal = error
        self._aborted.set()

    # -- leases -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        try:
            while True:
                if not self._holder.runs:  # idle: the long-poll tells the server we are alive
                    self._job_started.clear()
                    await self._job_started.wait()
                await self._until_beat()
                await self._heartbeat()
        except TokenRefused as exc:
            self._on_fatal(exc)

    async def _until_beat(self) -> None:
        """The heartbeat interval, cut short when a job that must be acknowledged starts: then
        a moment later (jobs done by then were acknowledged by their completion)."""
        interval = asyncio.create_task(asyncio.sleep(self._heartbeat_interval()))
        wanted = asyncio.create_task(self._ack_wanted.wait())
        try:
            await asyncio.wait([interval, wanted], return_when=asyncio.FIRST_COMPLETED)
        finally:
            interval.cancel()
            wanted.cancel()
        if self._ack_wanted.is_set() and self._unacked:
            await asyncio.sleep(min(ACK_DELAY_S, min(self._unacked.values()) / 4))

    def _heartbeat_interval(self) -> float:
        return min((r.job.heartbeat_s for r in self._holder.runs.values()),
                   default=DEFAULT_HEARTBEAT_S)

    async def _heartbeat(self) -> None:
        self._ack_wanted.clear()
        acknowledges = bool(self._unacked)
        self._unacked.clear()  # this heartbeat acknowledges every job it names
        try:
            await self._holder.beat(acknowledges=acknowledges)
        except ServerAnswer as exc:
            log.error("agent.heartbeat_refused", extra={"error": str(exc)})
        self._heard()

    # -- stopping ---------------------------------------------------------------------------

    async def _kill_everything(self, body: asyncio.Task[None]) -> None:
        self._holder.kill_all("agent exiting")
        tasks = [body, *self._holder.tasks.values()]
        if self._heartbeats is not None:
            tasks.append(self._heartbeats)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=KILL_GRACE_S)


def _shell() -> str:
    if shutil.which("bash"):
        return "bash"
    if shutil.which("sh"):
        return "sh"
    return "powershell"


async def run_agent(config: AgentConfig, *, retry: RetryPolicy | None = None) -> int:
    """Run an agent with this config until it stops; returns the process exit code."""
    client = AgentClient(config.base_url, config.token, config.name, ca_file=config.ca_file,
                         retry=retry, verify=config.verifier.header() if config.verifier
                         else None, policy=config.policy.wire(), slots=config.slots)
    try:
        return await Agent(config, client).run()
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def _policy_fields(config: AgentConfig) -> dict[str, object]:
    """Its local policy and hook, for its start line."""
    policy = config.policy
    fields: dict[str, object] = {k: list(v) for k, v in (
        ("allow_languages", policy.languages), ("allow_workspaces", policy.workspaces),
        ("allow_scripts", policy.scripts)) if v is not None}
    if policy.restricts:
        fields["allow_inline"] = policy.inline
    if config.pre_job_hook is not None:
        fields["pre_job_hook"] = str(config.pre_job_hook)
    return fields


def _verify_fields(verifier: Verifier | None) -> dict[str, object]:
    """How the agent checks signatures, for its start line (never a key, only their ids)."""
    if verifier is None:
        return {"verify": "off"}
    return {"verify": verifier.mode, "verify_keys": verifier.key_ids()}
