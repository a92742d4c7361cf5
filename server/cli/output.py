"""How the CLI shows the API's answers: tables and detail views that read well, or, with
`--output json`, the answer itself, unchanged, for scripts."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer


class Format(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


Output = Annotated[Format, typer.Option(
    "--output", "-o", help="table to read, or json: the API's answer as is, for scripts.")]

JUST_NOW_S = 5
# Past this, a relative time says the date instead ("in 3650 d" says little).
RELATIVE_UP_TO_S = 60 * 86400
_SPANS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def plain(value: Any) -> str:
    """A value in words: yes/no, "-" for nothing, lists joined, numbers without noise."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def timestamp(value: str | None) -> str:
    """An API time to the second, in UTC: 2026-12-07T08:00:00Z."""
    return parse_time(value).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


def ago(value: str | None, now: datetime | None = None) -> str:
    """An API time relative to now: "just now", "3 min ago", "in 2 h" (far ones as a date)."""
    if not value:
        return "-"
    moment = parse_time(value)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if abs(seconds) < JUST_NOW_S:
        return "just now"
    if abs(seconds) > RELATIVE_UP_TO_S:
        return moment.strftime("%Y-%m-%d")
    span = _span(abs(seconds))
    return f"{span} ago" if seconds > 0 else f"in {span}"


def _span(seconds: float) -> str:
    for unit, size in _SPANS:
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return "0 s"


def moment(value: str | None) -> str:
    """For detail views: the time to the second, and how long ago it is."""
    return f"{timestamp(value)} ({ago(value)})" if value else "-"


def duration(seconds: float | None) -> str:
    """A length of time in words: "15 ms", "1.2 s", "45 s", "3 min 20 s", "2 h"."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    parts: list[str] = []
    rest = round(seconds)
    for unit, size in _SPANS:
        if rest >= size and len(parts) < 2:
            parts.append(f"{rest // size} {unit}")
            rest %= size
        elif parts:
            break  # "2 h 5 s" says less than "2 h"
    return " ".join(parts)


def clip(text: str, width: int) -> str:
    """One line of at most `width` characters, "…" marking what was cut."""
    line = " ".join(text.split()) if "\n" in text else text
    return line if len(line) <= width else line[:width - 1] + "…"


@dataclass(frozen=True)
class Column:
    """A table column: the answer's field, its header, how a value reads, and how wide it may
    be (None for names a user copies into the next command: never clipped)."""

    field: str
    header: str
    show: Callable[[Any], str] = plain
    width: int | None = 40

    def cell(self, row: Mapping[str, Any]) -> str:
        text = self.show(row.get(self.field))
        return clip(text, self.width or len(text))


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    lines = [[c.header for c in columns], *([c.cell(row) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    for line in lines:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


Detail = tuple[str, str | Sequence[str]]


def print_detail(fields: Sequence[Detail]) -> None:
    """Aligned "Label: value" lines; a value of several lines continues under the first."""
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        lines = value.splitlines() if isinstance(value, str) else list(value)
        first, *rest = lines or ["-"]
        typer.echo(f"{label + ':':<{width}}{first}".rstrip())
        for line in rest:
            typer.echo(f"{'':<{width}}{line}".rstrip())


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def emit(answer: Any, output: Format, show: Callable[[Any], None]) -> None:
    """The API's answer as is (`-o json`), or `show`n to be read."""
    if output is Format.JSON:
        print_json(answer)
    else:
        show(answer)
