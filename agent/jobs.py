"""The agent's side of a lease over HTTP: the port through which the lease holder
(shared/holder.py) sends a job's log and outcome, its heartbeats and its releases."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tagrun.agent.client import AgentClient
from tagrun.agent.completions import Completions
from tagrun.agent.errors import REFUSED_FOR_WHAT_WAS_SENT, ServerAnswer
from tagrun.shared.agent_wire import AgentJob, CompletedJob, RefusalIn
from tagrun.shared.holder import Deadline, Held, LeaseGone, Refused
from tagrun.shared.logfmt import event
from tagrun.shared.loglines import Mark

log = logging.getLogger("tagrun.agent")



def _refused(answer: ServerAnswer) -> Exception:
    if answer.lease_lost:
        return LeaseGone(str(answer))
    return Refused(f"{answer.code}: {answer.message}",
                   again=answer.status in REFUSED_FOR_WHAT_WAS_SENT)


class HttpPort:
    """GaveUp (the holder's OutOfReach) and TokenRefused (its Fatal) pass as they are."""

    def __init__(self, client: AgentClient, completions: Completions) -> None:
        self.name = client.name
        self._client = client
        self._completions = completions

    async def append_logs(self, job: AgentJob, offset: int, data: str, until: Deadline,
                          marks: Sequence[Mark] = ()) -> None:
        try:  # marks only to a server that keeps them (an older one refuses the field)
            await self._client.append_logs(job.workspace, job.id, job.attempt, offset, data,
                                           until=until, marks=marks if job.log_marks else None)
        except ServerAnswer as exc:
            if exc.lease_lost:
                raise LeaseGone(str(exc)) from exc
            raise  # this chunk alone is marked lost in the log

    async def complete(self, job: AgentJob, outcome: CompletedJob, until: Deadline) -> None:
        try:
            status = await self._completions.complete_job(job.workspace, outcome, until=until)
        except ServerAnswer as exc:
            raise _refused(exc) from exc
        event(log, logging.INFO, "job.completed", {"job_id": job.id, "attempt": job.attempt,
                                                   "status": status, "outcome": outcome.status})

    async def heartbeat(self, held: Held, acknowledges: bool
                        ) -> tuple[list[int], list[int], float]:
        """ServerAnswer (a heartbeat refused) is the runner's to log."""
        cancel, lost = await self._client.heartbeat(held, acknowledges=acknowledges)
        return cancel, lost, self._client.heartbeat_sent_at

    async def release(self, held: Held) -> list[int]:
        try:
            return await self._client.release(held)
        except ServerAnswer as exc:
            raise _refused(exc) from exc

    async def refuse(self, job: AgentJob, kind: str, reason: str) -> bool:
        try:
            released = await self._client.release([], [RefusalIn(
                job.id, job.attempt, kind, reason[:500])])
        except ServerAnswer as exc:
            raise _refused(exc) from exc
        return job.id in released
