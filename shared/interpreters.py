"""Which program runs a job's script: the bash (AGENT_BASH; on Windows Git for Windows',
never WSL's launcher), and the prologue that makes PowerShell write UTF-8.

Decisions only, as pure functions of the environment, so that the Windows ones are tested on
every OS (tests/agent/test_job_interpreters.py); shared/executors.py runs what they choose."""

from __future__ import annotations

import ntpath
import re
import shutil
from collections.abc import Callable, Mapping

__all__ = ["NO_BASH_ON_WINDOWS", "find_bash", "is_wsl_launcher", "with_utf8_output"]

NO_BASH_ON_WINDOWS = (
    "bash not found: install Git for Windows, or set AGENT_BASH to the path of a bash.exe "
    "(System32's bash.exe, the WSL launcher, is never used: it cannot see the job's files)")


def find_bash(env: Mapping[str, str], *, windows: bool, exists: Callable[[str], bool],
              which: Callable[..., str | None] = shutil.which) -> str | None:
    """The bash that bash jobs run: AGENT_BASH when set, on every OS. Else elsewhere `bash`
    on PATH, and on Windows Git for Windows' bash.exe where its installer puts it (or where
    the git.exe on PATH says it is), never `bash` on PATH: that is System32's WSL launcher,
    which runs the script in a Linux where its Windows path means nothing."""
    if windows:  # Windows' environment names are not case-sensitive
        env = {name.upper(): value for name, value in env.items()}
    if env.get("AGENT_BASH"):
        return env["AGENT_BASH"]
    if not windows:
        found: str | None = which("bash", path=env.get("PATH"))
        return found
    return next((path for path in _git_bash_candidates(env, which) if exists(path)), None)


def _git_bash_candidates(env: Mapping[str, str], which: Callable[..., str | None]
                         ) -> list[str]:
    roots = [env[name] for name in ("PROGRAMFILES", "PROGRAMW6432", "PROGRAMFILES(X86)")
             if env.get(name)]
    if env.get("LOCALAPPDATA"):
        roots.append(ntpath.join(env["LOCALAPPDATA"], "Programs"))
    found = [ntpath.join(root, "Git", "bin", "bash.exe") for root in roots]
    git = which("git", path=env.get("PATH"))
    if git:  # Git\cmd\git.exe, or Git\mingw64\bin\git.exe
        here = ntpath.dirname(git)
        found += [ntpath.normpath(ntpath.join(here, up, "bin", "bash.exe"))
                  for up in ("..", ntpath.join("..", ".."))]
    return list(dict.fromkeys(found))


def is_wsl_launcher(path: str) -> bool:
    """System32's (or SysWOW64's) bash.exe: WSL's, not a bash that can run a job's files
    (refused as AGENT_BASH; find_bash never looks there)."""
    parts = ntpath.normcase(ntpath.normpath(path)).split("\\")
    return parts[-1:] == ["bash.exe"] and parts[-2:-1] in (["system32"], ["syswow64"],
                                                           ["sysnative"])


# PowerShell writes its output in the console's code page (an OEM one such as 437 or 850,
# even into a pipe) unless told otherwise; the agent reads UTF-8. UTF8Encoding($false): no
# byte order mark in front of the output. The job's console is its own (executors.py), so
# this changes no one else's.
_PS_UTF8 = ("$OutputEncoding = New-Object System.Text.UTF8Encoding $false; "
            "[Console]::OutputEncoding = $OutputEncoding; ")
# What must come first in a script, before any statement: the prologue cannot go before it.
_PS_FIRST = re.compile(r"\s*(using\s|param\s*\(|\[\s*CmdletBinding|\[\s*OutputType)",
                       re.IGNORECASE)


def with_utf8_output(content: str) -> str:
    """The PowerShell script with the UTF-8 prologue put in front of its first line, on that
    line, so that the line numbers in its errors stay the script's own. A script that starts
    with `using` or `param` (which nothing may precede) runs as written."""
    lines = content.split("\n")
    uncommented = re.sub(r"<#.*?#>", "", content, flags=re.DOTALL).split("\n")
    statements = [line for line in uncommented
                  if line.strip() and not line.lstrip().startswith("#")]
    if statements and _PS_FIRST.match(statements[0]):
        return content
    # #Requires must start its line; it may stand anywhere, so it can stay first.
    first = next((i for i, line in enumerate(lines)
                  if not line.lstrip().lower().startswith("#requires")), len(lines))
    if first == len(lines):
        return content
    lines[first] = _PS_UTF8 + lines[first]
    return "\n".join(lines)
