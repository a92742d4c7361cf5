-- What an agent says of itself (its Tagrun-Agent-Info header): its OS, CPU architecture and
-- how many jobs it runs at once. NULL: an older agent that does not say.
ALTER TABLE workers ADD COLUMN os text;
ALTER TABLE workers ADD COLUMN arch text;
ALTER TABLE workers ADD COLUMN slots integer;
-- When the server last refused this agent process's claims because its version is below
-- min_agent_version (its state shows `version_refused` until a process of that name
-- connects again), and the minimum it was refused against.
ALTER TABLE workers ADD COLUMN version_refused_at timestamptz;
ALTER TABLE workers ADD COLUMN version_refused_min text;
-- A tag paused: its queued jobs stay queued (their pending reason says by whom and why) and
-- no agent or worker claims jobs of it until it is resumed or `paused_until` passes.
CREATE TABLE paused_tags (
    tag          text PRIMARY KEY,
    paused_at    timestamptz NOT NULL DEFAULT now(),
    paused_until timestamptz,
    note         text NOT NULL,
    paused_by    text
);
