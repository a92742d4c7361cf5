-- Steering from the server. An agent (or direct worker) paused claims nothing new until it is
-- resumed or `paused_until` passes; one asked to drain stops claiming, finishes its jobs and
-- stops. A group paused pauses every agent of the group. Each says by whom and why.
ALTER TABLE workers ADD COLUMN paused_at timestamptz;
ALTER TABLE workers ADD COLUMN paused_until timestamptz;
ALTER TABLE workers ADD COLUMN pause_note text;
ALTER TABLE workers ADD COLUMN paused_by text;
ALTER TABLE workers ADD COLUMN drain_at timestamptz;
ALTER TABLE workers ADD COLUMN drain_note text;
CREATE TABLE paused_groups (
    grp         text PRIMARY KEY,
    paused_at   timestamptz NOT NULL DEFAULT now(),
    paused_until timestamptz,
    note        text NOT NULL,
    paused_by   text
);
ALTER TABLE workers ADD COLUMN session_key text;  -- the agent process (token and session) last recorded: a new process ends a drain
