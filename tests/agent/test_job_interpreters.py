"""What runs a job's script, and what its end is called: which bash (AGENT_BASH, Git for
Windows, never WSL's launcher), INIT_SCRIPT_LANGUAGE, PowerShell's UTF-8 prologue, crash codes
as NTSTATUS, the Job Object's layout. The Windows decisions are pure functions, checked here
on any OS; tests/agent/test_windows_jobs.py runs them for real on Windows."""

from __future__ import annotations

import asyncio
import ctypes
import json
import ntpath
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tagrun.agent.config import AgentConfig, load_config
from tagrun.agent.errors import ConfigError
from tagrun.shared.executors import ExecSpec, Execution, describe_exit
from tagrun.shared.interpreters import (
    NO_BASH_ON_WINDOWS,
    find_bash,
    is_wsl_launcher,
    with_utf8_output,
)
from tagrun.shared.winjob import (
    BasicLimitInformation,
    ExtendedLimitInformation,
    JobObject,
    JobObjectError,
    kill_on_close_limits,
)
from tests.agent.fakes import TOKEN, FakeServer, job

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")

GIT = r"C:\Program Files\Git\bin\bash.exe"
WSL = r"C:\Windows\System32\bash.exe"
WINDOWS_ENV = {"PROGRAMFILES": r"C:\Program Files", "PROGRAMFILES(X86)": r"C:\Program Files (x86)",
               "LOCALAPPDATA": r"C:\Users\ada\AppData\Local", "PATH": r"C:\Windows\System32"}


def only(*paths: str) -> Callable[[str], bool]:
    """An `exists` that knows these files (compared as Windows compares paths)."""
    known = {ntpath.normcase(p) for p in paths}
    return lambda path: ntpath.normcase(path) in known


def which_finding(**found: str) -> Callable[..., str | None]:
    """A shutil.which that finds these commands, e.g. which_finding(bash=WSL)."""
    return lambda name, path=None: found.get(name)


# -- which bash ---------------------------------------------------------------------------

def test_agent_bash_wins_on_every_os() -> None:
    for windows in (False, True):
        env = {"AGENT_BASH": r"D:\msys64\usr\bin\bash.exe", **WINDOWS_ENV}
        assert find_bash(env, windows=windows, exists=only(GIT),
                         which=which_finding(bash="/usr/bin/bash")) == env["AGENT_BASH"]


def test_windows_reads_its_variables_in_any_case() -> None:
    env = {"Agent_Bash": r"D:\bash.exe", "ProgramFiles": r"C:\Program Files"}
    assert find_bash(env, windows=True, exists=only(GIT), which=which_finding()) == r"D:\bash.exe"
    del env["Agent_Bash"]
    assert find_bash(env, windows=True, exists=only(GIT), which=which_finding()) == GIT


def test_posix_runs_bash_from_path() -> None:
    assert find_bash({"PATH": "/usr/bin"}, windows=False, exists=only(),
                     which=which_finding(bash="/usr/bin/bash")) == "/usr/bin/bash"
    assert find_bash({"PATH": "/usr/bin"}, windows=False, exists=only(),
                     which=which_finding()) is None
    assert find_bash(os.environ, windows=False, exists=os.path.isfile) == shutil.which("bash")


@pytest.mark.parametrize(("installed", "expected"), [
    ([GIT, r"C:\Program Files (x86)\Git\bin\bash.exe"], GIT),
    ([r"C:\Program Files (x86)\Git\bin\bash.exe"], r"C:\Program Files (x86)\Git\bin\bash.exe"),
    ([r"C:\Users\ada\AppData\Local\Programs\Git\bin\bash.exe"],
     r"C:\Users\ada\AppData\Local\Programs\Git\bin\bash.exe"),
], ids=["program-files-first", "x86", "per-user-install"])
def test_windows_finds_git_for_windows_where_its_installer_puts_it(
    installed: list[str], expected: str
) -> None:
    assert find_bash(WINDOWS_ENV, windows=True, exists=only(*installed, WSL),
                     which=which_finding(bash=WSL)) == expected


@pytest.mark.parametrize("git", [r"D:\tools\Git\cmd\git.exe", r"D:\tools\Git\mingw64\bin\git.exe"])
def test_windows_finds_the_bash_beside_the_git_on_path(git: str) -> None:
    bash = r"D:\tools\Git\bin\bash.exe"
    assert find_bash(WINDOWS_ENV, windows=True, exists=only(bash, WSL),
                     which=which_finding(git=git, bash=WSL)) == bash


def test_windows_never_runs_the_wsl_launcher() -> None:
    # bash on PATH is System32's: there is no bash for jobs, and the error says what to do.
    assert find_bash(WINDOWS_ENV, windows=True, exists=only(WSL),
                     which=which_finding(bash=WSL)) is None
    assert "AGENT_BASH" in NO_BASH_ON_WINDOWS and "Git for Windows" in NO_BASH_ON_WINDOWS


