from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tagrun")
except PackageNotFoundError:  # running from a frozen agent binary or a bare checkout
    __version__ = "0.1.0"
