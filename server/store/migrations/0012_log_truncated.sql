-- Set once a job's stored log reached TAGRUN_MAX_LOG_BYTES and the rest was dropped (after a
-- marker), so that no truncated log passes for a whole one: the job view, an event, a metric
-- and the UI say so.
ALTER TABLE jobs ADD COLUMN log_truncated boolean NOT NULL DEFAULT false;
