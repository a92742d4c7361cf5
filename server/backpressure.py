"""Refuses submissions past `TAGRUN_MAX_QUEUED` queued jobs, with 429 and Retry-After.

The queue depth is read at most once a second per process (a count of the small `queue`
table), so a burst of submissions costs one query, not one each.
"""

from __future__ import annotations

import time

from tagrun.server.errors import TooManyRequests
from tagrun.server.store import Store

REFRESH_S = 1.0


class Backpressure:
    def __init__(self, store: Store, max_queued: int) -> None:
        self.store = store
        self.max_queued = max_queued
        self._depth = 0
        self._read_at = float("-inf")

    async def admit(self, count: int) -> None:
        if not self.max_queued:
            return
        now = time.monotonic()
        if now - self._read_at > REFRESH_S:
            self._depth, self._read_at = await self.store.queued_count(), now
        if self._depth + count > self.max_queued:
            raise TooManyRequests(
                f"{self._depth} jobs are queued, the limit is {self.max_queued} "
                "(TAGRUN_MAX_QUEUED); retry later", retry_after_s=2)
        self._depth += count
