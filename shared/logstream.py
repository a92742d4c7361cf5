"""Buffers a job's output and ships it in chunks, in order, at known offsets.

Used by direct workers (sink writes to PostgreSQL) and agents (sink posts over HTTP);
offsets count characters, so a resent chunk is recognised and ignored by the server. While
the sink cannot deliver (the server out of reach), output waits in a Backlog: in memory,
then in a spool file on disk, up to a limit past which it is dropped with a visible marker.
With `marks`, when each line began and on which stream (shared/loglines.py) travel with the
text: the sink gets every chunk with its marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from tagrun.shared.loglines import CODES, TAGRUN, LineMarker, Mark, anchored

log = logging.getLogger("tagrun.logs")

# (offset, chunk, its marks: positions in the chunk)
Sink = Callable[[int, str, list[Mark]], Awaitable[None]]
_TAGRUN = CODES[TAGRUN]


class StreamEnded(Exception):
    """Raised by a sink when nothing more can be written for this job (its lease is lost,
    the server is out of reach): the stream stops. Any other exception refuses one chunk."""


def lost_chunk_marker(size: int, reason: str) -> str:
    return f"\n[tagrun: log chunk lost: {size} characters: {reason}]\n"


def dropped_marker(size: int) -> str:
    return (f"\n[tagrun: {size} characters of output dropped: they did not fit in the log "
            "spool while the server was out of reach]\n")


MEMORY_CHARS = 1 << 20  # output held in memory before a spool file takes the rest
_ENCODING = {"encoding": "utf-8", "errors": "surrogatepass"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _marker_marks(at: int) -> array[int]:
    """The mark of a marker's line ("\n[tagrun: …]\n", written at `at`): after its newline."""
    return array("q", (at + 1, now_ms(), _TAGRUN))


