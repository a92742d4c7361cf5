-- Claims skip capped jobs on a fast path while the process's cached cap state says no
-- capped job is queued. Queueing one now says so on `tagrun_capped` before the per-tag
-- `tagrun_jobs` notifications, so every replica re-reads its cap state before it claims.
CREATE OR REPLACE FUNCTION tagrun_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE concurrency_key IS NOT NULL) THEN
        PERFORM pg_notify('tagrun_capped', '');
    END IF;
    PERFORM pg_notify('tagrun_jobs', t.tag) FROM (SELECT DISTINCT tag FROM new_rows) t;
    RETURN NULL;
END $$;