def test_the_wsl_launcher_is_recognised_however_spelled() -> None:
    assert is_wsl_launcher(WSL)
    assert is_wsl_launcher(r"c:\WINDOWS\system32\BASH.EXE")
    assert is_wsl_launcher("C:/Windows/SysWOW64/bash.exe")
    assert not is_wsl_launcher(GIT)
    assert not is_wsl_launcher(r"C:\Windows\System32\bash-helper.exe")


@posix_only
def test_a_bash_job_runs_the_agent_bash(tmp_path: Path) -> None:
    marker = tmp_path / "agent-bash-ran"
    wrapper = tmp_path / "my-bash"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > "{marker}"\nexec bash "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    spec = ExecSpec("bash", 'echo "$BASH_VERSION" >/dev/null; echo done', {}, 20.0, work,
                    env={"AGENT_BASH": str(wrapper)})
    outcome = asyncio.run(Execution(spec).run())
    assert (outcome.status, outcome.result) == ("succeeded", "done")
    assert marker.read_text().strip() == "script.sh"


# -- crash codes ---------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "shown"), [
    (3221225477, "exit code 0xC0000005 (access violation)"),
    (0xC00000FD, "exit code 0xC00000FD (stack overflow)"),
    (0xC000013A, "exit code 0xC000013A (terminated by Ctrl+C)"),
    (0xC0000409, "exit code 0xC0000409 (stack buffer overrun)"),
    (0xC0000135, "exit code 0xC0000135 (DLL not found)"),
    (0xC0000142, "exit code 0xC0000142 (DLL initialization failed)"),
    (0xC0000417, "exit code 0xC0000417"),  # a crash with no name here: hex all the same
    (0xBFFFFFFF, "exit code 3221225471"),  # below the error range: a plain exit code
    (1, "exit code 1"),
])
def test_windows_crash_codes_are_shown_as_ntstatus(code: int, shown: str) -> None:
    assert describe_exit(code, windows=True) == shown


def test_posix_exits_are_shown_as_before() -> None:
    assert describe_exit(-9, windows=False) == "killed by signal SIGKILL"
    assert describe_exit(3221225477, windows=False) == "exit code 3221225477"
    assert describe_exit(2, windows=False) == "exit code 2"


# -- PowerShell's prologue -----------------------------------------------------------------

PROLOGUE_PARTS = ("[Console]::OutputEncoding", "$OutputEncoding", "UTF8Encoding $false")


def test_the_prologue_goes_on_the_first_line_so_line_numbers_stay() -> None:
    script = "Write-Output 'héllo ✓'\nthrow 'boom'\n"
    changed = with_utf8_output(script)
    first, *rest = changed.split("\n")
    assert all(part in first for part in PROLOGUE_PARTS)
    assert first.endswith("Write-Output 'héllo ✓'")
    assert rest == script.split("\n")[1:]


@pytest.mark.parametrize("script", [
    "param([int]$n = 1)\nWrite-Output $n\n",
    "# a comment\n\n[CmdletBinding()]\nparam()\nWrite-Output 1\n",
    "<#\n.SYNOPSIS\nHelp first.\n#>\nParam(\n  $x\n)\n",
    "using namespace System.Text\n[StringBuilder]::new()\n",
], ids=["param", "cmdletbinding", "comment-help", "using"])
def test_a_script_that_must_start_with_param_or_using_runs_as_written(script: str) -> None:
    assert with_utf8_output(script) == script


def test_requires_stays_first_and_the_prologue_follows() -> None:
    script = "#Requires -Version 5.1\nWrite-Output 1\n"
    lines = with_utf8_output(script).split("\n")
    assert lines[0] == "#Requires -Version 5.1"
    assert lines[1].startswith("$OutputEncoding") and lines[1].endswith("Write-Output 1")


def test_a_statement_that_starts_with_a_type_still_gets_the_prologue() -> None:
    assert with_utf8_output("[Console]::WriteLine('x')").startswith("$OutputEncoding")


# -- Job Objects ---------------------------------------------------------------------------

def test_the_job_object_limits_have_windows_layout() -> None:
    # What SetInformationJobObject reads: a wrong size makes it fail, a wrong offset would set
    # some other limit than KILL_ON_JOB_CLOSE.
    pointer = ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(ExtendedLimitInformation) == (144 if pointer == 8 else 112)
    assert BasicLimitInformation.LimitFlags.offset == 16
    assert kill_on_close_limits().BasicLimitInformation.LimitFlags == 0x2000


