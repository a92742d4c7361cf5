-- Quarantine (docs/fleet.md): each agent's current run of failed attempts, kept by the
-- statement that records an outcome (it already writes the agent's record): how many in a
-- row, since when, and up to two of the scripts they ran (a script's path, or "inline" and a
-- digest of the code), so that "across at least two different scripts" needs no scan.
ALTER TABLE workers ADD COLUMN fail_streak integer NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN fail_since timestamptz;
ALTER TABLE workers ADD COLUMN fail_scripts text[] NOT NULL DEFAULT '{}';
-- An agent quarantined gets no leases until an operator resumes it or `quarantined_until`
-- passes; `quarantine_reason` says what the rule saw.
ALTER TABLE workers ADD COLUMN quarantined_at timestamptz;
ALTER TABLE workers ADD COLUMN quarantined_until timestamptz;
ALTER TABLE workers ADD COLUMN quarantine_reason text;
