"""The database-kept settings (concurrency caps): their names, defaults, help and checks.
Used by the settings routes, the Workers page and the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from tagrun.server.errors import InvalidInput
from tagrun.server.store import INLINE_CAP, TOTAL_CAP, Store


@dataclass(frozen=True)
class Setting:
    default: int
    help: str


SETTINGS = {
    TOTAL_CAP: Setting(0, "most jobs running at once over all workers and agents (0: no limit)"),
    INLINE_CAP: Setting(0, "most jobs running at once inside server processes (0: no limit)"),
}


class SettingIn(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: Any


def check(key: str, value: Any) -> int:
    if key not in SETTINGS:
        raise InvalidInput(f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS))}",
                           code="unknown_setting")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise InvalidInput(f"{key} must be a whole number from 0 to 1000000, not {value!r}")
    return value


async def current(store: Store) -> dict[str, Any]:
    stored = await store.get_settings()
    return {key: stored.get(key, s.default) for key, s in SETTINGS.items()}
