"""The agent's local policy and pre-job hook, on whatever OS runs the tests (the CI runs
tests/agent on Windows and macOS too): what is allowed, and a real hook process each way."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from tagrun.agent.policy import LocalPolicy, PreJobHook, Refusals
from tagrun.shared.agent_wire import AgentJob, JobSignature

WINDOWS = sys.platform == "win32"


def a_job(**fields: object) -> AgentJob:
    base: dict[str, object] = {"id": 5, "workspace": "prod", "language": "bash", "attempt": 1,
                               "content": "echo hi", "tag": "edge", "args": {"n": 1}}
    return AgentJob(**{**base, **fields})  # type: ignore[arg-type]


def test_the_policy_allows_what_it_names_and_nothing_else() -> None:
    policy = LocalPolicy(languages=("bash",), workspaces=("prod",),
                         scripts=("f/deploy/*", "f/db_?/x"), inline=False)
    assert policy.refusal(a_job(script="f/deploy/web/up")) is None  # * crosses /
    assert policy.refusal(a_job(script="f/db_1/x")) is None
    for job, words in (
        (a_job(script="f/deploy/x", language="python"), "language python is not in"),
        (a_job(script="f/deploy/x", workspace="dev"), "workspace dev is not in"),
        (a_job(script="f/dbx1/x"), "matches no AGENT_ALLOW_SCRIPTS glob"),
        (a_job(script="f/deployed"), "matches no AGENT_ALLOW_SCRIPTS glob"),
        (a_job(), "inline jobs are not allowed here"),
    ):
        refusal = policy.refusal(job)
        assert refusal is not None and refusal.kind == "policy" and words in refusal.reason
    assert LocalPolicy().refusal(a_job(language="python")) is None
    assert LocalPolicy(scripts=("f/*",), inline=True).refusal(a_job()) is None
    assert LocalPolicy(languages=("bash",)).wire() is not None


def hook_file(tmp_path: Path, posix: str, windows: str) -> Path:
    """A hook script for this OS: sh on POSIX, a .cmd on Windows."""
    path = tmp_path / ("hook.cmd" if WINDOWS else "hook.sh")
    path.write_text(windows if WINDOWS else posix, encoding="utf-8")
    path.chmod(0o755)
    return path


def refusal(hook: PreJobHook, job: AgentJob) -> object:
    return asyncio.run(hook.refusal(job, "agent-1"))


def test_a_hook_that_exits_0_lets_the_job_run_and_reads_its_metadata(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    path = hook_file(tmp_path, f'#!/bin/sh\ncat > "{seen}"\nexit 0\n',
                     f'@more > "{seen}"\r\n@exit /b 0\r\n')
    job = a_job(secrets={"DB_PASSWORD": "do-not-show"}, withheld={"OLD": "deleted"},
                signature=JobSignature(key_id="ci", sig="x"), script="f/deploy/x",
                script_version=3)
    assert refusal(PreJobHook(path, 30), job) is None
    meta = json.loads(seen.read_text(encoding="utf-8"))
    assert meta["secrets"] == ["DB_PASSWORD", "OLD"] and meta["args"] == {"n": 1}
    assert (meta["script"], meta["script_version"], meta["agent"]) == ("f/deploy/x", 3,
                                                                      "agent-1")
    assert meta["signature"] == {"key_id": "ci", "unsigned_args": False}
    assert "do-not-show" not in seen.read_text(encoding="utf-8")


def test_a_hook_that_exits_non_zero_refuses_with_its_first_line(tmp_path: Path) -> None:
    path = hook_file(tmp_path, "#!/bin/sh\necho\necho '  no deploys on Friday  '\necho more\n"
                               "exit 2\n",
                     "@echo no deploys on Friday\r\n@echo more\r\n@exit /b 2\r\n")
    found = refusal(PreJobHook(path, 30), a_job())
    assert found is not None and (found.kind, found.reason) == (  # type: ignore[attr-defined]
        "hook", "no deploys on Friday")
    (tmp_path / "silent").mkdir()
    silent = hook_file(tmp_path / "silent", "#!/bin/sh\nexit 7\n", "@exit /b 7\r\n")
    found = refusal(PreJobHook(silent, 30), a_job())
    assert found is not None and found.reason == "the pre-job hook exited 7"  # type: ignore[attr-defined]


def test_a_hook_that_hangs_or_cannot_start_refuses(tmp_path: Path) -> None:
    """A hung hook is killed with what it started (its child would hold the output pipe)."""
    slow = hook_file(tmp_path, "#!/bin/sh\nsleep 30\necho done\n",
                     "@ping -n 30 127.0.0.1 > nul\r\n@echo done\r\n")
    started = time.monotonic()
    found = refusal(PreJobHook(slow, 0.5), a_job())
    assert found is not None and "did not finish within 0.5 s" in found.reason  # type: ignore[attr-defined]
    assert time.monotonic() - started < 20
    gone = PreJobHook(tmp_path / "no-such-hook", 5)
    found = refusal(gone, a_job())
    assert found is not None and "could not start" in found.reason  # type: ignore[attr-defined]


def test_the_hook_never_gets_the_token(tmp_path: Path) -> None:
    seen = tmp_path / "env.txt"
    path = hook_file(tmp_path, f'#!/bin/sh\nenv > "{seen}"\n', f'@set > "{seen}"\r\n')
    os.environ["AGENT_TOKEN"] = "tok-en-value-1"
    try:
        assert refusal(PreJobHook(path, 30), a_job()) is None
    finally:
        del os.environ["AGENT_TOKEN"]
    env = seen.read_text(encoding="utf-8", errors="replace")
    assert "TAGRUN_JOB_ID=5" in env and "tok-en-value-1" not in env


def test_refused_jobs_are_remembered_for_the_claims() -> None:
    refusals = Refusals()
    for job_id in (9, 3, 9):
        refusals.add(job_id)
    assert refusals.ids() == [3, 9]
