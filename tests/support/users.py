"""A second, unprivileged OS user for tests that run processes as someone other than root.

When the suite runs as root, `unprivileged_user` creates the user (`useradd --system`, no home,
no login shell) the first time; the user is left in place for later runs. When the suite runs
as an ordinary user, that user is already unprivileged and is used as is (None).

The suite runs in several processes (pytest-xdist): what runs as the second user runs inside
`traversable`, which holds a lock across those processes, so that one test's restoring of the
modes it changed never pulls a path from under another's jobs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LOCK = Path(tempfile.gettempdir()) / "tagrun-tests-second-user.lock"
_held = 0  # how deep this process is in `_one_at_a_time`


@contextmanager
def _one_at_a_time() -> Iterator[None]:
    """Held by one test process at a time (re-entrant within a process)."""
    global _held
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    import fcntl  # POSIX only, like running jobs as another user

    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held = 1
        try:
            yield
        finally:
            _held = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


def unprivileged_user(name: str) -> str | None:
    if os.geteuid() != 0:
        return None
    with _one_at_a_time():  # two test processes must not both add it
        try:
            pwd.getpwnam(name)
        except KeyError:
            useradd = shutil.which("useradd")
            assert useradd, "tests that need a second OS user need useradd (package passwd)"
            subprocess.run([useradd, "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", name], check=True, capture_output=True)
    return name


@contextmanager
def traversable(*paths: Path) -> Iterator[None]:
    """Let other users reach `paths` (o+x on each parent directory lacking it, as a clone in a
    `mktemp -d` directory does); put every mode back afterwards."""
    with _one_at_a_time():
        yield from _traversable(paths)


def _traversable(paths: tuple[Path, ...]) -> Iterator[None]:
    changed: dict[Path, int] = {}
    for path in paths:
        for parent in path.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH and parent not in changed:
                changed[parent] = stat.S_IMODE(mode)
                parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for parent, mode in changed.items():
            parent.chmod(mode)
