"""Job budgets of agent tokens minted with max_jobs: reserved before a claim, settled after it.

Each statement locks the token's one row (SELECT ... FOR UPDATE reads it as the last writer
left it, on any replica), so two claims never both take the last job of a budget.
"""

from __future__ import annotations

from tagrun.server.store._base import StoreBase

# Up to $2 jobs of the budget for a claim about to be made: what is left once the jobs claimed
# and the reservations of the other claims in flight are counted. A reservation that was never
# settled (its server process died) lapses at reserved_until, which each grant pushes to $3
# seconds from now. Returns nothing for a token without max_jobs (or deleted).
RESERVE_JOBS = """
WITH t AS (
    SELECT jti, max_jobs, jobs_claimed, reserved_until,
           CASE WHEN reserved_until > now() THEN jobs_reserved ELSE 0 END AS held
    FROM agent_tokens WHERE jti = $1 AND max_jobs IS NOT NULL FOR UPDATE),
g AS (SELECT jti, held, reserved_until, jobs_claimed >= max_jobs AS spent,
             least($2::int, greatest(max_jobs - jobs_claimed - held, 0)) AS granted FROM t)
UPDATE agent_tokens a SET jobs_reserved = g.held + g.granted,
    reserved_until = CASE WHEN g.granted > 0
                          THEN greatest(g.reserved_until, now() + make_interval(secs => $3))
                          ELSE g.reserved_until END
FROM g WHERE a.jti = g.jti
RETURNING g.granted, g.spent"""
# After the claim: its $2 reserved jobs are given back, and of the $3 it was leased, those
# within the budget are counted (all of them, unless a lapsed reservation let claims overlap:
# the caller gives the rest back to the queue). `spent`: nothing is left to claim.
SETTLE_JOBS = """
WITH t AS (
    SELECT jti, max_jobs, jobs_claimed,
           CASE WHEN reserved_until > now() THEN jobs_reserved ELSE 0 END AS held
    FROM agent_tokens WHERE jti = $1 FOR UPDATE),
k AS (SELECT jti, held, max_jobs, jobs_claimed,
             least($3::int, greatest(max_jobs - jobs_claimed, 0)) AS kept FROM t)
UPDATE agent_tokens a SET jobs_claimed = k.jobs_claimed + k.kept,
    jobs_reserved = greatest(k.held - $2::int, 0)
FROM k WHERE a.jti = k.jti
RETURNING k.kept, k.jobs_claimed + k.kept >= k.max_jobs AS spent"""
# Jobs counted but never handed over (the agent went away as they were): back in the budget.
REFUND_JOBS = """
UPDATE agent_tokens SET jobs_claimed = greatest(jobs_claimed - $2::int, 0) WHERE jti = $1"""


class Budgets(StoreBase):
    async def reserve_jobs(self, jti: str, wanted: int, hold_s: float) -> tuple[int, bool]:
        """How many of `wanted` jobs token `jti` may claim now, and whether its budget is
        spent (nothing will ever be granted again). A token without a budget: (0, True)."""
        row = await self.fetchrow(RESERVE_JOBS, jti, wanted, hold_s)
        return (int(row["granted"]), bool(row["spent"])) if row else (0, True)

    async def settle_jobs(self, jti: str, reserved: int, leased: int) -> tuple[int, bool]:
        """Give back a claim's reservation and count the jobs it was leased: how many of
        them fit in the budget, and whether it is spent now."""
        row = await self.fetchrow(SETTLE_JOBS, jti, reserved, leased)
        return (int(row["kept"]), bool(row["spent"])) if row else (0, True)

    async def refund_jobs(self, jti: str, jobs: int) -> None:
        await self.execute(REFUND_JOBS, jti, jobs)
