-- A lease records who holds it beyond the holder's name: for an agent, the token (jti) it
-- claimed with and, when the agent sent one, a digest of its session (one per agent process).
-- Every write about a leased job must present the same key, so another token, or another
-- agent sharing the token, that names the holder changes nothing. NULL: a direct worker.
ALTER TABLE jobs ADD COLUMN holder_key text;
