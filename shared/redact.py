"""Redacting secrets from what a job writes back: its log, its result and its error.

Each secret is searched for in every form a job is likely to print it in: as is, in base64
(standard and URL-safe, padded or not, also inside a longer base64 text such as an HTTP basic
`user:password`), URL-encoded, escaped in a JSON or Python string, in hex, and line by line
when it spans lines. Each occurrence becomes `[REDACTED:NAME]`. A log is redacted as a stream:
a possible start of a secret at the end of one write is held back until the next write shows
whether it is one, so a secret split across writes (seconds apart, or across log chunks) is
still found whole. Values shorter than MIN_SECRET_CHARS are refused when set, since so short
a value cannot be told from ordinary text.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

MIN_SECRET_CHARS = 4
# A base64 text holding a secret at an offset shows a core that depends on the secret alone;
# only long cores are searched (short ones would match ordinary text).
_MIN_CORE_CHARS = 8
DEFAULT_REDACT_VARS = ("*_TOKEN", "*_SECRET", "*_PASSWORD", "*_KEY", "*_PRIVATE_KEY")


def label(name: str) -> str:
    return f"[REDACTED:{name}]"


def forms(value: str) -> set[str]:
    """Every form of `value` searched for (each at least MIN_SECRET_CHARS long)."""
    found: set[str] = set()
    for text in {value, value.strip()}:
        if not text:
            continue
        raw = text.encode("utf-8", "surrogatepass")
        found.add(text)
        found.add(json.dumps(text)[1:-1])
        found.add(json.dumps(text, ensure_ascii=False)[1:-1])
        found.add(repr(text)[1:-1])
        for safe in ("", "/"):  # quote()'s default keeps "/"
            found.add(quote(text, safe=safe))
            found.add(quote_plus(text, safe=safe))
        found.add(raw.hex())
        found.add(raw.hex().upper())
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found.add(encode(raw).decode().rstrip("="))
            for shift in (0, 1, 2):  # inside a longer base64 text, after `shift` bytes
                whole = encode(b"\0" * shift + raw).decode().rstrip("=")
                # the characters that depend on the secret's bytes alone
                core = whole[(4 * shift + 2) // 3: 8 * (shift + len(raw)) // 6]
                if len(core) >= _MIN_CORE_CHARS:
                    found.add(core)
        for line in text.splitlines():
            line = line.strip()
            if len(line) >= MIN_SECRET_CHARS:
                found |= forms(line) if line != text else set()
    return {f for f in found if len(f) >= MIN_SECRET_CHARS}


class Redactor:
    """Redacts the given secrets ({name: value}) from texts and JSON values."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        names: dict[str, str] = {}
        # The longer value first: a form shared by two secrets is named after the longer.
        for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1])):
            if len(value) < MIN_SECRET_CHARS:
                continue
            for form in forms(value):
                names.setdefault(form, name)
        self._names = names
        needles = sorted(names, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, needles))) if needles else None
        self._by_first: dict[str, list[str]] = {}
        for needle in needles:
            self._by_first.setdefault(needle[0], []).append(needle)
        self._longest = len(needles[0]) if needles else 0

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: label(self._names[m.group()]), text)

    def text_at(self, text: str, positions: Sequence[int]) -> tuple[str, list[int]]:
        """`text` redacted, and where each of `positions` (ascending) of `text` falls in it:
        a position inside a secret falls where its label begins."""
        if self._pattern is None or not text:
            return text, list(positions)
        out: list[str] = []
        moved: list[int] = []
        done = shift = 0  # shift: how much longer the redacted text is so far
        marks = iter(positions)
        pos = next(marks, None)
        for match in self._pattern.finditer(text):
            while pos is not None and pos < match.end():
                moved.append(pos + shift if pos < match.start() else match.start() + shift)
                pos = next(marks, None)
            name = label(self._names[match.group()])
            out += (text[done:match.start()], name)
            shift += len(name) - (match.end() - match.start())
            done = match.end()
        while pos is not None:
            moved.append(pos + shift)
            pos = next(marks, None)
        out.append(text[done:])
        return "".join(out), moved

    def value(self, value: Any) -> Any:
        """A JSON value with every string (keys too) redacted; a number or other scalar
        whose text holds a secret becomes the redacted text."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if value is None or isinstance(value, bool):
            return value
        text = str(value)
        redacted = self.text(text)
        return value if redacted == text else redacted

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)

    def _could_grow(self, tail: str) -> bool:
        """`tail` is the start of a longer form than itself: the next write may complete it."""
        return any(len(needle) > len(tail) and needle.startswith(tail)
                   for needle in self._by_first.get(tail[0], ()))

    def _hold_from(self, text: str, start: int) -> int:
        """Where, at or after `start`, the end of `text` could begin an occurrence that
        the next write completes: from there on it is held back."""
        for at in range(max(start, len(text) - self._longest + 1), len(text)):
            if self._could_grow(text[at:]):
                return at
        return len(text)

    def _feed(self, text: str) -> tuple[str, str]:
        """(redacted text that can go out now, text held back)."""
        if self._pattern is None:
            return text, ""
        out: list[str] = []
        done = 0
        for match in self._pattern.finditer(text):
            if len(text) - match.start() < self._longest and self._could_grow(
                    text[match.start():]):
                # a shorter form, or the start of a longer one: the next write tells
                out.append(text[done:match.start()])
                return "".join(out), text[match.start():]
            out.append(text[done:match.start()])
            out.append(label(self._names[match.group()]))
            done = match.end()
        hold = self._hold_from(text, done)
        out.append(text[done:hold])
        return "".join(out), text[hold:]


class StreamRedactor:
    """A log redacted as it is written: `write` returns what may be sent now, `flush` the
    rest at the end."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = ""

    def write(self, text: str) -> str:
        out, self._held = self._redactor._feed(self._held + text)
        return out

    def flush(self) -> str:
        out, self._held = self._redactor.text(self._held), ""
        return out


def env_secrets(env: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """The variables of `env` whose names match one of `patterns` (fnmatch, any case), with
    values long enough to redact: {name: value}."""
    wanted = [p.strip().upper() for p in patterns if p.strip()]
    return {name: value for name, value in env.items()
            if len(value) >= MIN_SECRET_CHARS
            and any(fnmatch.fnmatchcase(name.upper(), p) for p in wanted)}
