"""Structured event logs for every tagrun process (server, workers, agents).

One event per line: `ts`, `level`, `event` (a stable name such as `job.succeeded`, listed in
docs/events.md) and the event's fields. `TAGRUN_LOG_FORMAT` picks `json` or `text` (default:
text on a terminal, json otherwise); `TAGRUN_LOG_LEVEL` the level (default INFO).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "color_message"}
FORMATS = ("json", "text")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


# One encoder for every line: json.dumps with options builds a new one each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record), "level": record.levelname.lower(),
            "event": record.getMessage(), "logger": record.name, **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_ENCODER.encode(v)}"
                          for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()} {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


class LogConfigError(ValueError):
    pass


def log_format(stream: TextIO | None = None) -> str:
    """TAGRUN_LOG_FORMAT, else text on a terminal and json otherwise."""
    return os.environ.get("TAGRUN_LOG_FORMAT", "").strip().lower() or (
        "text" if (stream or sys.stderr).isatty() else "json")


def configure_logging(stream: TextIO | None = None, *, quiet: tuple[str, ...] = ()) -> None:
    """Configure the root logger from TAGRUN_LOG_FORMAT and TAGRUN_LOG_LEVEL."""
    stream = stream or sys.stderr
    fmt = log_format(stream)
    if fmt not in FORMATS:
        raise LogConfigError(f"TAGRUN_LOG_FORMAT={fmt!r} is not one of json, text")
    level = os.environ.get("TAGRUN_LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise LogConfigError(f"TAGRUN_LOG_LEVEL={level!r} is not one of DEBUG, INFO, "
                             "WARNING, ERROR")
    # Nothing here shows a record's source line, thread or process: do not look them up for
    # every record (a holder logs two events per job).
    logging._srcfile = None  # what logging's docs say to set for speed
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("httpx", "httpcore", *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)
