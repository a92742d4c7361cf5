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
import time
from itertools import islice
from typing import Any, TextIO

_BLANK = logging.LogRecord("", 0, "", 0, "", None, None)
_STANDARD = set(_BLANK.__dict__) | {"message", "color_message", "asctime"}
# A record's attributes are logging's own, set first, then its `extra`: an event's fields are
# looked for past logging's own only (a holder logs two events per job, the server two more).
_STANDARD_COUNT = len(_BLANK.__dict__)
FORMATS = ("json", "text")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in islice(record.__dict__.items(), _STANDARD_COUNT, None)
            if k not in _STANDARD and not k.startswith("_")}


_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _stamp(created: float, msecs: float) -> str:
    """A time in ISO 8601, UTC, to the millisecond: 2026-12-07T12:34:56.789+00:00 (each
    second's text is made once)."""
    global _second
    second, text = _second
    if int(created) != second:
        second = int(created)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)  # one object: another thread sees the old pair or the new
    return f"{text}.{int(msecs):03d}+00:00"


def _timestamp(record: logging.LogRecord) -> str:
    return _stamp(record.created, record.msecs)


# One encoder for every line: json.dumps with options builds a new one each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
# The same encoder's C half, made once (JSONEncoder.encode makes one per call); its output is
# the same text. Without it (a Python built without _json), the encoder itself.
_make_c = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = _make_c(None, str, json.encoder.encode_basestring, None, ": ", ", ", False, False,
                    True) if _make_c is not None else None


def _encode(entry: dict[str, Any]) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(entry, 0))
    return _ENCODER.encode(entry)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record), "level": record.levelname.lower(),
            "event": record.getMessage(), "logger": record.name, **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)


# The handler configure_logging set up for json lines, which `event` may write to directly.
_json_handler: logging.StreamHandler[TextIO] | None = None
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                logging.ERROR: "error"}


def event(logger: logging.Logger, level: int, name: str, fields: dict[str, Any]) -> None:
    """Log the event `name` with `fields`: what `logger.log(level, name, extra=fields)`
    writes, byte for byte, for about a third of its CPU (docs/performance.md, item 18: a
    server or holder logs two events per job, and logging's own steps were most of their
    cost). It writes the line itself only where nothing else could see the record: json
    lines set up by configure_logging, that handler alone on the root logger, no filter or
    handler on the way up. Anywhere else (a text terminal, a test's capture, another
    handler or filter) it is `logger.log` itself."""
    handler = _json_handler
    if handler is None or level not in _LEVEL_NAMES or not logger.isEnabledFor(level) \
            or not _only_through(logger, handler, level):
        logger.log(level, name, extra=fields)
        return
    now = time.time()
    entry = {"ts": _stamp(now, (now - int(now)) * 1000), "level": _LEVEL_NAMES[level],
             "event": name, "logger": logger.name,
             **{k: v for k, v in fields.items() if k not in _STANDARD and not k.startswith("_")}}
    handler.acquire()
    try:
        handler.stream.write(_encode(entry) + handler.terminator)
        handler.stream.flush()
    except Exception:  # noqa: BLE001 - as a handler does: reported, never raised
        handler.handleError(logger.makeRecord(logger.name, level, "(unknown file)", 0, name,
                                              (), None))
    finally:
        handler.release()


def _only_through(logger: logging.Logger, handler: logging.Handler, level: int) -> bool:
    """Whether `logger`'s records reach `handler` alone, with no filter on the way."""
    node = logger
    while node.parent is not None:
        if node.handlers or node.filters or not node.propagate:
            return False
        node = node.parent
    return len(node.handlers) == 1 and node.handlers[0] is handler and not node.filters \
        and not handler.filters and level >= handler.level


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
    global _json_handler
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _json_handler = handler if fmt == "json" else None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("httpx", "httpcore", *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)