class Backlog:
    """Output not sent yet, oldest first: in memory up to MEMORY_CHARS, then appended to
    `spool` (created 0600 on first need, removed when drained) up to `limit_bytes` on disk.
    Output that fits nowhere is counted, and a marker saying how much was dropped takes its
    place. Without a spool, memory holds up to `limit_bytes` characters.

    Marks go where their text goes (a spooled segment is its text, then its marks), by their
    position counted from the first character ever added; `take_marked` hands them out
    with the chunk they begin in."""

    def __init__(self, spool: Path | None = None, limit_bytes: int = 64 << 20, *,
                 job_id: int | None = None) -> None:
        self._path = spool
        self._spool = spool is not None  # False once the spool failed: memory only
        self._limit = limit_bytes
        self._job_id = job_id
        self._head = ""  # taken from the file but not yet handed out (oldest)
        self._head_marks = array("q")  # flat (position, ms, code) triples, as all marks here
        # (text bytes, mark bytes) of the file's unread segments
        self._segments: deque[tuple[int, int]] = deque()
        self._file: int | None = None  # descriptor of the spool, open while it holds output
        self._read_at = 0
        self._file_bytes = 0
        self._memory: list[str] = []  # newest
        self._memory_chars = 0
        self._memory_marks = array("q")
        self._added = 0  # characters ever kept: the position of the next one
        self._taken = 0  # characters ever handed out
        self._code = _TAGRUN  # the stream of the latest mark added, kept or dropped
        self._dropped = 0
        self.size = 0  # characters waiting, all places together
        self.spooled = False  # a spool file was used at some point

    def add(self, text: str, marks: Sequence[Mark] = ()) -> None:
        """Keep `text`, with `marks` (positions in `text`), or count it dropped."""
        if marks:
            self._code = marks[-1][2]
        if self._dropped and not self._fits(len(text)):
            self._dropped += len(text)
            return
        if self._dropped:  # room again: say where output is missing, then go on
            marker, self._dropped = dropped_marker(self._dropped), 0
            self._keep(marker, _marker_marks(self._added))
            if not marks or marks[0][0] != 0:  # its line began in what was dropped
                marks = [(0, now_ms(), self._code), *marks]
        if not self._fits(len(text)):
            self._dropped = len(text)
            return
        self._keep(text, array("q", [v for pos, ms, code in marks
                                     for v in (pos + self._added, ms, code)]))

    def _fits(self, chars: int) -> bool:
        if not self._spool:
            return self.size + chars <= (MEMORY_CHARS if self._path else self._limit)
        # On disk, a character is counted as a byte: the limit is approximate past ASCII.
        return self._memory_chars + chars <= MEMORY_CHARS or \
            self._file_bytes + self._memory_chars + chars <= self._limit

    def _keep(self, text: str, marks: array[int]) -> None:
        self._memory.append(text)
        self._memory_chars += len(text)
        self._memory_marks += marks
        self._added += len(text)
        self.size += len(text)
        if self._spool and self._memory_chars > MEMORY_CHARS:
            self._spill()

    def _spill(self) -> None:
        """Move what memory holds to the end of the spool file."""
        data = "".join(self._memory).encode(**_ENCODING)
        marks = self._memory_marks.tobytes()
        try:
            if self._file is None:
                assert self._path is not None
                self._file = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND
                                     | getattr(os, "O_BINARY", 0), 0o600)
                self.spooled = True
            os.write(self._file, data + marks)
        except OSError as exc:
            log.warning("logs.spool_failed", extra={"job_id": self._job_id, "path": str(
                self._path), "error": exc.strerror or str(exc)})
            self._spool = False  # memory only from now on
            return
        self._segments.append((len(data), len(marks)))
        self._file_bytes += len(data) + len(marks)
        self._memory, self._memory_chars, self._memory_marks = [], 0, array("q")

    def take(self, max_chars: int) -> str:
        """Up to `max_chars` of the oldest output waiting, removed from the backlog."""
        return self.take_marked(max_chars)[0]

    def take_marked(self, max_chars: int) -> tuple[str, list[Mark]]:
        """`take`, with the marks of the lines that begin in the chunk taken."""
        if not self._head and self._segments:
            self._head, self._head_marks = self._read_segment()
        if not self._head and not self._segments:
            self._head, self._memory, self._memory_chars = "".join(self._memory), [], 0
            self._head_marks, self._memory_marks = self._memory_marks, array("q")
            if not self._head and self._dropped:
                self._head, self._dropped = dropped_marker(self._dropped), 0
                self._head_marks = _marker_marks(self._added)
                self._added += len(self._head)
                self.size += len(self._head)
        chunk, self._head = self._head[:max_chars], self._head[max_chars:]
        marks = self._marks_before(self._taken + len(chunk))
        self.size -= len(chunk)
        self._taken += len(chunk)
        return chunk, marks

    def _marks_before(self, end: int) -> list[Mark]:
        """The head's marks before position `end`, taken out, at positions in the chunk."""
        head, n = self._head_marks, 0
        while n < len(head) and head[n] < end:
            n += 3
        marks = [(head[i] - self._taken, head[i + 1], head[i + 2]) for i in range(0, n, 3)]
        del head[:n]
        return marks

    def _read_segment(self) -> tuple[str, array[int]]:
        assert self._file is not None
        size, marks_size = self._segments.popleft()
        data = os.pread(self._file, size + marks_size, self._read_at)
        self._read_at += size + marks_size
        if not self._segments:  # drained: the file goes; a new one comes if needed again
            self._close_file()
        marks = array("q")
        marks.frombytes(data[size:])
        return data[:size].decode(**_ENCODING), marks

    def clear(self) -> None:
        """Drop everything waiting, and the spool file."""
        self._head, self._memory, self._memory_chars = "", [], 0
        self._head_marks, self._memory_marks = array("q"), array("q")
        self._segments.clear()
        self._dropped = self.size = 0
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file, self._read_at, self._file_bytes = None, 0, 0
            assert self._path is not None
            with contextlib.suppress(OSError):
                os.unlink(self._path)


