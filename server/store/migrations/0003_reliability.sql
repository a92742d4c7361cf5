-- Attempt history, idempotency keys, settings, and the log cap.

-- Every finished attempt: {"attempt", "worker", "started_at", "finished_at", "status", "error"}.
ALTER TABLE jobs ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]';
-- Characters a writer has sent (its offsets), as opposed to `log_size`, what is stored:
-- they differ once a log reaches its cap.
ALTER TABLE jobs ADD COLUMN log_received bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN idempotency_key text;

CREATE TABLE idempotency_keys (
    workspace   text NOT NULL,
    key         text NOT NULL,
    job_id      bigint REFERENCES jobs (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE settings (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