@pytest.mark.skipif(sys.platform == "win32",
                    reason="on Windows Job Objects work (test_windows_jobs.py)")
def test_job_objects_are_refused_off_windows() -> None:
    with pytest.raises(JobObjectError):
        JobObject()


# -- configuration -------------------------------------------------------------------------

BASE = {"AGENT_TOKEN": TOKEN, "BASE_INTERNAL_URL": "http://127.0.0.1:8000"}


def load(**values: str) -> AgentConfig:
    return load_config({**BASE, **values}, warn=lambda message: None)


def refused(**values: str) -> str:
    with pytest.raises(ConfigError) as error:
        load(**values)
    return str(error.value)


def test_init_script_language_defaults_to_the_os_shell_and_is_checked() -> None:
    assert load().init_script_language == ("powershell" if os.name == "nt" else "bash")
    for language in ("bash", "sh", "powershell", "python"):
        assert load(INIT_SCRIPT_LANGUAGE=language).init_script_language == language
    assert load(INIT_SCRIPT_LANGUAGE=" Python ").init_script_language == "python"
    message = refused(INIT_SCRIPT_LANGUAGE="cmd")
    assert "INIT_SCRIPT_LANGUAGE='cmd'" in message and "powershell" in message


def test_agent_bash_must_be_an_existing_executable_file(tmp_path: Path) -> None:
    assert load().bash is None
    assert "AGENT_BASH='/nonexistent/bash'" in refused(AGENT_BASH="/nonexistent/bash")
    assert "AGENT_BASH=" in refused(AGENT_BASH=str(tmp_path))  # a directory
    bash = tmp_path / "bash"
    bash.write_text("#!/bin/sh\n")
    if os.name != "nt":
        bash.chmod(0o644)
        assert "not an existing executable file" in refused(AGENT_BASH=str(bash))
        bash.chmod(0o755)
    assert load(AGENT_BASH=str(bash)).bash == str(bash.absolute())


def agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("AGENT_", "INIT_SCRIPT")) and k != "MODE"}
    return subprocess.run([sys.executable, "-m", "tagrun.agent", *args],
                          env={**clean, "COLUMNS": "200", **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_command_line_takes_both_variables() -> None:
    done = agent("--help")
    for name in ("INIT_SCRIPT_LANGUAGE", "--init-script-language", "AGENT_BASH", "--bash"):
        assert name in done.stdout
    done = agent(AGENT_TOKEN=TOKEN, BASE_INTERNAL_URL="http://127.0.0.1:9",
                 INIT_SCRIPT="true", INIT_SCRIPT_LANGUAGE="fortran")
    assert done.returncode == 1 and "INIT_SCRIPT_LANGUAGE='fortran'" in done.stderr
    done = agent("--bash", "/nonexistent/bash", AGENT_TOKEN=TOKEN,
                 BASE_INTERNAL_URL="http://127.0.0.1:9")
    assert done.returncode == 1 and "AGENT_BASH='/nonexistent/bash'" in done.stderr


def test_an_init_script_in_python_runs_as_python() -> None:
    done = agent(AGENT_TOKEN=TOKEN, BASE_INTERNAL_URL="http://127.0.0.1:9",
                 INIT_SCRIPT="import sys\nprint('py', sys.version_info[0])\nsys.exit(3)",
                 INIT_SCRIPT_LANGUAGE="python")
    assert done.returncode == 1
    failed = [json.loads(line) for line in done.stderr.splitlines()
              if "agent.init_script_failed" in line]
    assert failed[0]["output"].strip() == "py 3"  # \r\n on Windows
    assert "exit code 3" in failed[0]["error"]
    assert "INIT_SCRIPT_LANGUAGE=python" in failed[0]["error"]


SH_IS_BASH = os.path.basename(os.path.realpath(shutil.which("sh") or "sh")) == "bash"


@pytest.mark.skipif(sys.platform == "win32" or SH_IS_BASH,
                    reason="needs a POSIX sh that is not bash")
def test_an_init_script_in_sh_runs_in_sh_before_the_first_claim(tmp_path: Path) -> None:
    from tests.agent.test_runner import make_agent, run, stop_on_claim

    marker = tmp_path / "initialised"
    fake = FakeServer(jobs=[job(1, f"cat {marker}")])
    script = f'echo "${{BASH_VERSION:-not bash}}" > "{marker}"'
    agent = make_agent(fake, tmp_path, init_script_language="sh", init_script=script)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.completions[1]["result"] == "not bash"
    # The default, on POSIX, is bash.
    fake = FakeServer(jobs=[job(1, f"cat {marker}")])
    agent = make_agent(fake, tmp_path, init_script=script)
    fake.on_claim = stop_on_claim(agent, 2)
    assert run(agent) == 0
    assert fake.completions[1]["result"] != "not bash"
