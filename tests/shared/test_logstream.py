"""LogStream: what reaches the log when its sink refuses a chunk or ends the stream."""

from __future__ import annotations

import asyncio

from tagrun.shared.logstream import LogStream, StreamEnded, lost_chunk_marker


class Log:
    """A sink that keeps what it was sent, by offset, as the server does, and refuses the
    chunks holding `refuse` (or ends the stream at `end`)."""

    def __init__(self, refuse: str = "", end: str = "") -> None:
        self.text = ""
        self.refuse, self.end = refuse, end

    async def sink(self, offset: int, data: str) -> None:
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
