"""Event lines as every tagrun process writes them (shared/logfmt.py)."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime

from tagrun.shared.logfmt import JsonFormatter, TextFormatter


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("tagrun.test").makeRecord(
        "tagrun.test", logging.INFO, __file__, 1, "job.claimed", (), None, extra=extra)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    return record


def test_a_json_line_holds_the_time_level_event_logger_and_the_events_fields_only() -> None:
    created = datetime(2026, 12, 7, 12, 34, 56, 789_400, tzinfo=UTC).timestamp()
    line = json.loads(JsonFormatter().format(_record(created, job_id=7, tag="gpu", attempt=2)))
    assert line == {"ts": "2026-12-07T12:34:56.789+00:00", "level": "info",
                    "event": "job.claimed", "logger": "tagrun.test", "job_id": 7, "tag": "gpu",
                    "attempt": 2}


def test_each_line_has_its_own_second_and_millisecond() -> None:
    formatter = JsonFormatter()
    start = datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC).timestamp()
    times = [json.loads(formatter.format(_record(start + step)))["ts"]
             for step in (0.0, 0.0005, 0.0015, 60.5, -0.75)]
    assert times == ["2026-12-31T23:59:59.999+00:00", "2026-12-31T23:59:59.999+00:00",
                     "2027-01-01T00:00:00.000+00:00", "2027-01-01T00:01:00.499+00:00",
                     "2026-12-31T23:59:59.249+00:00"]


def test_attributes_another_formatter_added_are_not_taken_for_fields() -> None:
    record = _record(1_800_000_000.5, job_id=1)
    logging.Formatter("%(asctime)s %(message)s").format(record)  # adds message, asctime
    record.__dict__["_private"] = "x"
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {"ts", "level", "event", "logger", "job_id"}


def test_an_exception_and_the_text_format_keep_the_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.getLogger("tagrun.test").makeRecord(
        "tagrun.test", logging.ERROR, __file__, 1, "job.executor_crashed", (), exc_info,
        extra={"job_id": 3, "note": "naïve"})
    line = json.loads(JsonFormatter().format(record))
    assert line["job_id"] == 3 and line["note"] == "naïve" and line["level"] == "error"
    assert "ValueError: boom" in line["exception"]
    text = TextFormatter().format(record)
    assert ' job.executor_crashed job_id=3 note="naïve"' in text
    assert "ValueError: boom" in text


def test_a_handler_writes_one_line_per_event() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tagrun.test.lines")
    log.addHandler(handler)
    log.propagate = False
    try:
        for n in range(3):
            log.warning("job.lease_lost", extra={"job_id": n})
    finally:
        log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["job_id"], e["level"]) for e in lines] == [
        ("job.lease_lost", n, "warning") for n in range(3)]
