-- When does the next delayed job of a tag become due? The dispatcher asks after a claim
-- comes back short, so that jobs with a future run_at (or a retry backoff) reach waiting
-- agents on time without a NOTIFY.
CREATE INDEX queue_due ON queue (tag, run_at);
