"""A job log's lines: when each began and which stream wrote it, kept beside the log's text.

The text stays what it always was (offsets count its characters). A line begins after each
newline, and where the writing stream changes in the middle of a line (so that no line is
both stdout's and stderr's). Beside each chunk of the text go its marks, `(position in the
chunk, epoch milliseconds, stream code)`: a mark begins a line, and the lines that begin from
it up to the next mark began then, on that stream. A mark is made only where that changes
(most writes of a job need one, whatever their number of lines), and each chunk marks its
first line start, so that a chunk's lines are known from the chunk alone. The holder marks
output as it arrives (`LineMarker`, `anchored`, through shared/logstream.py), the server
stores a chunk's marks in the statement that appends it, and splits the text it reads back
into lines (`split_lines`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

STDOUT, STDERR, TAGRUN = "stdout", "stderr", "tagrun"  # tagrun: the holder's own lines
STREAMS = (STDOUT, STDERR, TAGRUN)  # a mark's stream code is its index here
CODES = {name: code for code, name in enumerate(STREAMS)}
Mark = tuple[int, int, int]  # (position, epoch ms, stream code)
# The latest time a mark may carry (9999-12-31): any later cannot be shown as a date.
MAX_MS = 253_402_300_799_999


class LineMarker:
    """Marks what is written to one log, write after write: where the time or stream of the
    lines beginning in a write changes, and where a stream changes in the middle of a line.

    `at_line_start`: the log so far ends with a newline (or is empty). When unknown (a later
    attempt continues the log of an earlier one), the first write is marked unless it starts
    with a newline, which ends the line before it."""

    def __init__(self, at_line_start: bool = True) -> None:
        self._open: int | None = None if at_line_start else -1  # the stream of the line under way
        self._last: tuple[int, int] | None = None  # (ms, code) of the latest mark

    def marks(self, text: str, code: int, ms: int) -> list[Mark]:
        if not text:
            return []
        # The stream changes in the middle of a line (or the log's end is unknown): a line
        # of its own begins here, whatever the time.
        switch = self._open is not None and self._open != code and text[0] != "\n"
        at_start = self._open is None
        self._open = None if text[-1] == "\n" else code
        first = 0 if switch or at_start else text.find("\n") + 1
        if first == 0 and not (switch or at_start) or first >= len(text):
            return []  # no line begins in this write
        if not switch and self._last == (ms, code):
            return []  # its lines began when and where the latest mark says
        self._last = (ms, code)
        return [(first, ms, code)]


def anchored(chunk: str, marks: list[Mark], at_line_start: bool,
             inherited: tuple[int, int] | None) -> list[Mark]:
    """A chunk's marks with its first line start marked (with `inherited`, the (ms, code)
    of the latest mark before the chunk), so that its lines are known from it alone."""
    if inherited is None:
        return marks
    first = 0 if at_line_start else chunk.find("\n") + 1 or len(chunk)
    if first >= len(chunk) or (marks and marks[0][0] <= first):
        return marks
    return [(first, *inherited), *marks]


def flat(marks: Iterable[Mark]) -> list[int]:
    """Marks as one flat list (how they are stored: `job_logs.marks`)."""
    return [value for mark in marks for value in mark]


def moved(marks: Sequence[Mark], positions: Sequence[int]) -> list[Mark]:
    """`marks` at new `positions` (text redacted around them); of two that land on one
    position (inside a secret), the later stays: it tells of the lines after it."""
    out: list[Mark] = []
    for (_, ms, code), pos in zip(marks, positions, strict=True):
        if out and pos <= out[-1][0]:
            out.pop()
        out.append((pos, ms, code))
    return out


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{ms % 1000:03d}Z"


@dataclass(frozen=True)
class Chunk:
    off: int
    data: str
    marks: Sequence[int] | None  # flat (position, ms, code) triples; None: not marked


# (position in a text, (epoch ms, stream code)), or None from where the chunks hold no marks
Starts = list[tuple[int, tuple[int, int] | None]]


def page(chunks: Sequence[Chunk], start: int) -> tuple[str, Starts]:
    """The text `chunks` hold from `start` on, and its marks (None: where an unmarked chunk
    begins, from a holder that does not mark lines)."""
    parts: list[str] = []
    starts: Starts = []
    length = 0
    for chunk in chunks:
        skip = max(start - chunk.off, 0)
        parts.append(chunk.data[skip:])
        if chunk.marks is None:
            starts.append((length, None))
        values = chunk.marks or ()
        for i in range(0, len(values) - 2, 3):
            pos = values[i] - skip
            if 0 <= pos < len(chunk.data) - skip and values[i + 2] < len(STREAMS):
                starts.append((length + pos, (values[i + 1], values[i + 2])))
        length += len(chunk.data) - skip
    return "".join(parts), starts


def split_lines(text: str, starts: Sequence[tuple[int, tuple[int, int] | None]], start: int,
                *, first: Mark | None, ended: bool, full: bool
                ) -> tuple[list[dict[str, object]], int]:
    """The lines of `text` (the log from offset `start` on, `starts` its marks) as the logs
    API gives them, ({offset, at, stream, text}, …), and the offset where they end (where
    a reader of lines reads on). A line ends at a newline (not part of its text) or where a
    mark begins another; it has the time and stream of the latest mark at or before its
    start (`first` before any in `text`: the mark of the line under way at `start`). The
    last line, unfinished, is left for the next read, unless the log has `ended` or it is the
    only line of a `full` page (a line longer than a page comes in pieces)."""
    if not text:
        return [], start
    lines: list[dict[str, object]] = []
    marks = iter(starts)
    upcoming = next(marks, None)
    current = (first[1], first[2]) if first else None
    pos = 0
    while pos < len(text):
        while upcoming is not None and upcoming[0] <= pos:
            current, upcoming = upcoming[1], next(marks, None)
        newline = text.find("\n", pos)
        end = len(text) if newline < 0 else newline + 1
        if upcoming is not None and upcoming[1] is not None and upcoming[0] < end:
            end = upcoming[0]  # a mark begins another line within this one
        if end == len(text) and not (text.endswith("\n") or ended or (full and not lines)):
            return lines, start + pos
        lines.append({"offset": start + pos,
                      "at": iso_ms(current[0]) if current else None,
                      "stream": STREAMS[current[1]] if current else None,
                      "text": text[pos:end].removesuffix("\n")})
        pos = end
    return lines, start + len(text)


def last_mark(chunks: Sequence[Chunk], before: int) -> Mark | None:
    """The latest mark at a position before `before` (absolute) in `chunks`, newest last."""
    for chunk in reversed(chunks):
        values = chunk.marks or ()
        for i in range(len(values) - 3, -1, -3):
            if chunk.off + values[i] < before and values[i + 2] < len(STREAMS):
                return (chunk.off + values[i], values[i + 1], values[i + 2])
    return None
