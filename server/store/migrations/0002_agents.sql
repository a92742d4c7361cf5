-- Agent tokens (JWTs minted by the superadmin) and the secret that signs them.

CREATE TABLE server_secrets (
    name        text PRIMARY KEY,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agent_tokens (
    jti         text PRIMARY KEY,
    grp         text NOT NULL,
    tags        text[] NOT NULL,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX agent_tokens_revoked ON agent_tokens (revoked_at) WHERE revoked_at IS NOT NULL;

ALTER TABLE workers ADD COLUMN jti text;
