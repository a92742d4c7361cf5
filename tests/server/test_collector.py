"""The server process runs the collector's full passes on its own schedule
(server/collector.py): none at CPython's whim, and what dies old is still freed."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import Iterator

import pytest

from tagrun.server import collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


def old_garbage() -> weakref.ref[Node]:
    """A cycle that became garbage after the younger passes had moved it to the oldest
    generation, as a closed connection's objects do."""
    node = Node()
    gc.collect(1)  # survives both younger generations: it is old now
    ref = weakref.ref(node)
    del node
    return ref


def test_no_automatic_full_pass_and_the_younger_ones_unchanged(
        thresholds: tuple[int, int, int]) -> None:
    collector.take_full_passes()
    young, middle, full = gc.get_threshold()
    assert (young, middle) == thresholds[:2]
    assert full >= 10**9
    ref = old_garbage()
    for _ in range(3):
        gc.collect(1)  # what the automatic passes do from now on: never reaches it
    assert ref() is not None


def test_the_scheduled_full_pass_frees_what_died_old(
        thresholds: tuple[int, int, int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tagrun.runtime")
    collector.take_full_passes()
    ref = old_garbage()
    full_before = gc.get_stats()[2]["collections"]

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.full_passes(stop, every_s=0.05))
        deadline = time.monotonic() + 10
        while ref() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 5)  # it ends with the server

    asyncio.run(run())
    assert ref() is None, "no full pass ran within 10 s"
    assert gc.get_stats()[2]["collections"] > full_before
    passes = [r for r in caplog.records if r.getMessage() == "gc.full_pass"]
    assert passes, "the pass was not logged (docs/events.md: gc.full_pass)"
    assert all(r.freed >= 0 and r.took_ms >= 0 for r in passes)  # type: ignore[attr-defined]


def test_the_younger_passes_run_on_their_clock_whatever_the_allocation_count(
        thresholds: tuple[int, int, int]) -> None:
    """A server that frees about as many objects as it makes (long-polls renewed) never
    reaches CPython's first threshold: its young cycles are still freed, on the clock."""
    gc.set_threshold(10**9, 10, 10**9)  # CPython's own passes never come
    node = Node()
    ref = weakref.ref(node)
    del node

    async def run() -> None:
        stop = asyncio.Event()
        passes = asyncio.create_task(collector.young_passes(stop, every_s=0.01))
        deadline = time.monotonic() + 10
        while ref() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await passes

    asyncio.run(run())
    assert ref() is None, "a young cycle outlived the scheduled younger passes"
