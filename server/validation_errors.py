"""msgspec's validation errors in plain words: "Expected `int` >= 60 - at `$.expires_in_s`"
becomes "expires_in_s must be at least 60". Fields are named by their path in the body
(`jobs[1].run_at`); a pattern is explained by its Meta description where it has one."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import inspect

_AT = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "object": "a JSON object", "array": "a list", "null": "null",
          "datetime": "a date and time", "bytes": "base64 text"}
_COMPARED = {">=": "at least", "<=": "at most", ">": "greater than", "<": "less than"}
_SIZED = {"str": "characters", "array": "items", "object": "entries"}
_EXAMPLE_TIME = "2026-01-31T09:00:00Z"

@dataclass(frozen=True)
class _At:
    """Where in the body the error is: its path (`jobs[1].run_at`, "" for the body itself)."""

    path: str
    model: type

    @property
    def field(self) -> str:
        return self.path or "the request body"

    def child(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name


Rule = Callable[[re.Match[str], _At], str]


def plain_message(exc: msgspec.ValidationError, model: type) -> str:
    """The error of a body decoded as `model`, in plain words."""
    match = _AT.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    what, at = match["what"], _At((match["path"] or "").lstrip("."), model)
    for pattern, rule in _RULES:
        found = pattern.fullmatch(what)
        if found:
            return rule(found, at)
    return f"{at.path}: {what}" if at.path else what


def _kinds(names: str) -> str:
    return " or ".join(_KINDS.get(n, n) for n in names.split(" | "))


def _number(raw: str) -> str:
    return raw.removesuffix(".0")


def _length(m: re.Match[str], at: _At) -> str:
    size, unit = int(m["n"]), _SIZED[m["kind"]]
    if m["op"] == ">=" and size == 1 and unit == "characters":
        return f"{at.field} must not be empty"
    bound = "at least" if m["op"] == ">=" else "at most"
    return f"{at.field} must have {bound} {size} {unit[:-1] if size == 1 else unit}"


def _pattern(m: re.Match[str], at: _At) -> str:
    words = _description(at.model, at.path)
    if words:
        return f"{at.field} must be {words}"
    # msgspec shows the pattern's repr: backslashes doubled, and the anchors are noise.
    pattern = m["pattern"].replace("\\\\", "\\").removeprefix("^").removesuffix("\\Z")
    return f"{at.field} must match the pattern {pattern}"


_RULES: list[tuple[re.Pattern[str], Rule]] = [
    (re.compile(r"Object missing required field `(?P<name>[^`]+)`"),
     lambda m, at: f"missing required field {at.child(m['name'])}"),
    (re.compile(r"Object contains unknown field `(?P<name>[^`]+)`"),
     lambda m, at: f"unknown field {at.child(m['name'])}"),
    (re.compile(r"Expected `(?P<kind>str|array|object)` of length (?P<op>>=|<=) (?P<n>\d+)"),
     _length),
    (re.compile(r"Expected `str` matching regex '(?P<pattern>.*)'", re.DOTALL), _pattern),
    (re.compile(r"Expected `[^`]+` (?P<op>>=|<=|>|<) (?P<n>\S+)"),
     lambda m, at: f"{at.field} must be {_COMPARED[m['op']]} {_number(m['n'])}"),
    (re.compile(r"Expected `[^`]+` that's a multiple of (?P<n>\S+)"),
     lambda m, at: f"{at.field} must be a multiple of {_number(m['n'])}"),
    (re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`"),
     lambda m, at: f"{at.field} must be {_kinds(m['want'])}, not {_kinds(m['got'])}"),
    (re.compile(r"Invalid enum value (?P<value>.*)", re.DOTALL),
     lambda m, at: f"{at.field} cannot be {m['value']}"),
    (re.compile(r"Invalid RFC3339 encoded datetime"),
     lambda m, at: f"{at.field} must be a date and time like {_EXAMPLE_TIME}"),
    (re.compile(r"Expected `datetime` with a timezone component"),
     lambda m, at: f"{at.field} must say its time zone, like {_EXAMPLE_TIME} or "
                   "2026-01-31T10:00:00+01:00"),
    (re.compile(r"Number out of range"), lambda m, at: f"{at.field} is a number out of range"),
]


def _description(model: type, path: str) -> str | None:
    """The Meta description of the value at `path` in `model` (None if it has none)."""
    kind: Any = inspect.type_info(model)
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        kind = _container(kind)
        if part.startswith("["):
            kind = getattr(kind, "item_type", None)
        else:
            kind = next((f.type for f in getattr(kind, "fields", ()) if f.name == part), None)
        if kind is None:
            return None
    return _described(kind)


def _container(kind: Any) -> Any:
    """Past annotations and `| None` to the struct or list that holds the next part."""
    while isinstance(kind, inspect.Metadata | inspect.UnionType):
        if isinstance(kind, inspect.Metadata):
            kind = kind.type
        else:
            kind = next((t for t in kind.types if hasattr(t, "fields")
                         or hasattr(t, "item_type")), None)
    return kind


def _described(kind: Any) -> str | None:
    if isinstance(kind, inspect.Metadata):
        return (kind.extra_json_schema or {}).get("description") or _described(kind.type)
    if isinstance(kind, inspect.UnionType):
        return next(filter(None, map(_described, kind.types)), None)
    return None
