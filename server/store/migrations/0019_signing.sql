-- Signed jobs (docs/signing.md). A signature is stored, never checked, by the server: the
-- holders that verify (AGENT_VERIFY_KEYS) check it against what they receive. `signature`
-- is {key_id, sig, unsigned_args, source: job|script|schedule}; a job's `signature_check` is
-- what its last verifying holder found ({verdict, key_id, message}). A schedule may pin the
-- script version it fires (a signed schedule does); a worker's `verify` is the mode and key
-- ids its holder checks signatures with (NULL: it checks none). A job's `refusals` are the
-- agents that would not run it (local policy, pre-job hook): [{worker, kind, reason, at}].
ALTER TABLE scripts ADD COLUMN signature jsonb;
ALTER TABLE jobs ADD COLUMN signature jsonb;
ALTER TABLE jobs ADD COLUMN signature_check jsonb;
ALTER TABLE schedules ADD COLUMN script_version int;
ALTER TABLE schedules ADD COLUMN signature jsonb;
ALTER TABLE workers ADD COLUMN verify jsonb;
ALTER TABLE jobs ADD COLUMN refusals jsonb;
