"""How Python jobs find an interpreter, and what the one-file agent executable needs to behave.

A frozen agent has no `python` of its own to start, so it runs Python jobs by starting itself
again with PYTHON_FLAG first; run_python() hands such a run to the shared job wrapper. What
those jobs start with `sys.executable` (`-c ...`, a script, multiprocessing's workers) comes
back here too: runs_python() tells it from the agent's own command lines, and interpreter.py
runs it as `python` would.

The one-file executable (scripts/build-agent) runs as two processes: PyInstaller's bootloader
unpacks the bundle into a temporary directory, then runs the agent as its child and forwards
signals to it. The bootloader also points the library search path at that directory
(LD_LIBRARY_PATH on Linux, SetDllDirectory on Windows), which every job would inherit: a job's
own programs would load the agent's copies of libssl, libz and the like instead of their own.
prepare_frozen_process() undoes that, and python_command() gives it back to our re-executions.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Sequence

PYTHON_FLAG = "--tagrun-run-python"
# multiprocessing's command line for a spawned worker of a frozen program.
_MULTIPROCESSING_FLAG = "--multiprocessing-fork"

_LIBRARY_PATH = "LD_LIBRARY_PATH"
_LIBRARY_PATH_ORIG = "LD_LIBRARY_PATH_ORIG"  # where the bootloader saved the user's own value
_PR_SET_PDEATHSIG = 1
_REEXECUTED = "_TAGRUN_PYTHON_REEXECUTED"

# The bootloader's LD_LIBRARY_PATH, for our own re-executions only (see python_command).
_bundle_library_path: str | None = None
# Windows: the bundle stays on this process's DLL search path through this registration.
_dll_directory: object = None


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def runs_python(args: Sequence[str]) -> bool:
    """The one-file executable was started as a Python interpreter, not as the agent: for a
    Python job (PYTHON_FLAG), or by one through sys.executable (`-c ...`, `script.py`,
    multiprocessing's workers). The agent's own options all start with "--"."""
    if not is_frozen() or not args:
        return False
    return args[0] in (PYTHON_FLAG, _MULTIPROCESSING_FLAG) or not args[0].startswith("--")


def python_command(configured: str | None) -> list[str]:
    """The command line prefix that runs a Python file: AGENT_PYTHON, or our own Python."""
    if configured:
        return [configured]
    if not is_frozen():
        return [sys.executable]
    if _bundle_library_path is None:
        return [sys.executable, PYTHON_FLAG]
    # The re-executed binary reuses this process's unpacked bundle and, on Linux, finds the
    # libraries there only through LD_LIBRARY_PATH, which jobs must not see: hand it over here.
    library_path = [f"{_LIBRARY_PATH}={_bundle_library_path}"]
    if _LIBRARY_PATH in os.environ:
        library_path.append(f"{_LIBRARY_PATH_ORIG}={os.environ[_LIBRARY_PATH]}")
    env = shutil.which("env") or "/usr/bin/env"
    return [env, *library_path, sys.executable, PYTHON_FLAG]


def as_bootloader_left_it(env: dict[str, str]) -> dict[str, str]:
    """`env` with the library path the bootloader had set, for re-executing the whole agent
    (secrecy.hide_token): the new image reuses the unpacked bundle, as python_command's do."""
    if _bundle_library_path is None:
        return env
    restored = {k: v for k, v in env.items() if k != _LIBRARY_PATH_ORIG}
    if _LIBRARY_PATH in env:
        restored[_LIBRARY_PATH_ORIG] = env[_LIBRARY_PATH]
    restored[_LIBRARY_PATH] = _bundle_library_path
    return restored


def share_bundle() -> None:
    """AGENT_JOB_USER with the one-file executable: Python jobs, running as that user, start
    this executable again, which reuses the bundle this process unpacked. The bootloader makes
    that directory private to the agent's user; let others read it (it holds what the
    published executable holds, nothing secret; only its owner may change it)."""
    bundle = getattr(sys, "_MEIPASS", None)
    if not is_frozen() or bundle is None or os.name != "posix":
        return
    for folder, _, files in os.walk(bundle):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)


def prepare_frozen_process() -> None:
    """First thing the one-file executable does, whatever it was started for."""
    if not is_frozen():
        return
    python = runs_python(sys.argv[1:])
    if sys.platform == "win32":
        _forget_dll_directory()
    elif sys.platform != "darwin":  # macOS bundles find their libraries by relative paths
        if python:
            _reexec_with_bundle_libraries()
        _restore_library_path()
    if python:
        from tagrun.agent.interpreter import become_python

        become_python()
    else:
        _stop_with_bootloader()


def _reexec_with_bundle_libraries() -> None:
    """Linux: a Python process started by a job (`sys.executable -c ...`, a multiprocessing
    worker) reuses the unpacked bundle but, without LD_LIBRARY_PATH (which jobs never see),
    would load the system's libssl, libffi or libsqlite3, or none, instead of the bundle's:
    start again with it, as python_command() does for the job itself."""
    # Set only for the new image: should the bootloader not have kept the library path, it
    # runs on rather than loops.
    reexecuted = os.environ.pop(_REEXECUTED, None) is not None
    bundle = getattr(sys, "_MEIPASS", None)
    current = os.environ.get(_LIBRARY_PATH)
    if reexecuted or bundle is None or bundle in (current or "").split(os.pathsep):
        return
    env = {**os.environ, _REEXECUTED: "1",
           _LIBRARY_PATH: bundle if current is None else f"{bundle}{os.pathsep}{current}"}
    if current is not None:
        env[_LIBRARY_PATH_ORIG] = current
    os.execve(sys.executable, [sys.executable, *sys.argv[1:]], env)


def _restore_library_path() -> None:
    global _bundle_library_path
    bundle = os.environ.get(_LIBRARY_PATH)
    if bundle is None or getattr(sys, "_MEIPASS", None) not in bundle.split(os.pathsep):
        return
    _bundle_library_path = bundle
    original = os.environ.pop(_LIBRARY_PATH_ORIG, None)
    if original is None:
        del os.environ[_LIBRARY_PATH]
    else:
        os.environ[_LIBRARY_PATH] = original


def _forget_dll_directory() -> None:
    if sys.platform == "win32":
        import ctypes

        global _dll_directory
        # AddDllDirectory keeps the bundle searchable for this process's own later imports and,
        # unlike SetDllDirectory, is not inherited by the processes it starts.
        _dll_directory = os.add_dll_directory(getattr(sys, "_MEIPASS"))  # noqa: B009
        ctypes.windll.kernel32.SetDllDirectoryW(None)


def _stop_with_bootloader() -> None:
    """Linux: when the bootloader dies (kill -9), drain as on SIGTERM instead of running on.

    Without this the agent would carry on orphaned, claiming jobs, with nothing to stop it.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (AttributeError, OSError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_python(args: list[str]) -> int:
    """Run what runs_python() recognised: with PYTHON_FLAG the job wrapper, whose argv follows
    it ([wrapper,] script), else Python's own command line. Frozen, prepare_frozen_process()
    has already made this process a Python (interpreter.become_python)."""
    if args[:1] == [PYTHON_FLAG]:
        from tagrun.shared.executors import python_wrapper_main

        return python_wrapper_main(args[1:])
    from tagrun.agent.interpreter import run_interpreter

    return run_interpreter(args)
