"""Reports job outcomes, several in one request when jobs finish together.

A completion goes out at once when no report is in flight; those that finish while one is
in flight wait for it and then leave together (no timer, so a lone job is never delayed).
Each job still gets its own answer: its new status, or the refusal meant for it alone.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tagrun.agent.client import AgentClient, Deadline, outcome
from tagrun.agent.errors import ServerAnswer
from tagrun.shared.agent_wire import CompletedJob

MAX_BATCH = 100
# A large result goes by itself: a batch must stay well under the server's body limit, and a
# refusal of a too-large result must reach that job alone.
MAX_BATCHED_BYTES = 16 * 1024
MAX_BATCH_BYTES = 256 * 1024
_STATUS_OF_CODE = {"lease_lost": 409, "completion_conflict": 409, "not_found": 404,
                   "forbidden": 403}


@dataclass
class _Pending:
    workspace: str
    item: CompletedJob
    size: int
    until: Deadline | None = None  # retried until then (the job's lease)
    answer: asyncio.Future[str] = field(default_factory=asyncio.Future)


class Completions:
    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._queue: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None

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
        pending = _Pending(workspace, item, size, until)
        self._queue.append(pending)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="completions")
        return await pending.answer

    async def _send(self) -> None:
        await asyncio.sleep(0)  # what finishes in this same turn of the loop goes along
        while self._queue:
            batch = self._take()
            if len(batch) == 1:
                await self._settle(batch[0], self._one(batch[0].workspace, batch[0].item,
                                                        batch[0].until))
            else:
                await self._send_batch(batch)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        total = 0
        while self._queue and len(batch) < MAX_BATCH and total + self._queue[0].size \
                <= MAX_BATCH_BYTES:
            total += self._queue[0].size
            batch.append(self._queue.pop(0))
        return batch

    async def _send_batch(self, batch: list[_Pending]) -> None:
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

    async def _settle(self, pending: _Pending, work: Any) -> None:
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


def _latest(batch: list[_Pending]) -> Deadline | None:
    """A batch is retried as long as its longest-lived job may be: past a shorter lease, the
    server answers that job lease_lost, which it would hear anyway."""
    deadlines = [p.until for p in batch]
    if any(d is None for d in deadlines):
        return None
    return lambda: max(d() for d in deadlines if d is not None)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.answer.done():
            pending.answer.set_exception(exc)
