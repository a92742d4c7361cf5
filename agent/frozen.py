"""How Python jobs find an interpreter, and what the agent executable needs to behave.

A frozen agent has no `python` of its own to start, so it runs Python jobs by starting itself
again with PYTHON_FLAG first; run_python() hands such a run to the shared job wrapper. What
those jobs start with `sys.executable` (`-c ...`, a script, multiprocessing's workers) comes
back here too: runs_python() tells it from the agent's own command lines, and interpreter.py
runs it as `python` would.

The executable is a PyInstaller one-folder bundle (scripts/build-agent): tagrun-agent beside
_internal/, which holds the libraries and the standard library. Nothing is unpacked and the
agent is one process: no launcher to outlive, nothing left behind by a kill. Two things of the
bootloader's remain, which every job would otherwise inherit. On Linux it starts itself again
with LD_LIBRARY_PATH pointing at _internal/ (the user's value saved in LD_LIBRARY_PATH_ORIG), so
that the bundled libssl, libz and the like load; a job's own programs must load their own.
On Windows it puts _internal/ on the DLL search path with SetDllDirectory, which child
processes inherit. And it leaves _PYI_* variables that tell a later start of the same
executable that it is its own child, whose library path is already set: a job that runs
`sys.executable` would then skip that step and load the system's libraries. prepare_frozen_process()
undoes all three, so every re-execution starts as a fresh one and sets the path itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

PYTHON_FLAG = "--tagrun-run-python"
# multiprocessing's command line for a spawned worker of a frozen program.
_MULTIPROCESSING_FLAG = "--multiprocessing-fork"

_LIBRARY_PATH = "LD_LIBRARY_PATH"
_LIBRARY_PATH_ORIG = "LD_LIBRARY_PATH_ORIG"  # where the bootloader saved the user's own value
_BOOTLOADER_STATE = "_PYI_"  # prefix of the bootloader's variables (_PYI_PARENT_PROCESS_LEVEL)

# Windows: the bundle stays on this process's DLL search path through this registration.
_dll_directory: object = None


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def runs_python(args: Sequence[str]) -> bool:
    """The executable was started as a Python interpreter, not as the agent: for a Python job
    (PYTHON_FLAG), or by one through sys.executable (`-c ...`, `script.py`, multiprocessing's
    workers). The agent's own options all start with "--"."""
    if not is_frozen() or not args:
        return False
    return args[0] in (PYTHON_FLAG, _MULTIPROCESSING_FLAG) or not args[0].startswith("--")


def python_command(configured: str | None) -> list[str]:
    """The command line prefix that runs a Python file: AGENT_PYTHON, or our own Python."""
    if configured:
        return [configured]
    if not is_frozen():
        return [sys.executable]
    return [sys.executable, PYTHON_FLAG]


def prepare_frozen_process() -> None:
    """First thing the executable does, whatever it was started for."""
    if not is_frozen():
        return
    if sys.platform == "win32":
        _forget_dll_directory()
    elif sys.platform != "darwin":  # macOS bundles find their libraries by relative paths
        _restore_library_path()
    for name in [name for name in os.environ if name.startswith(_BOOTLOADER_STATE)]:
        del os.environ[name]
    if runs_python(sys.argv[1:]):
        from tagrun.agent.interpreter import become_python

        become_python()


def _restore_library_path() -> None:
    bundle = os.environ.get(_LIBRARY_PATH)
    if bundle is None or getattr(sys, "_MEIPASS", None) not in bundle.split(os.pathsep):
        return
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


def run_python(args: list[str]) -> int:
    """Run what runs_python() recognised: with PYTHON_FLAG the job wrapper, whose argv follows
    it ([wrapper,] script), else Python's own command line. Frozen, prepare_frozen_process()
    has already made this process a Python (interpreter.become_python)."""
    if args[:1] == [PYTHON_FLAG]:
        from tagrun.shared.executors import python_wrapper_main

        return python_wrapper_main(args[1:])
    from tagrun.agent.interpreter import run_interpreter

    return run_interpreter(args)
