"""Tag rules: what a tag may look like and how a job's tag template is resolved."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,127}")
_PLACEHOLDER = re.compile(r"\$workspace|\$args\[([^\]]*)\]")


class TagError(ValueError):
    """A tag is malformed or its template cannot be resolved."""


def validate_tag(tag: str) -> str:
    if not TAG_PATTERN.fullmatch(tag):
        raise TagError(
            f"tag {tag!r} is not valid: 1-128 characters, letters, digits and _ . : @ / + -, "
            "starting with a letter or digit"
        )
    return tag


def _lookup(args: Mapping[str, Any], dotted: str) -> str:
    value: Any = args
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise TagError(f"tag refers to $args[{dotted}], but the job has no argument {dotted!r}")
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not value.strip():
        raise TagError(f"tag refers to $args[{dotted}], whose value is empty")
    if isinstance(value, str | int | float):
        return str(value)
    raise TagError(f"tag refers to $args[{dotted}], whose value is not a string or number")


def resolve_tag(template: str, workspace: str, args: Mapping[str, Any]) -> str:
    """Replace `$workspace` and `$args[name]` (dotted paths allowed) and validate the result."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$workspace":
            return workspace
        name = match.group(1).strip()
        if not name:
            raise TagError("tag has an empty $args[] placeholder")
        return _lookup(args, name)

    return _checked(template, _PLACEHOLDER.sub(replace, template))


def parse_tags(raw: str) -> list[str]:
    """A comma-separated tag list, as given on command lines and in environment variables."""
    return [validate_tag(t.strip()) for t in raw.split(",") if t.strip()]


def check_template(template: str) -> str:
    """Refuse a malformed tag template before any job uses it (placeholders stand for 'x')."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) != "$workspace" and not match.group(1).strip():
            raise TagError("tag has an empty $args[] placeholder")
        return "x"

    _checked(template, _PLACEHOLDER.sub(replace, template))
    return template


def _checked(template: str, resolved: str) -> str:
    if "$" in resolved:
        raise TagError(
            f"tag {template!r} has an unknown placeholder (use $workspace or $args[name])"
        )
    return validate_tag(resolved)
