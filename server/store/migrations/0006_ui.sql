-- Web UI sessions that were signed out before they expired. A session cookie is signed and
-- carries its own expiry, so only ended ones need a row; rows past their expiry are pruned
-- whenever another session ends.

CREATE TABLE ui_sessions_ended (
    sid         text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX ui_sessions_ended_expires ON ui_sessions_ended (expires_at);
