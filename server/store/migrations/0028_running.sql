-- Running jobs, one narrow row each while a job is `running` (docs/performance.md, item 17).
-- What looks for running jobs (expired leases, unacknowledged claims, caps, concurrency keys,
-- open broadcasts, each holder's jobs) reads this set, instead of indexes on `jobs` over the
-- columns a claim, a heartbeat and a completion change: an update that changes no indexed
-- column of `jobs` can be a HOT update (no new index entries). The lease and acknowledgement
-- deadlines are copied here, indexed, so that the once-a-second checks for expired leases
-- and unacknowledged claims stay index probes however many jobs run; `jobs` keeps the
-- deadlines that count (the checks read them again under the row lock).
-- Triggers keep the set in step with `jobs`, whichever statement changes it. The set is as
-- large as the jobs running at once, so what looks up one holder's jobs reads it all.
CREATE TABLE running (
    job_id           bigint PRIMARY KEY,
    worker           text,
    concurrency_key  text,
    inline           boolean NOT NULL,
    broadcast        boolean NOT NULL,
    lease_expires_at timestamptz,
    ack_by           timestamptz
);
ALTER TABLE running SET (autovacuum_vacuum_scale_factor = 0.01);

CREATE FUNCTION tagrun_running() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = 'running' AND NEW.status = 'running' THEN
        UPDATE running SET worker = NEW.worker, inline = NEW.inline,
                           lease_expires_at = NEW.lease_expires_at, ack_by = NEW.ack_by
        WHERE job_id = NEW.id;
    ELSIF TG_OP <> 'DELETE' AND NEW.status = 'running' THEN
        INSERT INTO running (job_id, worker, concurrency_key, inline, broadcast,
                             lease_expires_at, ack_by)
        VALUES (NEW.id, NEW.worker, NEW.concurrency_key, NEW.inline, NEW.broadcast,
                NEW.lease_expires_at, NEW.ack_by);
    ELSE
        DELETE FROM running WHERE job_id = OLD.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_running_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status = 'running') EXECUTE FUNCTION tagrun_running();
CREATE TRIGGER jobs_running_update
    AFTER UPDATE OF status, worker, inline, lease_expires_at, ack_by ON jobs
    FOR EACH ROW WHEN ((OLD.status = 'running' OR NEW.status = 'running')
                       AND (OLD.status, OLD.worker, OLD.inline, OLD.lease_expires_at,
                            OLD.ack_by)
                           IS DISTINCT FROM (NEW.status, NEW.worker, NEW.inline,
                                             NEW.lease_expires_at, NEW.ack_by))
    EXECUTE FUNCTION tagrun_running();
CREATE TRIGGER jobs_running_delete AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.status = 'running') EXECUTE FUNCTION tagrun_running();

INSERT INTO running (job_id, worker, concurrency_key, inline, broadcast, lease_expires_at,
                     ack_by)
SELECT id, worker, concurrency_key, inline, broadcast, lease_expires_at, ack_by
FROM jobs WHERE status = 'running';
CREATE INDEX running_concurrency ON running (concurrency_key) WHERE concurrency_key IS NOT NULL;
CREATE INDEX running_lease ON running (lease_expires_at);
CREATE INDEX running_ack_by ON running (ack_by) WHERE ack_by IS NOT NULL;

DROP INDEX jobs_running_lease, jobs_ack_by, jobs_open_broadcasts, jobs_running_concurrency;
