-- Broadcast jobs (docs/fleet.md#broadcast-jobs): a parent (`broadcast`) with one child per
-- agent live for its tag when it was submitted. A child keeps the broadcast's tag (what it
-- runs, what its signature covers) and is pinned to its agent by `pin_tag`, "@<jti>/<name>":
-- its queue row carries that tag instead, which only that agent's claims ask for, and no
-- user tag can be (a tag starts with a letter or digit). The parent runs nowhere: it ends,
-- with each child's agent, status and result, when every child has ended.
ALTER TABLE jobs ADD COLUMN parent_id bigint;
ALTER TABLE jobs ADD COLUMN broadcast boolean NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN pin_tag text;
CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_open_broadcasts ON jobs (id) WHERE broadcast AND status = 'running';
