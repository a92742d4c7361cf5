"""Jobs on Windows, for real: the Job Object ends every process a job started (normal exit,
cancel, timeout), each job has a hidden console of its own, PowerShell output arrives in
UTF-8, a crash is named by its NTSTATUS, bash is Git for Windows'. The pure functions behind
them are tested on every OS in tests/agent/test_job_interpreters.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tagrun.shared.executors import ErrorKind, ExecSpec, Execution, Outcome
from tagrun.shared.interpreters import find_bash

if sys.platform != "win32":
    pytest.skip("Windows only: the release workflow runs it", allow_module_level=True)

HAS_POWERSHELL = bool(shutil.which("pwsh") or shutil.which("powershell"))

# A grandchild that outlives its parent unless something ends it: detached from any console
# and in a process group of its own, its output nowhere near the job's pipes. Only the Job
# Object still holds it.
GRANDCHILD = """\
import subprocess, sys, time
sleeper = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(300)"],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    creationflags=subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP)
with open({pid_file!r}, "w") as f:
    f.write(str(sleeper.pid))
print("started", flush=True)
"""


def make_spec(tmp_path: Path, language: str, content: str, **kw: Any) -> ExecSpec:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    kw.setdefault("timeout_s", 60.0)
    return ExecSpec(language=language, content=content, args={}, work_dir=work, **kw)


def execute(tmp_path: Path, language: str, content: str, **kw: Any) -> tuple[Outcome, str]:
    chunks: list[str] = []
    outcome = asyncio.run(Execution(make_spec(tmp_path, language, content, **kw),
                                    chunks.append).run())
    return outcome, "".join(chunks)


def alive(pid: int) -> bool:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return bool(psutil.Process(pid).is_running())
    except psutil.NoSuchProcess:
        return False


def gone_within(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def kill(pid: int) -> None:
    import psutil

    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


def test_a_background_grandchild_ends_with_the_job_that_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    outcome, output = execute(tmp_path, "python", GRANDCHILD.format(pid_file=str(pid_file)))
    pid = int(pid_file.read_text())
    try:
        assert outcome == Outcome("succeeded", result="started"), output
        assert gone_within(pid), "the grandchild outlived its job"
    finally:
        kill(pid)


@pytest.mark.parametrize("ending", ["cancel", "timeout"])
def test_a_background_grandchild_ends_with_the_job_cancelled_or_timed_out(
    tmp_path: Path, ending: str
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = GRANDCHILD.format(pid_file=str(pid_file)) + "time.sleep(300)\n"
    spec = make_spec(tmp_path, "python", script, timeout_s=3.0 if ending == "timeout" else None)

    async def scenario() -> Outcome:
        started = asyncio.Event()
        execution = Execution(spec, lambda text: started.set() if "started" in text else None)
        task = asyncio.create_task(execution.run())
        await asyncio.wait_for(started.wait(), 30)
        if ending == "cancel":
            execution.cancel()
        return await asyncio.wait_for(task, 30)

    outcome = asyncio.run(scenario())
    pid = int(pid_file.read_text())
    try:
        expected = ErrorKind.CANCELLED if ending == "cancel" else ErrorKind.TIMEOUT
        assert outcome.error is not None and outcome.error["kind"] == expected, outcome
        assert gone_within(pid), f"the grandchild outlived its job ({ending})"
    finally:
        kill(pid)


def test_a_job_has_a_console_of_its_own(tmp_path: Path) -> None:
    # Ctrl+C and Ctrl+Break go to every process attached to the console they are pressed in:
    # the job must not be attached to the agent's (here: this test's) console.
    script = ("import ctypes\n"
              "ids = (ctypes.c_uint32 * 64)()\n"
              "n = ctypes.windll.kernel32.GetConsoleProcessList(ids, 64)\n"
              "print(sorted(ids[:min(n, 64)]))\n")
    outcome, output = execute(tmp_path, "python", script)
    assert outcome.status == "succeeded", output
    attached = outcome.result
    assert isinstance(attached, list) and attached, output  # it has a console
    assert os.getpid() not in attached


def test_a_crash_is_named_by_its_ntstatus(tmp_path: Path) -> None:
    # Reads address 0 in C (ctypes would turn that into an OSError), with Windows Error
    # Reporting's dialog suppressed; faulthandler is off, so nothing catches the crash.
    script = "import faulthandler\nfaulthandler._read_null()\n"
    outcome, output = execute(tmp_path, "python", script)
    assert outcome.error is not None, output
    assert outcome.error["message"].startswith("exit code 0xC0000005 (access violation)"), \
        outcome.error


@pytest.mark.skipif(not HAS_POWERSHELL, reason="neither pwsh nor powershell is on PATH")
def test_powershell_output_is_utf8(tmp_path: Path) -> None:
    text = "héllo ✓ Ωmega 日本"
    outcome, output = execute(tmp_path, "powershell", f"Write-Output '{text}'\n")
    assert outcome == Outcome("succeeded", result=text), output
    assert output == text + "\n" or output == text + "\r\n"


@pytest.mark.skipif(not HAS_POWERSHELL, reason="neither pwsh nor powershell is on PATH")
def test_powershell_errors_name_the_scripts_own_line(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "powershell", "Write-Output 'one'\n\nthrow 'bröken'\n")
    assert outcome.status == "failed", output
    assert "bröken" in output
    assert "script.ps1:3" in output, output  # the prologue shares line 1, adding none


@pytest.mark.skipif(not HAS_POWERSHELL, reason="neither pwsh nor powershell is on PATH")
def test_a_powershell_script_with_param_still_runs(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "powershell", "param([int]$n = 20)\nWrite-Output ($n*2)\n")
    assert outcome == Outcome("succeeded", result=40), output


GIT_BASH = find_bash(os.environ, windows=True, exists=os.path.isfile)


@pytest.mark.skipif(GIT_BASH is None, reason="no Git for Windows bash here")
def test_bash_jobs_run_git_for_windows_bash(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "bash", "uname -s\n")
    assert outcome.status == "succeeded", output
    assert str(outcome.result).upper().startswith(("MINGW", "MSYS")), outcome


WSL_LAUNCHER = Path(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32", "bash.exe")


@pytest.mark.skipif(not WSL_LAUNCHER.is_file(), reason="no WSL launcher on this machine")
def test_the_wsl_launcher_is_refused_as_agent_bash() -> None:
    from tagrun.agent.config import load_config
    from tagrun.agent.errors import ConfigError

    with pytest.raises(ConfigError, match="AGENT_BASH=.*WSL"):
        load_config({"AGENT_TOKEN": "t0ken", "BASE_INTERNAL_URL": "http://127.0.0.1:9",
                     "AGENT_BASH": str(WSL_LAUNCHER)}, warn=lambda message: None)
    assert GIT_BASH is None or "system32" not in GIT_BASH.lower()
