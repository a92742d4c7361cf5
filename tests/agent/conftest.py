from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tagrun.shared.logfmt import JsonFormatter


class CapturedLog(io.StringIO):
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]


@pytest.fixture
def agent_log() -> Iterator[CapturedLog]:
    """The agent's JSON log lines, as the agent process would print them."""
    stream = CapturedLog()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root, tagrun = logging.getLogger(), logging.getLogger("tagrun")
    old_level = tagrun.level
    root.addHandler(handler)
    tagrun.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    tagrun.setLevel(old_level)
