-- What happened to each agent, as its page (/workers/{name}, GET /api/workers/{name}) shows
-- it: paused, resumed, asked to drain, quarantined, released, refused for its version; with
-- the note, by whom, when, and until when (a pause's timeout). A group's pause or resume is
-- one row of scope 'group', which every agent of the group shows.
-- Bounded: the statement that adds a row keeps the last 100 of its agent (or group), and the
-- stale-agents maintenance deletes the rows of agents and groups whose records are gone.
CREATE TABLE worker_events (
    id          bigserial PRIMARY KEY,
    scope       text NOT NULL CHECK (scope IN ('agent', 'group')),
    name        text NOT NULL,
    what        text NOT NULL,
    note        text,
    actor       text,
    until_at    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX worker_events_name ON worker_events (scope, name, id DESC);

-- The last jobs an agent ran, newest first (its page), without reading the whole jobs table:
-- finished jobs by the holder of their last attempt. Partial, so a claim (finished_at still
-- NULL) writes nothing to it; a job's finish adds one entry.
CREATE INDEX jobs_worker_finished ON jobs (worker, finished_at DESC)
    WHERE finished_at IS NOT NULL;
