"""The Procrastinate app and tasks used by procrastinate_bench.py.

Kept in an importable module, as Procrastinate recommends (an App made in ``__main__``
triggers its warning), and the target of ``procrastinate --app=procrastinate_app.app``.
The connection string comes from $PEERS_DB_URL; worker processes swap in a connector
with their pool size via ``App.replace_connector`` and set ``REPORTER``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procrastinate  # noqa: E402
from common import DRAIN, LATENCY, Reporter, mono  # noqa: E402

REPORTER: Reporter | None = None

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("PEERS_DB_URL", "")))


@app.task(name=DRAIN, queue=DRAIN)
async def drain(i: int) -> None:
    if REPORTER is not None:
        REPORTER.job(i)


@app.task(name=LATENCY, queue=LATENCY)
async def latency(i: int) -> None:
    t = mono()
    if REPORTER is not None:
        REPORTER.started(i, t)
        REPORTER.job(i)
