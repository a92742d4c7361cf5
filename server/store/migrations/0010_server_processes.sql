-- Liveness without a write per idle agent: each server process marks itself alive, and an
-- agent's record names the process holding its connection (`via`), written only when that
-- changes. An agent is seen as late as its record says or, while `via` is set, as late as
-- that process was alive.
CREATE TABLE server_processes (
    id          text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE workers ADD COLUMN via text;
CREATE VIEW workers_seen AS
SELECT w.name, w.kind, w.stale_reported,
       CASE WHEN p.id IS NULL THEN w.last_seen
            ELSE greatest(w.last_seen, p.last_seen) END AS seen_at
FROM workers w LEFT JOIN server_processes p ON p.id = w.via;
-- Staleness is judged on workers_seen.seen_at now, which this index cannot serve.
DROP INDEX workers_unreported;
