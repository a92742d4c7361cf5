"""LogStream: what reaches the log when its sink refuses a chunk or ends the stream."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from tagrun.shared import logstream
from tagrun.shared.loglines import Mark, split_lines
from tagrun.shared.logstream import (
    Backlog,
    LogStream,
    StreamEnded,
    dropped_marker,
    lost_chunk_marker,
)


class Log:
    """A sink that keeps what it was sent, by offset, as the server does, and refuses the
    chunks holding `refuse` (or ends the stream at `end`)."""

    def __init__(self, refuse: str = "", end: str = "") -> None:
        self.text = ""
        self.refuse, self.end = refuse, end

    async def sink(self, offset: int, data: str, marks: list[Mark] | None = None) -> None:
        assert offset == len(self.text), (offset, len(self.text))
        if self.end and self.end in data:
            raise StreamEnded("the lease is lost")
        if self.refuse and self.refuse in data:
            raise ValueError("refused by the server: 413 too_large")
        self.text += data


def stream_through(log: Log, *pieces: str) -> LogStream:
    async def run() -> LogStream:
        stream = LogStream(log.sink, 0, interval_s=0.01, max_chunk=8, job_id=7)
        for piece in pieces:
            before = stream.offset
            stream.write(piece)
            # Each piece its own chunk: the next is written once this one was dealt with.
            deadline = asyncio.get_running_loop().time() + 10
            while stream.offset == before and not stream.failed:
                assert asyncio.get_running_loop().time() < deadline, "the chunk was not sent"
                await asyncio.sleep(0.005)
        await stream.close()
        return stream

    return asyncio.run(run())


def test_a_refused_chunk_leaves_a_marker_and_the_rest_of_the_log_flows() -> None:
    log = Log(refuse="BAD")
    stream = stream_through(log, "one\n", "BAD\n", "two\n", "three\n")
    marker = lost_chunk_marker(4, "refused by the server: 413 too_large")
    assert log.text == f"one\n{marker}two\nthree\n"
    assert stream.lost_chunks == 1 and not stream.failed
    assert stream.offset == len(log.text)


def test_a_stream_that_ends_sends_nothing_more() -> None:
    log = Log(end="END")
    stream = stream_through(log, "one\n", "END\n", "two\n")
    assert log.text == "one\n"
    assert stream.failed and stream.lost_chunks == 0


def test_when_even_the_marker_is_refused_the_stream_stops() -> None:
    log = Log(refuse="o")  # the marker itself holds an "o"
    stream = stream_through(log, "xyz\n", "one\n", "abc\n")
    assert log.text == "xyz\n"
    assert stream.failed


# --- the backlog: output waiting while the sink cannot deliver -----------------------------

def test_output_past_memory_waits_in_a_private_spool_file_and_comes_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstream, "MEMORY_CHARS", 100)
    spool = tmp_path / "job1-1.log"
    backlog = Backlog(spool, limit_bytes=10_000, job_id=1)
    lines = [f"line {i} é\u2603\n" for i in range(200)]
    for line in lines[:50]:
        backlog.add(line)
    assert spool.exists() and stat.S_IMODE(spool.stat().st_mode) == 0o600
    taken = backlog.take(7)  # taking and adding interleave, as a flush and a job's output do
    for line in lines[50:]:
        backlog.add(line)
    while backlog.size:
        taken += backlog.take(64)
    assert taken == "".join(lines) and backlog.spooled
    assert not spool.exists()  # drained: the file is gone


def test_output_past_the_spool_limit_is_dropped_with_a_marker_and_the_rest_flows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstream, "MEMORY_CHARS", 100)
    backlog = Backlog(tmp_path / "spool", limit_bytes=1000)
    backlog.add("a" * 900)
    backlog.add("b" * 500)  # does not fit: dropped
    backlog.add("c" * 300)  # still no room
    first = backlog.take(10_000)
    backlog.add("after\n")
    rest = ""
    while backlog.size:
        rest += backlog.take(10_000)
    assert first + rest == "a" * 900 + dropped_marker(800) + "after\n"


def test_a_discarded_stream_removes_its_spool_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstream, "MEMORY_CHARS", 10)
    spool = tmp_path / "spool"
    sent: list[str] = []
    release = asyncio.Event()

    # the server out of reach
    async def stuck_sink(offset: int, data: str, marks: list[Mark]) -> None:
        await release.wait()
        sent.append(data)

    async def run() -> None:
        stream = LogStream(stuck_sink, 0, interval_s=0.01, max_chunk=8,
                           backlog=Backlog(spool, 10_000))
        stream.write("x" * 8)
        for _ in range(200):
            await asyncio.sleep(0.005)
            stream.write("y" * 5)
        assert spool.exists()
        await stream.discard()
        assert not spool.exists() and sent == []

    asyncio.run(run())


def test_a_spool_that_cannot_be_written_keeps_output_in_memory_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(logstream, "MEMORY_CHARS", 10)
    backlog = Backlog(tmp_path / "missing-dir" / "spool", 10_000, job_id=9)
    with caplog.at_level("WARNING"):
        backlog.add("0123456789abc")
        backlog.add("more")
    assert [r.msg for r in caplog.records] == ["logs.spool_failed"]
    # Memory alone holds what it can (MEMORY_CHARS); the rest is dropped, and the log says so.
    assert backlog.take(1000) + backlog.take(1000) == "0123456789abc" + dropped_marker(4)


def test_a_partition_holds_the_log_and_the_whole_of_it_arrives_in_order_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstream, "MEMORY_CHARS", 50)
    log = Log()
    reachable = asyncio.Event()

    async def sink(offset: int, data: str, marks: list[Mark]) -> None:
        await reachable.wait()
        await log.sink(offset, data)

    async def run() -> LogStream:
        stream = LogStream(sink, 0, interval_s=0.01, max_chunk=16,
                           backlog=Backlog(tmp_path / "spool", 100_000))
        for i in range(500):
            stream.write(f"tick {i}\n")
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        assert stream.spooled
        reachable.set()
        await stream.close()
        return stream

    stream = asyncio.run(run())
    assert log.text == "".join(f"tick {i}\n" for i in range(500))
    assert stream.offset == len(log.text) and not (tmp_path / "spool").exists()


# --- marks: each line's time and stream travel with the text ------------------------------

def test_marks_come_back_with_the_chunks_their_lines_begin_in_even_from_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstream, "MEMORY_CHARS", 100)
    backlog = Backlog(tmp_path / "spool", limit_bytes=100_000)
    lines = [f"line {i} é\n" for i in range(300)]
    for i, line in enumerate(lines):
        backlog.add(line, [(0, 1000 + i, i % 2)])
    assert backlog.spooled
    text, starts = "", []
    while backlog.size:
        chunk, marks = backlog.take_marked(37)
        starts += [(len(text) + pos, ms, code) for pos, ms, code in marks]
        assert all(0 <= pos < len(chunk) for pos, _, _ in marks)
        text += chunk
    assert text == "".join(lines)
    offsets = [sum(map(len, lines[:i])) for i in range(300)]
    assert starts == [(offsets[i], 1000 + i, i % 2) for i in range(300)]


def test_a_marked_stream_marks_its_lines_by_stream_and_the_markers_as_its_own() -> None:
    sent: list[tuple[int, str, list[Mark]]] = []

    async def sink(offset: int, data: str, marks: list[Mark]) -> None:
        if "BAD" in data:
            raise ValueError("refused")
        sent.append((offset, data, marks))

    async def run() -> None:
        stream = LogStream(sink, 0, interval_s=0.01, max_chunk=1000, marks=True)
        stream.write("out\npart", "stdout")
        stream.write("err\n", "stderr")
        await asyncio.sleep(0.1)
        stream.write("xBAD\n", "stdout")
        await asyncio.sleep(0.1)
        stream.write("ial\n", "stdout")
        stream.write("[tagrun: note]\n")
        await stream.close()

    asyncio.run(run())
    text = "".join(data for _, data, _ in sent)
    starts = [(offset + pos, (ms, code)) for offset, _, marks in sent for pos, ms, code in marks]
    lines, _ = split_lines(text, starts, 0, first=None, ended=True, full=False)
    assert [(line["text"], line["stream"]) for line in lines] == [
        ("out", "stdout"), ("part", "stdout"), ("err", "stderr"),
        ("", "stderr"),  # the marker's own newline, which would end a line under way
        ("[tagrun: log chunk lost: 5 characters: refused]", "tagrun"),
        ("ial", "stdout"), ("[tagrun: note]", "tagrun")]
