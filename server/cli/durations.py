"""Lengths of time typed on the command line ("30d", "12h", "45m", or seconds), checked
against the bounds of the API field they fill before anything is sent, so that a bad one is
refused in the option's own words: "--expires-in must be at least 1m"."""

from __future__ import annotations

import re

import msgspec

from tagrun.server.cli.client import fail

UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def spell(seconds: int) -> str:
    """Seconds as a user would type them: 60 is "1m", 172800 "2d", 90 "90s"."""
    for unit, size in UNITS.items():
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def bounds(model: type, field: str) -> tuple[int, int | None]:
    """The least and most whole seconds `model.field` accepts, from its msgspec Meta."""
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType), info
    kind = next(f.type for f in info.fields if f.name == field)
    if isinstance(kind, msgspec.inspect.UnionType):  # `... | None`
        kind = next(t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
    if isinstance(kind, msgspec.inspect.Metadata):  # a field with a description
        kind = kind.type
    assert isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType), kind
    low = kind.ge if kind.ge is not None else (int(kind.gt) + 1 if kind.gt is not None else 0)
    high = kind.le if kind.le is not None else None
    return int(low), None if high is None else int(high)


def parse_duration(raw: str, option: str, limits: tuple[int, int | None]) -> int:
    """'30d', '12h', '45m', '90s', '2w', or plain seconds, within `limits` (see `bounds`)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", raw)
    if not match:
        fail(f"{option} {raw!r} is not a duration like 30d, 12h, 45m or 3600")
    seconds = int(match.group(1)) * UNITS[match.group(2) or "s"]
    low, high = limits
    if seconds < low:
        fail(f"{option} must be at least {spell(low)}")
    if high is not None and seconds > high:
        fail(f"{option} must be at most {spell(high)}")
    return seconds
