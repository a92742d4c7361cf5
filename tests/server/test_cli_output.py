"""The CLI's words for values: yes/no, how long ago, how long, clipped cells, schedule times
in their own zone (the commands themselves run in tests/e2e/test_cli.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tagrun.server.cli.durations import spell
from tagrun.server.cli.output import ago, clip, duration, plain, timestamp
from tagrun.server.cli.schedules import local_time

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-07T12:00:00Z", "just now"),
    ("2026-12-07T11:59:29.5Z", "30 s ago"),
    ("2026-12-07T11:57:00Z", "3 min ago"),
    ("2026-12-07T14:30:00Z", "in 2 h"),
    ("2026-12-02T12:00:00Z", "5 d ago"),
    ("2036-12-04T12:00:00Z", "2036-12-04"),
    (None, "-"),
])
def test_times_in_tables_read_relative_to_now(value: str | None, expected: str) -> None:
    assert ago(value, now=NOW) == expected


@pytest.mark.parametrize(("seconds", "expected"), [
    (0.015, "15 ms"), (1.23, "1.2 s"), (45, "45 s"), (200, "3 min 20 s"), (7200, "2 h"),
    (7205, "2 h"), (90061, "1 d 1 h"), (None, "-"),
])
def test_durations_read_as_words(seconds: float | None, expected: str) -> None:
    assert duration(seconds) == expected


def test_values_read_as_words() -> None:
    assert [plain(v) for v in (True, False, None, "", [], ["a", "b"], 2.0, {"x": 1})] == [
        "yes", "no", "-", "-", "-", "a, b", "2", '{"x": 1}']
    assert timestamp("2026-12-07T08:00:00.123456+00:00") == "2026-12-07T08:00:00Z"
    assert clip("a" * 50, 10) == "a" * 9 + "…"
    assert clip("two\nlines", 40) == "two lines"
    assert [spell(s) for s in (60, 90, 86400 * 30, 10 * 365 * 86400)] == [
        "1m", "90s", "30d", "3650d"]


@pytest.mark.parametrize(("fire", "zone", "expected"), [
    ("2026-12-07T08:00:00Z", "Europe/Paris", "2026-12-07 09:00 Europe/Paris (08:00 UTC)"),
    ("2026-07-07T07:00:00Z", "Europe/Paris", "2026-07-07 09:00 Europe/Paris (07:00 UTC)"),
    ("2026-12-07T15:30:00Z", "Asia/Tokyo", "2026-12-08 00:30 Asia/Tokyo (2026-12-07 15:30 UTC)"),
    ("2026-12-07T08:00:05Z", "UTC", "2026-12-07 08:00:05 UTC"),
])
def test_schedule_times_read_in_their_own_zone_with_utc_beside(fire: str, zone: str,
                                                               expected: str) -> None:
    assert local_time(fire, zone, full=True) == expected
