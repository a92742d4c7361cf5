"""Which agents are paused or asked to drain, as every replica holds it in memory.

The claim route asks here before it hands an agent jobs, so steering costs no query per
claim: the set is read from the database at start, again whenever any replica changes it
(NOTIFY on FLEET_CHANNEL, or the listener reconnecting), and a pause's timeout is checked
against the clock. A paused agent's claim waits (without jobs) until the pause ends, is
lifted, or the claim's own wait is up; an agent asked to drain is told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime

from tagrun.server.store import DATABASE_ERRORS, Store

log = logging.getLogger("tagrun.fleet")


class FleetControls:
    def __init__(self, store: Store) -> None:
        self._store = store
        # A paused agent (or group) -> until when (None: until resumed by hand).
        self._agents: dict[str, datetime | None] = {}
        self._groups: dict[str, datetime | None] = {}
        self._draining: set[str] = set()
        self._changed = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._on_change: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after each re-read (the dispatcher ends paused agents' waits)."""
        self._on_change.append(callback)

    async def load(self) -> None:
        rows = await self._store.fleet_controls()
        agents: dict[str, datetime | None] = {}
        groups: dict[str, datetime | None] = {}
        draining: set[str] = set()
        for row in rows:
            if row["scope"] == "group":
                groups[row["target"]] = row["paused_until"]
                continue
            if row["paused"]:
                agents[row["target"]] = row["paused_until"]
            if row["drain"]:
                draining.add(row["target"])
        self._agents, self._groups, self._draining = agents, groups, draining
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # claims waiting out a pause look again
        for callback in self._on_change:
            callback()

    def changed(self) -> None:
        """Something changed (a NOTIFY, or notifications may have been missed): re-read."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        try:
            await self.load()
        except DATABASE_ERRORS as exc:
            log.warning("fleet.reload_failed", extra={"error": str(exc)})

    async def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading

    def paused_for(self, name: str, group: str) -> float | None:
        """Seconds the agent's pause (or its group's) still lasts (inf: until resumed);
        None if it is not paused."""
        now = datetime.now(UTC)
        left: float | None = None
        for until in (self._agents.get(name, now), self._groups.get(group, now)):
            if until is None:
                return math.inf
            if until > now:
                seconds = (until - now).total_seconds()
                left = seconds if left is None else max(left, seconds)
        return left

    def undrain(self, name: str) -> None:
        """A new process of a drained agent connected: it claims as usual."""
        self._draining.discard(name)

    def draining(self, name: str) -> bool:
        return name in self._draining

    async def wait_change(self, timeout: float) -> None:
        """Until the controls change or `timeout` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
