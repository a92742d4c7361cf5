"""The agent's work directory: a private directory of its own for each run, in AGENT_WORK_DIR
or the temporary directory, holding a directory per job.

A running agent holds a lock on its run directory's `.lock`, so an agent starting in the same
place can tell the leftovers of one that was killed (no one holds their lock) from the
directories of one still running, and remove the former before it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tagrun.shared.workdirs import remove_tree

__all__ = ["PREFIX", "run_directory"]

log = logging.getLogger("tagrun.agent")

PREFIX = "tagrun-agent-"  # only directories named so, with a `.lock`, are ever swept
_LOCK = ".lock"
_LOCK_TRIES = 50  # Windows: a sweeper may hold a new run's lock for a moment (see _hold)


@contextlib.contextmanager
def run_directory(configured: Path | None, *, shared: bool) -> Iterator[Path]:
    """Sweep the leftovers of dead runs, then make this run's directory (0700; 0711 when
    `shared`: jobs of AGENT_JOB_USER pass through it to their own, and list nothing), and
    remove it at the end."""
    root = configured or Path(tempfile.gettempdir())
    sweep(root)
    # mkdtemp makes it 0700, which CPython 3.12.4 and later turn into an ACL for the owner
    # and Administrators alone on Windows (older Pythons ignore the mode there).
    run = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    if shared:
        run.chmod(0o711)
    lock = _hold(run)
    try:
        yield run
    finally:
        if sys.platform == "win32":  # an open file cannot be removed there
            os.close(lock)
        remove_tree(run, log)
        if sys.platform != "win32":
            os.close(lock)


def sweep(root: Path) -> None:
    """Remove the run directories in `root` that are this user's and whose agent is gone."""
    try:
        with os.scandir(root) as entries:
            found = [Path(e.path) for e in entries
                     if e.name.startswith(PREFIX) and e.is_dir(follow_symlinks=False)
                     and _mine(e.stat(follow_symlinks=False))]
    except OSError:
        return
    for path in found:
        _sweep_one(path)


def _sweep_one(path: Path) -> None:
    try:
        fd = os.open(path / _LOCK, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return  # no lock: not a run directory of this kind
    try:
        if not _try_lock(fd):
            return  # its agent is running
        log.info("workdir.swept", extra={"path": str(path)})
        if sys.platform == "win32":
            os.close(fd)
            fd = -1
        remove_tree(path, log)
    finally:
        if fd >= 0:
            os.close(fd)


def _mine(info: os.stat_result) -> bool:
    return not hasattr(os, "geteuid") or info.st_uid == os.geteuid()


def _hold(run: Path) -> int:
    """Lock the run's `.lock` for as long as the agent runs; returns its descriptor."""
    if sys.platform == "win32":
        fd = os.open(run / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        # A sweeper that opened it before this lock may hold it for the moment it takes to
        # find it cannot remove an open file: try again for a while (untested on Windows).
        for _ in range(_LOCK_TRIES):
            if _try_lock(fd):
                break
            time.sleep(0.1)
        return fd
    # Locked under another name, then renamed: a sweeper never sees a `.lock` yet unlocked.
    fresh = run / (_LOCK + ".new")
    fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    _try_lock(fd)  # a file system without locks: no sweeper can lock it either
    os.rename(fresh, run / _LOCK)
    return fd


def _try_lock(fd: int) -> bool:
    """An exclusive lock on `fd`, if no other process holds one."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
