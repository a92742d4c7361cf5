"""Keeping the agent token out of its jobs' reach.

A job runs as a child of the agent, often as the same user. Removing AGENT_TOKEN from
`os.environ` is not enough: /proc/<pid>/environ (and `ps eww` on macOS) shows the
environment a process image *started* with, and /proc/<pid>/cmdline its arguments. So when
the token arrives in the environment or on the command line, the agent re-executes itself
at once without it, handing the token over through a pipe that the new image reads and
closes. On Linux the agent then makes itself non-dumpable, which takes its /proc files
(environ, mem, ...) and ptrace away from processes of the same user.

The agent executable is one process (a PyInstaller one-folder bundle), so no launcher keeps
the environment it was started with. What this cannot reach is said in docs/security.md: a
file the job's user can read (keep AGENT_TOKEN_FILE readable by the agent's user only and run
jobs as AGENT_JOB_USER).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

TOKEN_FD_VAR = "TAGRUN_AGENT_TOKEN_FD"  # the read end of the pipe after a re-exec (not secret)
_NO_REEXEC = {"--version", "--help", "-h"}
_PR_SET_DUMPABLE = 4


def hide_token(args: Sequence[str]) -> list[str]:
    """Re-execute this process without the token in its environment or arguments (POSIX).

    Returns `args` unchanged when there is nothing to hide (or on Windows, where a process
    cannot replace its image: see docs/security.md); does not return otherwise."""
    if os.name != "posix" or _NO_REEXEC & set(args) or TOKEN_FD_VAR in os.environ:
        return list(args)
    rest, from_args = _without_token_option(args)
    token = from_args if from_args is not None else os.environ.get("AGENT_TOKEN")
    if not token:  # nothing to hide; an empty or missing token is refused by the config
        return list(args)
    read_end, write_end = os.pipe()
    os.write(write_end, token.encode())  # far below a pipe's buffer: never blocks
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TOKEN"}
    env[TOKEN_FD_VAR] = str(read_end)
    os.execve(sys.executable, [*_own_command(), *rest], env)
    raise AssertionError("unreachable: execve returns only by raising")


def take_token() -> str | None:
    """In the re-executed image: the token handed over by `hide_token`, read once."""
    raw = os.environ.pop(TOKEN_FD_VAR, None)
    if raw is None:
        return None
    fd = int(raw)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def forbid_inspection() -> None:
    """Linux: no same-user process may read this process's memory or /proc files (which
    also ends core dumps). A job's own processes are dumpable again after their exec."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _own_command() -> list[str]:
    if getattr(sys, "frozen", False):  # the agent executable runs itself again
        return [sys.executable]
    return [sys.executable, "-m", "tagrun.agent"]


def _without_token_option(args: Sequence[str]) -> tuple[list[str], str | None]:
    rest: list[str] = []
    token: str | None = None
    items = iter(args)
    for arg in items:
        if arg == "--token":
            token = next(items, "")
        elif arg.startswith("--token="):
            token = arg.partition("=")[2]
        else:
            rest.append(arg)
    return rest, token
