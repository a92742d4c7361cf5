-- Autoscale tokens: opaque tokens, like workspace tokens, that belong to no workspace and
-- open GET /api/autoscale and nothing else, so that an autoscaler (KEDA, a cron loop) holds
-- no superadmin token. The table's other check (a workspace exactly for workspace tokens)
-- already holds for them.
ALTER TABLE tokens DROP CONSTRAINT tokens_kind_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_kind_check
    CHECK (kind IN ('superadmin', 'workspace', 'autoscale'));
