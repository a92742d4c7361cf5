"""Agent logging: the shared structured format (tagrun.shared.logfmt)."""

from __future__ import annotations

from typing import TextIO

from tagrun.shared.logfmt import LogConfigError
from tagrun.shared.logfmt import configure_logging as configure_shared

__all__ = ["LogConfigError", "configure_logging"]


def configure_logging(stream: TextIO | None = None) -> None:
    configure_shared(stream)
