-- Job-limited agent tokens: a token minted with max_jobs may claim that many jobs in total,
-- across every agent using it and every replica. jobs_claimed counts the jobs it was leased;
-- jobs_reserved, the budget held by claims in flight (taken before a claim, settled after
-- it). Reservations of a claim that never settled (its server process died) lapse at
-- reserved_until. NULL max_jobs: unlimited, and none of these columns is touched.
ALTER TABLE agent_tokens ADD COLUMN max_jobs integer CHECK (max_jobs > 0);
ALTER TABLE agent_tokens ADD COLUMN jobs_claimed integer NOT NULL DEFAULT 0;
ALTER TABLE agent_tokens ADD COLUMN jobs_reserved integer NOT NULL DEFAULT 0;
ALTER TABLE agent_tokens ADD COLUMN reserved_until timestamptz;
