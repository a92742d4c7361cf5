-- An agent's claim answer can be lost on its way (a connection cut after the server wrote it,
-- an agent killed mid-read, a proxy dropping it). Until the agent acknowledges the job (its
-- first heartbeat or log naming it), `ack_by` says how long the server waits; past it the job
-- goes back to the queue without using an attempt. NULL: acknowledged, or a direct worker.
-- `handouts_lost` counts such returns: past max_attempts of them a job that (say) kills every
-- agent it reaches before the agent can acknowledge it uses attempts again, and ends.
ALTER TABLE jobs ADD COLUMN ack_by timestamptz,
                 ADD COLUMN handouts_lost int NOT NULL DEFAULT 0;
CREATE INDEX jobs_ack_by ON jobs (ack_by) WHERE ack_by IS NOT NULL;
