"""Buffers a job's output and ships it in chunks, in order, at known offsets.

Used by direct workers (sink writes to PostgreSQL) and agents (sink posts over HTTP);
offsets count characters, so a resent chunk is recognised and ignored by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("tagrun.logs")

Sink = Callable[[int, str], Awaitable[None]]


class LogStream:
    def __init__(
        self, sink: Sink, offset: int, *, interval_s: float = 0.2, max_chunk: int = 64 * 1024
    ) -> None:
        self._sink = sink
        self.offset = offset
        self._pending: list[str] = []
        self._pending_size = 0
        self._interval_s = interval_s
        self._max_chunk = max_chunk
        self._wake = asyncio.Event()
        self._closed = False
        self.failed = False
        self._task = asyncio.create_task(self._pump(), name="logstream")

    def write(self, text: str) -> None:
        if text and not self._closed:
            self._pending.append(text)
            self._pending_size += len(text)
            if self._pending_size >= self._max_chunk:
                self._wake.set()

    async def close(self) -> None:
        """Flush what is left and stop."""
        self._closed = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            await self._flush()
            if self._closed and not self._pending:
                return

    async def _flush(self) -> None:
        while self._pending and not self.failed:
            data = "".join(self._pending)
            chunk, rest = data[: self._max_chunk], data[self._max_chunk :]
            self._pending, self._pending_size = ([rest], len(rest)) if rest else ([], 0)
            try:
                await self._sink(self.offset, chunk)
            except Exception as exc:  # noqa: BLE001 - a log sink failure must not kill the job
                log.warning("logs.write_failed", extra={"error": str(exc)})
                self.failed = True
                return
            self.offset += len(chunk)
        if self.failed:
            self._pending, self._pending_size = [], 0
