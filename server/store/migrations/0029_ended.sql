-- Ended jobs, one narrow row each while a job is `succeeded`, `failed` or `cancelled`
-- (docs/performance.md, item 17). What looks for ended jobs by when they ended, by the
-- holder that ended them or by outcome (the purge, the Workers page, quarantine, the
-- jobs list filtered to failures) reads this set, and `jobs` keeps indexes only on what
-- never changes after a submit (id, workspace, tag, parent): a claim, a heartbeat, a log
-- write and a completion change no indexed column of `jobs`, so each is a HOT update
-- (a new row version on the same page, no new index entries) when the page has room. A fill
-- factor of 70 leaves that room for about two thirds of them in a drain (97% at 30, 72% at
-- 50, at the same drain rate within the noise), for 1.4 times the space of full pages.
-- Triggers keep the set in step with `jobs`, whichever statement changes it.
CREATE TABLE ended (
    job_id      bigint NOT NULL,
    workspace   text NOT NULL,
    tag         text NOT NULL,
    status      text NOT NULL,
    worker      text,
    finished_at timestamptz
);

CREATE FUNCTION tagrun_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.status IN ('succeeded', 'failed', 'cancelled') THEN
        IF OLD.status = 'succeeded' THEN
            DELETE FROM ended WHERE finished_at = OLD.finished_at AND job_id = OLD.id;
        ELSE
            DELETE FROM ended
            WHERE workspace = OLD.workspace AND status = OLD.status AND job_id = OLD.id
              AND status <> 'succeeded';
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status IN ('succeeded', 'failed', 'cancelled') THEN
        INSERT INTO ended (job_id, workspace, tag, status, worker, finished_at)
        VALUES (NEW.id, NEW.workspace, NEW.tag, NEW.status, NEW.worker, NEW.finished_at);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_ended_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION tagrun_ended();
CREATE TRIGGER jobs_ended_update AFTER UPDATE OF status, worker, finished_at ON jobs
    FOR EACH ROW WHEN ((OLD.status IN ('succeeded', 'failed', 'cancelled')
                        OR NEW.status IN ('succeeded', 'failed', 'cancelled'))
                       AND (OLD.status, OLD.worker, OLD.finished_at)
                           IS DISTINCT FROM (NEW.status, NEW.worker, NEW.finished_at))
    EXECUTE FUNCTION tagrun_ended();
CREATE TRIGGER jobs_ended_delete AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION tagrun_ended();

-- The indexes after the copy of the jobs already ended: quicker to build than to fill.
INSERT INTO ended (job_id, workspace, tag, status, worker, finished_at)
SELECT id, workspace, tag, status, worker, finished_at FROM jobs
WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX ended_finished_at ON ended (finished_at);
CREATE INDEX ended_worker_finished ON ended (worker, finished_at DESC);
-- Succeeded jobs are listed through jobs_workspace_id: most jobs succeed.
CREATE INDEX ended_unsucceeded ON ended (workspace, status, job_id DESC)
    WHERE status <> 'succeeded';

DROP INDEX jobs_workspace_status_id, jobs_finished_at, jobs_worker_finished;
ALTER TABLE jobs SET (fillfactor = 70);
