"""The client's loops, written once for sync and async: generators that yield the next `Call`
and are sent its answer. `wait` long-polls a job until it is final; `follow_logs` also yields
the log's lines as they arrive."""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from typing import Any

from tagrun.client import _calls as calls
from tagrun.client._errors import WaitTimeout
from tagrun.client._models import Job, LogChunk

# The longest one poll is held open: well under the 60 s after which common proxies and load
# balancers drop an idle request.
POLL_S = 25.0
# While a followed job runs and prints nothing, how long to wait before reading its log again
# (an end of the job answers at once).
FOLLOW_POLL_S = 1.0

Waiting = Generator[calls.Call[Job], Job, Job]
Steps = Generator[calls.Call[Any] | str, Any, None]  # calls, and the lines they read


def wait(workspace: str, job_id: int, timeout: float | None) -> Waiting:
    """The job once final; WaitTimeout once `timeout` seconds have passed (None: never)."""
    started = time.monotonic()
    deadline = started + timeout if timeout is not None else math.inf
    while True:
        left = max(deadline - time.monotonic(), 0.0)
        job = yield calls.get_job(workspace, job_id, wait_s=min(POLL_S, left))
        if job.done:
            return job
        if time.monotonic() >= deadline:
            raise WaitTimeout(job, deadline - started)


def follow_logs(workspace: str, job_id: int, *, follow: bool) -> Steps:
    """The log's lines (str), between the calls that read it; with `follow`, until the job is
    final and its whole log read, else what there is now."""
    lines = Lines()
    offset = 0
    while True:
        chunk: LogChunk = yield calls.job_logs(workspace, job_id, offset)
        offset = chunk.offset
        yield from lines.feed(chunk.data)
        if chunk.done or not follow:
            yield from lines.rest()
            return
        if not chunk.data:
            yield calls.get_job(workspace, job_id, wait_s=FOLLOW_POLL_S)


class Lines:
    """A log's text, arriving in chunks that may end mid-line, as lines without their ends."""

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, data: str) -> list[str]:
        *lines, self._tail = (self._tail + data).split("\n")
        return [line.removesuffix("\r") for line in lines]

    def rest(self) -> list[str]:
        """The last line, when the log does not end with a line end."""
        tail, self._tail = self._tail, ""
        return [tail.removesuffix("\r")] if tail else []
