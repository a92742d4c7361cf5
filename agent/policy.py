"""The agent's local policy (AGENT_ALLOW_*) and pre-job hook (AGENT_PRE_JOB_HOOK): what this
machine's owner lets run here, whatever the server sends (docs/signing.md).

The policy travels with every claim, so the server leases nothing outside it; the agent checks
it again before running a job, and gives back (no attempt used) what falls outside. The hook
is a local executable run before each job with the job's metadata as JSON on stdin (never a
secret's value); a non-zero exit gives the job back with the hook's first output line as the
reason, and the agent asks the server for it no more.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tagrun.shared.agent_wire import AgentJob, ClaimPolicy
from tagrun.shared.executors import OWN_GROUP, kill_tree
from tagrun.shared.holder import Refusal

HOOK_OUTPUT_LIMIT = 64 * 1024
REFUSED_KEPT_S = 3600.0  # a refused job is not asked for again for this long
REFUSED_KEPT = 1000


@dataclass(frozen=True)
class LocalPolicy:
    """None: any. `scripts` are globs on script paths (* and ? match any characters, /
    included); `inline` says whether jobs with no script may run."""

    languages: tuple[str, ...] | None = None
    workspaces: tuple[str, ...] | None = None
    scripts: tuple[str, ...] | None = None
    inline: bool = True

    @property
    def restricts(self) -> bool:
        return self != LocalPolicy()

    def wire(self) -> ClaimPolicy | None:
        if not self.restricts:
            return None
        return ClaimPolicy(
            languages=list(self.languages) if self.languages is not None else None,
            workspaces=list(self.workspaces) if self.workspaces is not None else None,
            scripts=list(self.scripts) if self.scripts is not None else None,
            inline=self.inline)

    def refusal(self, job: AgentJob) -> Refusal | None:
        """Why this job is outside the policy, or None."""
        if self.languages is not None and job.language not in self.languages:
            return Refusal("policy", f"language {job.language} is not in AGENT_ALLOW_LANGUAGES "
                                     f"({','.join(self.languages)})")
        if self.workspaces is not None and job.workspace not in self.workspaces:
            return Refusal("policy", f"workspace {job.workspace} is not in "
                                     f"AGENT_ALLOW_WORKSPACES ({','.join(self.workspaces)})")
        if job.script is None:
            if not self.inline:
                return Refusal("policy", "inline jobs are not allowed here "
                                         "(AGENT_ALLOW_INLINE=false)")
        elif self.scripts is not None and not any(
                fnmatch.fnmatchcase(job.script, glob) for glob in self.scripts):
            return Refusal("policy", f"script {job.script} matches no AGENT_ALLOW_SCRIPTS "
                                     f"glob ({','.join(self.scripts)})")
        return None


def hook_input(job: AgentJob, agent: str) -> bytes:
    """What the hook reads on stdin: the job's metadata, never a secret's value."""
    signature = job.signature
    return json.dumps({
        "id": job.id, "workspace": job.workspace, "attempt": job.attempt, "agent": agent,
        "script": job.script, "script_version": job.script_version, "language": job.language,
        "content_sha256": hashlib.sha256(job.content.encode("utf-8", "surrogatepass"))
        .hexdigest(),
        "tag": job.tag, "args": job.args, "timeout_s": job.timeout_s,
        "secrets": sorted({*job.secrets, *job.withheld}),
        "signature": {"key_id": signature.key_id, "unsigned_args": signature.unsigned_args}
        if signature else None,
    }).encode()


def hook_argv(path: Path) -> list[str]:
    """How to start the hook: Windows runs .cmd and .bat through cmd, .ps1 through
    PowerShell; everything else is executed as it is."""
    suffix = path.suffix.lower()
    if sys.platform == "win32" and suffix in (".cmd", ".bat"):
        return [os.environ.get("COMSPEC", "cmd.exe"), "/d", "/c", str(path)]
    if sys.platform == "win32" and suffix == ".ps1":
        return ["powershell", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass",
                "-File", str(path)]
    return [str(path)]


class PreJobHook:
    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def refusal(self, job: AgentJob, agent: str) -> Refusal | None:
        """Run the hook for `job`: None if it exits 0, else why it refused. A hook that
        cannot start or does not finish in time refuses too (the job runs nowhere it was
        not allowed)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("AGENT_TOKEN", "AGENT_TOKEN_FILE")}
        env.update({"TAGRUN_JOB_ID": str(job.id), "TAGRUN_WORKSPACE": job.workspace,
                    "TAGRUN_JOB_TAG": job.tag, "TAGRUN_WORKER": agent})
        try:
            proc = await asyncio.create_subprocess_exec(
                *hook_argv(self.path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, **OWN_GROUP)
        except OSError as exc:
            return Refusal("hook", f"the pre-job hook {self.path} could not start: "
                                   f"{exc.strerror or exc}")
        try:
            output, _ = await asyncio.wait_for(proc.communicate(hook_input(job, agent)),
                                               self.timeout_s)
        except TimeoutError:
            if proc.returncode is None:
                kill_tree(proc.pid)  # with whatever it started
            await proc.wait()
            return Refusal("hook", f"the pre-job hook did not finish within "
                                   f"{self.timeout_s:g} s (AGENT_PRE_JOB_HOOK_TIMEOUT_S)")
        if proc.returncode == 0:
            return None
        lines = output[:HOOK_OUTPUT_LIMIT].decode("utf-8", "replace").splitlines()
        first = next((line.strip() for line in lines if line.strip()), "")
        return Refusal("hook", first[:300] or f"the pre-job hook exited {proc.returncode}")


class Refusals:
    """The jobs this agent refused lately: its claims ask the server never to lease them to
    it again (kept for an hour, at most a thousand)."""

    def __init__(self) -> None:
        self._at: dict[int, float] = {}

    def add(self, job_id: int) -> None:
        self._at[job_id] = time.monotonic()
        if len(self._at) > REFUSED_KEPT:
            oldest = min(self._at, key=self._at.__getitem__)
            del self._at[oldest]

    def ids(self) -> list[int]:
        cutoff = time.monotonic() - REFUSED_KEPT_S
        for job_id in [j for j, at in self._at.items() if at < cutoff]:
            del self._at[job_id]
        return sorted(self._at)
