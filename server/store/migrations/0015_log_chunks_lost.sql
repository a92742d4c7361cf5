-- Log chunks a worker or agent could not store (the server refused them, for any reason):
-- each left a visible marker in the log; the job (and its attempt's record) counts them, so
-- a job that passed with a gap in its log says so.
ALTER TABLE jobs ADD COLUMN log_chunks_lost int NOT NULL DEFAULT 0;
