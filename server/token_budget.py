"""Job-limited agent tokens: a claim takes its jobs out of its token's budget (max_jobs).

A token minted with max_jobs may claim that many jobs in total, whichever agents use it and
whichever replicas they reach. Before the dispatcher's claim, one statement reserves up to
what is left of the budget, and the claim asks for no more slots than that; after it, one
statement counts what was leased and gives the rest of the reservation back. The limit is a
claim of the token itself, so a token without one costs no query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tagrun.server.agent_tokens import AgentIdentity
from tagrun.server.store import DATABASE_ERRORS, ClaimedRow, Store

log = logging.getLogger("tagrun.token_budget")

# The budget is held by other claims in flight (other agents of the token): look again while
# the claim waits, since theirs may come back unused; first after RETRY_S, then twice as long
# each time up to RETRY_MAX_S, so that many agents sharing one token do not queue on its row.
RETRY_S = 0.5
RETRY_MAX_S = 4.0
# A reservation outlives its claim's wait by this much before it lapses (a replica that died
# mid-claim never settles it).
HOLD_MARGIN_S = 30.0

# The dispatcher's claim, for a number of slots and a wait.
ClaimJobs = Callable[[int, float], Awaitable[list[ClaimedRow]]]

_background: set[asyncio.Task[None]] = set()


class TokenBudget:
    """One claim's view of its token's budget; `spent` once nothing is left to claim."""

    def __init__(self, store: Store, agent: AgentIdentity) -> None:
        self.store = store
        self.agent = agent
        self.spent = False

    async def claim(self, slots: int, wait_s: float, claim: ClaimJobs) -> list[ClaimedRow]:
        if self.agent.max_jobs is None:
            return await claim(slots, wait_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        granted = await self._reserve(slots, wait_s, deadline)
        if not granted:
            return []
        try:
            jobs = await claim(granted, max(deadline - loop.time(), 0.0))
        except BaseException:  # the dispatcher gave back what it leased: so is the budget
            _in_background(self.store.settle_jobs(self.agent.jti, granted, 0))
            raise
        settling = asyncio.ensure_future(self._settle(granted, jobs))
        try:
            return await asyncio.shield(settling)
        except asyncio.CancelledError:  # the agent went away with the jobs in hand
            _in_background(self._give_back_settled(settling))
            raise

    async def _reserve(self, slots: int, wait_s: float, deadline: float) -> int:
        """Jobs reserved for this claim: 0 if the budget is spent, or if other claims hold
        what is left all through the wait."""
        loop = asyncio.get_running_loop()
        pause = RETRY_S
        while True:
            granted, self.spent = await self.store.reserve_jobs(
                self.agent.jti, slots, wait_s + HOLD_MARGIN_S)
            left = deadline - loop.time()
            if granted or self.spent or left <= 0:
                return granted
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, RETRY_MAX_S)

    async def _settle(self, granted: int, jobs: list[ClaimedRow]) -> list[ClaimedRow]:
        kept, self.spent = await self.store.settle_jobs(self.agent.jti, granted, len(jobs))
        if kept < len(jobs):  # claims overlapped past a lapsed reservation: never past max_jobs
            log.warning("token_budget.over", extra={"jti": self.agent.jti,
                                                    "jobs": [j.id for j in jobs[kept:]]})
            await self._release(jobs[kept:])
        return jobs[:kept]

    async def _give_back_settled(self, settling: asyncio.Future[list[ClaimedRow]]) -> None:
        with contextlib.suppress(Exception):
            kept = await settling
            await self._release(kept)
            await self.store.refund_jobs(self.agent.jti, len(kept))

    async def _release(self, jobs: list[ClaimedRow]) -> None:
        if jobs:
            with contextlib.suppress(*DATABASE_ERRORS):
                await self.store.release_jobs(jobs[0].worker, [(j.id, j.attempt) for j in jobs],
                                              key=jobs[0].holder_key)


def _in_background(work: Awaitable[object]) -> None:
    async def run() -> None:
        with contextlib.suppress(Exception):
            await work

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)
