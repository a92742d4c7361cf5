"""Settings kept in the database, so every replica and worker reads the same values."""

from __future__ import annotations

from typing import Any

from tagrun.server.store._base import CAPPED_CHANNEL, FLEET_CHANNEL, StoreBase

# The database-kept settings the statements read (every setting, with its default and help:
# services/settings.py, which takes these names from here).
TOTAL_CAP = "task_max_concurrent"
INLINE_CAP = "task_inline_max_concurrent"
# The agent version window (server/fleet_controls.py holds it in memory).
MIN_AGENT_VERSION = "min_agent_version"
RECOMMENDED_AGENT_VERSION = "recommended_agent_version"
AGENT_DOWNLOAD_URL = "agent_download_url"


def setting_int(key: str) -> str:
    """SQL for a database-kept integer setting, 0 when unset."""
    return f"coalesce((SELECT (value #>> '{{}}')::int FROM settings WHERE key = '{key}'), 0)"


GET_SETTINGS = "SELECT key, value FROM settings"
PUT_SETTING = f"""
WITH put AS (
    INSERT INTO settings (key, value) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
)
SELECT pg_notify('{CAPPED_CHANNEL}', ''), pg_notify('{FLEET_CHANNEL}', '')"""
# Every replica re-reads its caps, and its fleet controls (the version window), at once.
CAPS_STATE = f"""
SELECT {setting_int(TOTAL_CAP)} AS total, {setting_int(INLINE_CAP)} AS inline,
       EXISTS (SELECT 1 FROM queue WHERE concurrency_key IS NOT NULL) AS scripts"""


class Settings(StoreBase):
    async def get_settings(self) -> dict[str, Any]:
        return {r["key"]: r["value"] for r in await self.fetch(GET_SETTINGS)}

    async def put_setting(self, key: str, value: Any) -> None:
        await self.execute(PUT_SETTING, key, value)

    async def caps_state(self) -> tuple[int, int, bool]:
        """(task_max_concurrent, task_inline_max_concurrent, any capped script queued)."""
        row = await self.fetchrow(CAPS_STATE)
        assert row is not None
        return int(row["total"]), int(row["inline"]), bool(row["scripts"])
