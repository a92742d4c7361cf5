"""Reports job outcomes, several in one request when jobs finish together.

A completion goes out at once when no report is in flight; those that finish while one is
in flight wait for it and then leave together (no timer, so a lone job is never delayed).
Each job still gets its own answer: its new status, or the refusal meant for it alone.

Outcomes that come while the agent is about to claim (`riding()`: its claim loop waits for
the slots these jobs free) ride on that claim instead, to a server that takes them
(Claimed.accepts_completed): one request per batch of jobs rather than two. The claim loop
takes them (`riders`) and hands back their answers (`answered`), or gives them back to be
sent on their own (`unsent`) when it will not claim or its claim failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tagrun.agent.client import AgentClient, Deadline, outcome
from tagrun.agent.errors import ServerAnswer
from tagrun.shared.agent_wire import CompletedItem, CompletedJob

MAX_BATCH = 100
# A large result goes by itself: a batch must stay well under the server's body limit, and a
# refusal of a too-large result must reach that job alone.
MAX_BATCHED_BYTES = 16 * 1024
MAX_BATCH_BYTES = 256 * 1024
_STATUS_OF_CODE = {"lease_lost": 409, "completion_conflict": 409, "not_found": 404,
                   "forbidden": 403}


@dataclass
class Pending:
    workspace: str
    item: CompletedJob
    size: int
    until: Deadline | None = None  # retried until then (the job's lease)
    answer: asyncio.Future[str] = field(default_factory=asyncio.Future)


class Completions:
    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._queue: list[Pending] = []
        self._sender: asyncio.Task[None] | None = None
        # The claim loop says whether a claim is about to go out that can carry outcomes.
        self.riding: Callable[[], bool] = lambda: False
        self._riders: list[Pending] = []

    async def complete(self, workspace: str, job_id: int, attempt: int, status: str,
                       result: Any, error: dict[str, str] | None, *, retryable: bool = True,
                       until: Deadline | None = None, log_chunks_lost: int = 0) -> str:
        """The job's new status on the server; raises what the single-job route would.
        Not `retryable`: the job fails now.
        `until`: retried while the server is out of reach until then (else the bound)."""
        return await self.complete_job(workspace, outcome(
            job_id, attempt, status, result, error, retryable=retryable,
            log_chunks_lost=log_chunks_lost), until=until)

    async def complete_job(self, workspace: str, item: CompletedJob, *,
                           until: Deadline | None = None) -> str:
        """The same for an outcome already made (shared/holder.py makes them)."""
        try:
            size = len(json.dumps(msgspec.to_builtins(item)))
        except (TypeError, ValueError):
            size = MAX_BATCHED_BYTES + 1  # let the single route say what is wrong with it
        if size > MAX_BATCHED_BYTES:
            return await self._one(workspace, item, until)
        pending = Pending(workspace, item, size, until)
        if self._client.accepts_completed and self.riding():
            self._riders.append(pending)
        else:
            self._enqueue([pending])
        return await pending.answer

    def _enqueue(self, pendings: list[Pending]) -> None:
        self._queue.extend(pendings)
        if self._queue and (self._sender is None or self._sender.done()):
            self._sender = asyncio.create_task(self._send(), name="completions")

    def riders(self) -> list[Pending]:
        """The outcomes waiting for the claim about to go out (as many as one batch holds;
        the rest are sent on their own)."""
        riders, self._riders = self._riders, []
        carried = _take(riders)
        self._enqueue(riders)
        return carried

    def answered(self, riders: list[Pending], answers: list[CompletedItem] | None) -> None:
        """The claim that carried `riders` was answered: each job hears its own answer."""
        _settle_batch(riders, answers or [])

    def unsent(self, riders: list[Pending] | None = None) -> None:
        """Outcomes that will not ride (the claim failed, or none will go out): sent on their
        own. None: every outcome still waiting for a claim."""
        if riders is None:
            riders, self._riders = self._riders, []
        self._enqueue([p for p in riders if not p.answer.done()])

    async def _send(self) -> None:
        await asyncio.sleep(0)  # what finishes in this same turn of the loop goes along
        while self._queue:
            batch = _take(self._queue)
            if len(batch) == 1:
                await self._settle(batch[0], self._one(batch[0].workspace, batch[0].item,
                                                        batch[0].until))
            else:
                await self._send_batch(batch)

    async def _send_batch(self, batch: list[Pending]) -> None:
        try:
            answers = await self._client.complete_many([p.item for p in batch],
                                                       until=_latest(batch))
        except ServerAnswer as exc:
            if exc.status not in (400, 404, 413, 422):
                return _fail(batch, exc)
            # The batch as a whole was refused: send each alone, so each gets its own answer.
            for pending in batch:
                await self._settle(pending, self._one(pending.workspace, pending.item,
                                                      pending.until))
            return
        except Exception as exc:  # noqa: BLE001 - GaveUp, TokenRefused: every job hears it
            return _fail(batch, exc)
        _settle_batch(batch, answers)

    async def _settle(self, pending: Pending, work: Any) -> None:
        try:
            status = await work
        except Exception as exc:  # noqa: BLE001 - handed to the job that is waiting for it
            if not pending.answer.done():
                pending.answer.set_exception(exc)
        else:
            if not pending.answer.done():
                pending.answer.set_result(status)

    async def _one(self, workspace: str, item: CompletedJob, until: Deadline | None) -> str:
        return await self._client.report(workspace, item, until=until)


def _take(queue: list[Pending]) -> list[Pending]:
    """The first outcomes of `queue` that fit in one batch, taken out of it."""
    batch: list[Pending] = []
    total = 0
    while queue and len(batch) < MAX_BATCH and total + queue[0].size <= MAX_BATCH_BYTES:
        total += queue[0].size
        batch.append(queue.pop(0))
    return batch


def _settle_batch(batch: list[Pending], answers: list[CompletedItem]) -> None:
    by_id = {a.id: a for a in answers}
    for pending in batch:
        answer = by_id.get(pending.item.id)
        if pending.answer.done():
            continue
        if answer is None:
            pending.answer.set_exception(ServerAnswer(502, "no_answer",
                                                      "the server skipped this job"))
        elif answer.error is not None:
            code = answer.error.code
            pending.answer.set_exception(ServerAnswer(
                _STATUS_OF_CODE.get(code, 400), code, answer.error.message))
        else:
            pending.answer.set_result(answer.status or pending.item.status)


def _latest(batch: list[Pending]) -> Deadline | None:
    """A batch is retried as long as its longest-lived job may be: past a shorter lease, the
    server answers that job lease_lost, which it would hear anyway."""
    deadlines = [p.until for p in batch]
    if any(d is None for d in deadlines):
        return None
    return lambda: max(d() for d in deadlines if d is not None)


def _fail(batch: list[Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.answer.done():
            pending.answer.set_exception(exc)
