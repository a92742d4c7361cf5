-- A holder that stopped cleanly says so as its last act (an agent through
-- POST /api/agent_workers/goodbye, a direct worker when it has drained): its record shows
-- `stopped` at once instead of looking live until it goes stale, and shows it until a process
-- of that name connects again.
ALTER TABLE workers ADD COLUMN stopped_at timestamptz;
ALTER TABLE workers ADD COLUMN stop_reason text;
