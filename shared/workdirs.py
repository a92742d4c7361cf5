"""Removing a job's directory whole, whatever the job left in it.

A job may leave read-only directories (Go's module cache, `chmod -R a-w`) and, on Windows,
read-only files (git's packs and objects): `shutil.rmtree` alone leaves those behind. What
still cannot be removed is logged (`workdir.not_removed`), never silently left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["remove_tree"]

_FILE_ATTRIBUTE_REPARSE_POINT = 0x400  # Windows: a junction or link, never followed


def remove_tree(path: Path, log: logging.Logger, **fields: object) -> bool:
    """Remove `path` and everything under it; True when nothing is left. `fields` go with the
    warning logged for what stays (the job's id, say)."""
    errors = _rmtree(path)
    if errors:
        _unlock(path)
        errors = _rmtree(path)
    if not errors:
        return True
    where, first = errors[0]
    log.warning("workdir.not_removed", extra={
        **fields, "path": str(path), "failures": len(errors),
        "error": f"{first.strerror or first}: {where}"})
    return False


def _rmtree(path: Path) -> list[tuple[str, OSError]]:
    """shutil.rmtree, going on past what it cannot remove; returns what failed, and why."""
    errors: list[tuple[str, OSError]] = []

    def failed(_: Callable[..., Any], where: str, exc: BaseException) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            errors.append((where, exc))

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=failed)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: failed(func, p, info[1]))
    return errors


def _unlock(top: Path) -> None:
    """Give the agent's user write access to every directory under `top` (and, on Windows,
    clear every file's read-only flag) so that what is in them can be removed. Only what
    that user owns is changed, and a link is never followed: a root agent needs no
    permission bits, and must not change modes through a job's links."""
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    stack = [str(top)]
    while stack:  # not recursive: a job may nest directories deeper than Python's stack
        path = stack.pop()
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if _is_link(info) or (uid is not None and info.st_uid != uid):
            continue
        is_dir = stat.S_ISDIR(info.st_mode)
        if is_dir or os.name == "nt":
            mode = stat.S_IMODE(info.st_mode)
            wanted = mode | (stat.S_IRWXU if is_dir else stat.S_IWRITE)
            with contextlib.suppress(OSError):
                if wanted != mode:
                    os.chmod(path, wanted)
        if is_dir:
            with contextlib.suppress(OSError), os.scandir(path) as entries:
                stack.extend(entry.path for entry in entries)


def _is_link(info: os.stat_result) -> bool:
    attributes = getattr(info, "st_file_attributes", 0)
    return stat.S_ISLNK(info.st_mode) or bool(attributes & _FILE_ATTRIBUTE_REPARSE_POINT)
