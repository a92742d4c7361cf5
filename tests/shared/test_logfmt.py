"""Event lines as every tagrun process writes them (shared/logfmt.py)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tagrun.shared import logfmt
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


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logging set up as a tagrun process sets it up (json lines), to a string; the root
    logger as it was afterwards. Set up in the test itself (the fixture runs before pytest
    adds its own capture to the root logger, which configure_logging replaces)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setenv("TAGRUN_LOG_FORMAT", "json")
    monkeypatch.delenv("TAGRUN_LOG_LEVEL", raising=False)
    stream = io.StringIO()
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logfmt._json_handler = None  # noqa: SLF001 - as a process that never configured


FIELDS: dict[str, object] = {"job_id": 7, "tag": "gpu é", "attempt": 2, "worker": "w-1",
                             "jobs": [1, 2.5, None, True], "when": datetime(2026, 12, 7,
                                                                             tzinfo=UTC)}


def test_an_event_is_the_line_logging_would_write(configured: io.StringIO,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    logfmt.configure_logging(configured)
    log = logging.getLogger("tagrun.test.events")
    records: list[str] = []
    make = log.makeRecord
    monkeypatch.setattr(log, "makeRecord", lambda *a, **k: records.append(a[4]) or make(*a, **k))
    logfmt.event(log, logging.INFO, "job.claimed", FIELDS)
    logfmt.event(log, logging.WARNING, "job.failed", {"job_id": 8})
    assert records == []  # the short way: the line written without a record
    log.info("job.claimed", extra=FIELDS)
    log.warning("job.failed", extra={"job_id": 8})
    assert records == ["job.claimed", "job.failed"]
    fast_info, fast_warning, slow_info, slow_warning = configured.getvalue().splitlines()
    for fast, slow in ((fast_info, slow_info), (fast_warning, slow_warning)):
        assert fast.startswith('{"ts": "') and slow.startswith('{"ts": "')
        assert fast[len('{"ts": "2026-12-07T12:34:56.789+00:00"'):] == \
            slow[len('{"ts": "2026-12-07T12:34:56.789+00:00"'):]
        assert abs(datetime.fromisoformat(json.loads(fast)["ts"]).timestamp()
                   - datetime.fromisoformat(json.loads(slow)["ts"]).timestamp()) < 5
    assert json.loads(fast_info)["when"] == "2026-12-07 00:00:00+00:00"  # str(), as before


def test_another_handler_and_a_filter_still_see_every_event(configured: io.StringIO) -> None:
    logfmt.configure_logging(configured)
    log = logging.getLogger("tagrun.test.capture")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)
    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        logfmt.event(log, logging.INFO, "job.started", {"job_id": 1})
    finally:
        logging.getLogger().removeHandler(keep)
    assert [(r.getMessage(), getattr(r, "job_id", None)) for r in seen] == [("job.started", 1)]
    assert json.loads(configured.getvalue())["job_id"] == 1  # the line too

    log.addFilter(lambda record: getattr(record, "job_id", None) != 2)
    try:
        logfmt.event(log, logging.INFO, "job.started", {"job_id": 2})
        logfmt.event(log, logging.INFO, "job.started", {"job_id": 3})
    finally:
        log.filters.clear()
    assert [json.loads(line)["job_id"] for line in configured.getvalue().splitlines()] == [1, 3]


def test_an_event_below_the_level_writes_nothing(configured: io.StringIO) -> None:
    logfmt.configure_logging(configured)
    logging.getLogger().setLevel(logging.WARNING)
    log = logging.getLogger("tagrun.test.level")
    logfmt.event(log, logging.INFO, "job.claimed", {"job_id": 1})
    logfmt.event(log, logging.WARNING, "job.failed", {"job_id": 2})
    assert [json.loads(line)["event"] for line in configured.getvalue().splitlines()] == [
        "job.failed"]


def test_an_event_that_cannot_be_written_is_reported_not_raised(
        configured: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    logfmt.configure_logging(configured)
    loop: list[object] = []
    loop.append(loop)
    log = logging.getLogger("tagrun.test.broken")
    logfmt.event(log, logging.INFO, "job.claimed", {"job_id": 1, "loop": loop})
    logfmt.event(log, logging.INFO, "job.claimed", {"job_id": 2})
    assert [json.loads(line)["job_id"] for line in configured.getvalue().splitlines()] == [2]
    assert "Logging error" in capsys.readouterr().err
