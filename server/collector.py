"""When the server process runs the cyclic garbage collector's full passes.

A full pass walks every object alive. With 10,000 agents' long-polls held open (their
requests, tasks, futures and protocol objects), each took up to 1 s, came every 5-6 s while
the long-polls were renewed (CPython runs one whenever the objects that outlived the younger
passes reach a quarter of the old ones), and found nothing to free: 9.7 s of stalls in a
100 s run of `scripts/bench/agents.py --agents 10000`, during which no request and no
dispatch moved (docs/performance.md). So the process runs them itself, every FULL_EVERY_S:
what the younger passes miss (cycles that die old, such as a closed connection's objects)
waits at most that long.

The younger passes are run on a clock too (`young_passes`), besides CPython's own. CPython
starts one when the allocations of tracked objects outnumber their deallocations by the first
threshold; a server renewing 10,000 long-polls frees about as many objects as it makes, so
that count hardly moved while every new request's objects piled up in the young generations:
each younger pass then walked 55,000-200,000 objects, 50-175 ms during which nothing moved,
every few seconds (measured with gc.callbacks during `scripts/bench/agents.py --agents
10000`), and these stalls made dispatch's p99. A pass every YOUNG_EVERY_S walks only what
came since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

log = logging.getLogger("tagrun.runtime")

FULL_EVERY_S = 300.0
# gc's third threshold counts second-generation passes between full ones: never reached.
NO_AUTOMATIC_FULL = 1_000_000_000
SLOW_PASS_MS = 100.0
YOUNG_EVERY_S = 0.1


def take_full_passes() -> None:
    """From now on, the process's full passes are `full_passes`' alone."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL)


async def full_passes(stop: asyncio.Event, every_s: float = FULL_EVERY_S) -> None:
    """One full pass every `every_s` until `stop`."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        started = time.perf_counter()
        freed = gc.collect()
        took_ms = round((time.perf_counter() - started) * 1000, 1)
        # Every request waited that long: worth a line when it was long enough to notice.
        log.log(logging.INFO if took_ms >= SLOW_PASS_MS else logging.DEBUG, "gc.full_pass",
                extra={"freed": freed, "took_ms": took_ms})


async def young_passes(stop: asyncio.Event, every_s: float = YOUNG_EVERY_S) -> None:
    """A pass over the two younger generations every `every_s` until `stop`: what survives
    it moves to the oldest, which only full_passes walks."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if not stop.is_set():
            gc.collect(1)
