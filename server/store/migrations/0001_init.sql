-- tagrun schema, version 1.
-- The hot path (claims) reads only `queue`, which holds queued jobs and nothing else:
-- finished jobs never slow a claim however many accumulate in `jobs`.

CREATE TABLE workspaces (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tokens (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('superadmin', 'workspace')),
    workspace   text REFERENCES workspaces (id),
    label       text NOT NULL DEFAULT '',
    hash        bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CHECK ((kind = 'workspace') = (workspace IS NOT NULL))
);
CREATE UNIQUE INDEX tokens_one_superadmin ON tokens (kind) WHERE kind = 'superadmin';

CREATE TABLE scripts (
    workspace          text NOT NULL REFERENCES workspaces (id),
    path               text NOT NULL,
    version            integer NOT NULL,
    language           text NOT NULL,
    content            text NOT NULL,
    tag                text,
    timeout_s          double precision,
    max_attempts       integer NOT NULL,
    concurrency_limit  integer,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, path, version)
);

CREATE TABLE jobs (
    id              bigserial PRIMARY KEY,
    workspace       text NOT NULL REFERENCES workspaces (id),
    script_path     text,
    script_version  integer,
    language        text NOT NULL,
    content         text NOT NULL,
    args            jsonb NOT NULL DEFAULT '{}',
    tag             text NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    run_at          timestamptz NOT NULL DEFAULT now(),
    timeout_s       double precision,
    max_attempts    integer NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt         integer NOT NULL DEFAULT 0,
    worker          text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    result          jsonb,
    error           jsonb,
    log_size        bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX jobs_workspace_id ON jobs (workspace, id DESC);
CREATE INDEX jobs_workspace_status_id ON jobs (workspace, status, id DESC);
CREATE INDEX jobs_workspace_tag_id ON jobs (workspace, tag, id DESC);
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';

-- Queued jobs only: a row is deleted by the claim that takes it.
CREATE TABLE queue (
    job_id    bigint PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    tag       text NOT NULL,
    priority  integer NOT NULL,
    run_at    timestamptz NOT NULL
);
CREATE INDEX queue_claim ON queue (tag, priority DESC, run_at, job_id);
ALTER TABLE queue SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01);

-- New queue rows wake waiting workers: one NOTIFY per distinct tag per statement.
CREATE FUNCTION tagrun_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tagrun_jobs', t.tag) FROM (SELECT DISTINCT tag FROM new_rows) t;
    RETURN NULL;
END $$;
CREATE TRIGGER queue_notify AFTER INSERT ON queue
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tagrun_notify_queued();

CREATE TABLE job_logs (
    job_id  bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    off     bigint NOT NULL,
    data    text NOT NULL,
    PRIMARY KEY (job_id, off)
);

CREATE TABLE workers (
    name          text PRIMARY KEY,
    kind          text NOT NULL,
    grp           text NOT NULL DEFAULT '',
    tags          text[] NOT NULL,
    ip            text,
    version       text,
    connected_at  timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    active_count  integer NOT NULL DEFAULT 0,
    jobs_executed bigint NOT NULL DEFAULT 0
);

INSERT INTO workspaces (id) VALUES ('default');
