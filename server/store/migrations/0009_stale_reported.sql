-- `agent.stale` is logged once per lapse, by whichever replica marks the record first.
ALTER TABLE workers ADD COLUMN stale_reported boolean NOT NULL DEFAULT false;
CREATE INDEX workers_unreported ON workers (last_seen) WHERE NOT stale_reported;
