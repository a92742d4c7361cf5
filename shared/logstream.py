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


class StreamEnded(Exception):
    """Raised by a sink when nothing more can be written for this job (its lease is lost,
    the server is out of reach): the stream stops. Any other exception refuses one chunk."""


def lost_chunk_marker(size: int, reason: str) -> str:
    return f"\n[tagrun: log chunk lost: {size} characters: {reason}]\n"


class LogStream:
    """A chunk the sink refuses (any exception but StreamEnded) is replaced in the log by a
    visible marker saying so, and the output after it still flows."""

    def __init__(
        self, sink: Sink, offset: int, *, interval_s: float = 0.2, max_chunk: int = 64 * 1024,
        job_id: int | None = None,
    ) -> None:
        self._sink = sink
        self._job_id = job_id
        self.lost_chunks = 0
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
            except StreamEnded as exc:
                self._stop(exc)
                return
            except Exception as exc:  # noqa: BLE001 - a log sink failure must not kill the job
                if not await self._mark_lost(len(chunk), exc):
                    return
                continue
            self.offset += len(chunk)
        if self.failed:
            self._pending, self._pending_size = [], 0

    async def _mark_lost(self, size: int, refusal: Exception) -> bool:
        """Put a marker where the refused chunk was; False (the stream stops) if even the
        marker cannot be written."""
        reason = " ".join(str(refusal).split())[:300] or type(refusal).__name__
        log.warning("logs.chunk_lost", extra={"job_id": self._job_id, "characters": size,
                                              "error": reason})
        marker = lost_chunk_marker(size, reason)
        try:
            await self._sink(self.offset, marker)
        except Exception as exc:  # noqa: BLE001 - same as for the chunk itself
            self._stop(exc)
            return False
        self.lost_chunks += 1
        self.offset += len(marker)
        return True

    def _stop(self, exc: Exception) -> None:
        log.warning("logs.write_failed", extra={"job_id": self._job_id, "error": str(exc)})
        self.failed = True
        self._pending, self._pending_size = [], 0
