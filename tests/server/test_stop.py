"""A stopping server always ends, even when one of its parts does not."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tagrun.server import runtime


def test_a_part_that_does_not_stop_is_logged_and_cut_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "STOP_WAIT_S", 0.2)
    cut_short = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cut_short.set()
            raise

    async def draining_worker() -> None:  # a worker has its own drain timeout: waited for
        await asyncio.sleep(0.4)

    async def scenario() -> float:
        tasks = [asyncio.create_task(stuck(), name="scheduler"),
                 asyncio.create_task(asyncio.sleep(0), name="maintenance")]
        worker = asyncio.create_task(draining_worker(), name="worker")
        started = time.monotonic()
        await runtime._finish(tasks, [worker])
        assert cut_short.is_set()
        assert worker.done() and not worker.cancelled()
        return time.monotonic() - started

    with caplog.at_level(logging.WARNING, logger="tagrun.runtime"):
        took = asyncio.run(scenario())
    assert 0.4 <= took < 5
    slow = [r for r in caplog.records if r.message == "server.stop_slow"]
    assert [getattr(r, "part", None) for r in slow] == ["scheduler"]
