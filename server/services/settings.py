"""The database-kept settings (concurrency caps, the agent version window): their names,
defaults, help and checks. Used by the settings routes, the Workers page and the OpenAPI
document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from tagrun.server.errors import InvalidInput
from tagrun.server.store import (
    AGENT_DOWNLOAD_URL,
    INLINE_CAP,
    MIN_AGENT_VERSION,
    RECOMMENDED_AGENT_VERSION,
    TOTAL_CAP,
    Store,
)
from tagrun.shared.version import __version__, version_key


@dataclass(frozen=True)
class Setting:
    default: int | str
    help: str
    kind: str = "count"  # count (0-1000000), version ("" or 1.2.3) or url ("" or http(s)://)


SETTINGS = {
    TOTAL_CAP: Setting(0, "most jobs running at once over all workers and agents (0: no limit)"),
    INLINE_CAP: Setting(0, "most jobs running at once inside server processes (0: no limit)"),
    MIN_AGENT_VERSION: Setting(
        "", "agents below this version finish their jobs, are refused new ones and exit 4 "
        '("": no minimum)', "version"),
    RECOMMENDED_AGENT_VERSION: Setting(
        __version__, "agents below this version run, flagged as outdated on the Workers page "
        "(default: the server's version)", "version"),
    AGENT_DOWNLOAD_URL: Setting(
        "", "where an agent refused for its version is told to get a newer one", "url"),
}
__all__ = ["AGENT_DOWNLOAD_URL", "CAPS", "MIN_AGENT_VERSION", "RECOMMENDED_AGENT_VERSION",
           "SETTINGS", "Setting", "SettingIn", "check", "current"]
CAPS = tuple(key for key, s in SETTINGS.items() if s.kind == "count")


class SettingIn(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: Any


def check(key: str, value: Any) -> int | str:
    if key not in SETTINGS:
        raise InvalidInput(f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS))}",
                           code="unknown_setting")
    kind = SETTINGS[key].kind
    if kind == "version":
        if not isinstance(value, str) or len(value) > 40 or (
                value.strip() and version_key(value) is None):
            raise InvalidInput(f'{key} must be a version such as "1.4.0", or "" for none, '
                               f"not {value!r}")
        return value.strip()
    if kind == "url":
        if not isinstance(value, str) or len(value) > 500 or (
                value and not value.startswith(("https://", "http://"))) or any(
                    c.isspace() for c in value):
            raise InvalidInput(f'{key} must be an http(s):// address, or "" for none, '
                               f"not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise InvalidInput(f"{key} must be a whole number from 0 to 1000000, not {value!r}")
    return value


async def current(store: Store) -> dict[str, Any]:
    stored = await store.get_settings()
    return {key: _stored(stored.get(key), s) for key, s in SETTINGS.items()}


def _stored(value: Any, setting: Setting) -> int | str:
    """A stored value, or the default where it is missing or (written by hand in the
    database) not of the setting's kind. A version setting stored as "" means none, except
    the recommended version, whose "" falls back to the server's own."""
    if value is None or isinstance(value, bool) or type(value) is not type(setting.default):
        return setting.default
    if setting.kind == "version" and value == "" and setting.default:
        return setting.default
    return value

