-- Cron schedules and their fires.
-- A fire is recorded once per (schedule, fire time): the primary key of `schedule_fires` is
-- what guarantees one job per fire time however many server replicas run a scheduler.

CREATE TABLE schedules (
    id            bigserial PRIMARY KEY,
    workspace     text NOT NULL REFERENCES workspaces (id),
    name          text NOT NULL,
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    script_path   text,            -- NULL for built-in maintenance
    args          jsonb NOT NULL DEFAULT '{}',
    overlap       text NOT NULL DEFAULT 'queue' CHECK (overlap IN ('queue', 'skip', 'replace')),
    enabled       boolean NOT NULL DEFAULT true,
    timeout_s     double precision,
    tag           text,
    builtin       text,            -- the maintenance task of a built-in schedule
    next_fire_at  timestamptz,     -- NULL: it never fires again
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace, name),
    CHECK ((builtin IS NULL) = (script_path IS NOT NULL))
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE enabled;

-- `outcome`: 'job' (job_id names it), 'skipped' (overlap 'skip'), 'error' (no job could be
-- made, `message` says why). No foreign key to jobs: retention deletes old jobs and old
-- fires together, and a key would make every job deletion look up this table.
CREATE TABLE schedule_fires (
    schedule_id  bigint NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at      timestamptz NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('job', 'skipped', 'error')),
    job_id       bigint,
    message      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_at)
);
CREATE INDEX schedule_fires_created ON schedule_fires (created_at);

-- Job retention deletes finished jobs by age.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- Deleting a job cascades to its idempotency key: without this index, to a scan of them all.
CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);
