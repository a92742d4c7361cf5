-- Secrets for jobs, encrypted by the servers (server/vault.py) with a key the database never
-- holds. `key_id` names the key that encrypted `sealed` (nonce + AES-GCM ciphertext) without
-- revealing it; `allowed_tags` (NULL: any) limits the jobs that may use the secret. Scripts
-- and jobs name the secrets they use: only names are stored with them, never a value.
CREATE TABLE secrets (
    workspace    text NOT NULL REFERENCES workspaces (id),
    name         text NOT NULL,
    sealed       bytea NOT NULL,
    key_id       text NOT NULL,
    allowed_tags text[],
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text NOT NULL,
    PRIMARY KEY (workspace, name)
);
ALTER TABLE scripts ADD COLUMN secrets text[];
ALTER TABLE jobs ADD COLUMN secrets text[];