class LogStream:
    """A chunk the sink refuses (any exception but StreamEnded) is replaced in the log by a
    visible marker saying so, and the output after it still flows. While a chunk is being
    sent (and retried), later output waits in the backlog. With `marks`, each write is
    marked by its stream (TAGRUN: the holder's own lines) at the time it is written."""

    def __init__(
        self, sink: Sink, offset: int, *, interval_s: float = 0.2, max_chunk: int = 64 * 1024,
        job_id: int | None = None, backlog: Backlog | None = None, marks: bool = False,
    ) -> None:
        self._sink = sink
        self._job_id = job_id
        self.lost_chunks = 0
        self.offset = offset
        self._backlog = backlog or Backlog(job_id=job_id)
        self._interval_s = interval_s
        self._max_chunk = max_chunk
        self._wake = asyncio.Event()
        self._closed = False
        self.failed = False
        # A log continued from an earlier attempt may end in the middle of a line.
        self._marker = LineMarker(at_line_start=offset == 0) if marks else None
        # What the next chunk's first line start is marked with (loglines.anchored): the
        # latest mark sent before it, and whether the text sent so far ends a line.
        self._inherited: tuple[int, int] | None = None
        self._line_ended = offset == 0
        # Started by the first write: a job that writes nothing costs no task.
        self._task: asyncio.Task[None] | None = None

    @property
    def spooled(self) -> bool:
        """Output had to wait on disk at some point."""
        return self._backlog.spooled

    def write(self, text: str, stream: str = TAGRUN) -> None:
        if text and not self._closed and not self.failed:
            if self._marker is None:
                self._backlog.add(text)
            else:
                self._backlog.add(text, self._marker.marks(text, CODES[stream], now_ms()))
            if self._task is None:
                self._task = asyncio.create_task(self._pump(), name="logstream")
            if self._backlog.size >= self._max_chunk:
                self._wake.set()

    async def close(self) -> None:
        """Flush what is left and stop."""
        self._closed = True
        self._wake.set()
        if self._task is None:
            return
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def discard(self) -> None:
        """Stop now: what has not been sent is dropped, the spool file removed."""
        self._closed = self.failed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._backlog.clear()

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            await self._flush()
            if self._closed and not self._backlog.size:
                return

    async def _flush(self) -> None:
        while self._backlog.size and not self.failed:
            chunk, marks = self._backlog.take_marked(self._max_chunk)
            if self._marker is not None:
                marks = anchored(chunk, marks, self._line_ended, self._inherited)
                self._inherited = (marks[-1][1], marks[-1][2]) if marks else self._inherited
                self._line_ended = chunk.endswith("\n")
            try:
                await self._sink(self.offset, chunk, marks)
            except StreamEnded as exc:
                self._stop(exc)
                return
            except Exception as exc:  # noqa: BLE001 - a log sink failure must not kill the job
                if not await self._mark_lost(len(chunk), exc):
                    return
                continue
            self.offset += len(chunk)
        if self.failed:
            self._backlog.clear()

    async def _mark_lost(self, size: int, refusal: Exception) -> bool:
        """Put a marker where the refused chunk was; False (the stream stops) if even the
        marker cannot be written."""
        reason = " ".join(str(refusal).split())[:300] or type(refusal).__name__
        log.warning("logs.chunk_lost", extra={"job_id": self._job_id, "characters": size,
                                              "error": reason})
        marker = lost_chunk_marker(size, reason)
        marks = [(1, now_ms(), _TAGRUN)] if self._marker is not None else []
        try:
            await self._sink(self.offset, marker, marks)
        except Exception as exc:  # noqa: BLE001 - same as for the chunk itself
            self._stop(exc)
            return False
        self.lost_chunks += 1
        self.offset += len(marker)
        self._line_ended = True  # the marker ends with a newline
        return True

    def _stop(self, exc: Exception) -> None:
        log.warning("logs.write_failed", extra={"job_id": self._job_id, "error": str(exc)})
        self.failed = True
        self._backlog.clear()

