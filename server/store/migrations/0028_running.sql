-- Running jobs, one narrow row each while a job is `running` (docs/performance.md, item 17).
-- What looks for running jobs (expired leases, unacknowledged claims, caps, concurrency keys,
-- open broadcasts, each holder's jobs) reads this set and joins `jobs` by id, instead of
-- indexes on `jobs` over the columns a claim, a heartbeat and a completion change: an update
-- that changes no indexed column of `jobs` can be a HOT update (no new index entries).
-- Triggers keep the set in step with `jobs.status`, whichever statement changes it. The set
-- is as large as the jobs running at once, so what looks up one holder's jobs reads it all.
CREATE TABLE running (
    job_id          bigint PRIMARY KEY,
    worker          text,
    concurrency_key text,
    inline          boolean NOT NULL,
    broadcast       boolean NOT NULL
);
CREATE INDEX running_concurrency ON running (concurrency_key) WHERE concurrency_key IS NOT NULL;
ALTER TABLE running SET (autovacuum_vacuum_scale_factor = 0.01);

CREATE FUNCTION tagrun_running() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' AND NEW.status = 'running' THEN
        INSERT INTO running (job_id, worker, concurrency_key, inline, broadcast)
        VALUES (NEW.id, NEW.worker, NEW.concurrency_key, NEW.inline, NEW.broadcast)
        ON CONFLICT (job_id) DO UPDATE SET worker = EXCLUDED.worker, inline = EXCLUDED.inline;
    ELSE
        DELETE FROM running WHERE job_id = OLD.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_running_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status = 'running') EXECUTE FUNCTION tagrun_running();
CREATE TRIGGER jobs_running_update AFTER UPDATE OF status, worker, inline ON jobs
    FOR EACH ROW WHEN ((OLD.status = 'running' OR NEW.status = 'running')
                       AND (OLD.status, OLD.worker, OLD.inline)
                           IS DISTINCT FROM (NEW.status, NEW.worker, NEW.inline))
    EXECUTE FUNCTION tagrun_running();
CREATE TRIGGER jobs_running_delete AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.status = 'running') EXECUTE FUNCTION tagrun_running();

INSERT INTO running (job_id, worker, concurrency_key, inline, broadcast)
SELECT id, worker, concurrency_key, inline, broadcast FROM jobs WHERE status = 'running';

DROP INDEX jobs_running_lease, jobs_ack_by, jobs_open_broadcasts, jobs_running_concurrency;
