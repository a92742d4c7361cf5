"""Job output PostgreSQL would refuse, made storable and visible, one character for one.

PostgreSQL's text and jsonb cannot hold U+0000, and no UTF-8 can hold a lone surrogate (which
Python's `json.loads` lets through from a job's result). Refusing such output would lose the
rest of a log or hang a job's completion, so every log chunk, result and error is stored with:

- U+0000 shown as U+2400 SYMBOL FOR NULL (``␀``);
- a lone surrogate (U+D800 to U+DFFF) as U+FFFD REPLACEMENT CHARACTER, as undecodable output
  already is.

One character for one: log offsets, which count characters, are unchanged.
"""

from __future__ import annotations

import re
from typing import Any

NUL_SHOWN_AS = "\u2400"
_REFUSED = re.compile("[\x00\ud800-\udfff]")


def _shown(match: re.Match[str]) -> str:
    return NUL_SHOWN_AS if match.group() == "\x00" else "\ufffd"


def storable_text(text: str) -> str:
    return _REFUSED.sub(_shown, text) if _REFUSED.search(text) else text


def storable_json(value: Any) -> Any:
    """`value` (decoded JSON) with every string and key made storable."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    if isinstance(value, dict):
        return {storable_text(k) if isinstance(k, str) else k: storable_json(v)
                for k, v in value.items()}
    return value
