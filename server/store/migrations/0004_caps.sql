-- Concurrency caps: per script (`concurrency_key` = workspace/path, with its limit), over all
-- workers (`task_max_concurrent`) and inside server processes (`inline`).

ALTER TABLE jobs ADD COLUMN concurrency_key text;
ALTER TABLE jobs ADD COLUMN concurrency_limit integer;
ALTER TABLE jobs ADD COLUMN inline boolean NOT NULL DEFAULT false;
CREATE INDEX jobs_running_concurrency ON jobs (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;

ALTER TABLE queue ADD COLUMN concurrency_key text;
ALTER TABLE queue ADD COLUMN concurrency_limit integer;
CREATE INDEX queue_capped ON queue (concurrency_key) WHERE concurrency_key IS NOT NULL;
