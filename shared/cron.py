"""Cron expressions in a time zone: validation, next fire times, the latest missed one.

Evaluation is cronsim's, which follows Debian cron, daylight-saving changes included: a
fixed-time job whose local time is skipped in spring runs right after the gap (02:30 on the
spring-forward day fires at 03:00), and one whose local time repeats in autumn fires once;
jobs every hour or more often fire on every real occurrence. Six fields put seconds first.
Server-side only: the agent never imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["Cron", "CronError", "zone"]

_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
# Past this many steps from the last due time, the latest missed fire is found backwards.
_FORWARD_STEPS = 1000


class CronError(ValueError):
    """A cron expression or time zone is invalid; the message says which and why."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` ('UTC', 'Europe/Paris'), or CronError naming it."""
    if len(name) > 64 or not _ZONE_KEY.fullmatch(name):
        raise CronError(f"timezone {name!r} is not an IANA time zone name like 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(f"unknown timezone {name!r}; use an IANA name like 'Europe/Paris'") \
            from None


class Cron:
    """A validated expression (5 fields, or 6 with seconds first) in an IANA time zone."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = " ".join(expression.split())
        self.zone = zone(timezone)
        if len(self.expression) > 200:
            raise CronError("cron expression is longer than 200 characters")
        fields = len(self.expression.split(" "))
        if fields not in (5, 6):
            raise CronError(f"cron {expression!r} has {fields} fields; give 5 (minute hour "
                            "day-of-month month day-of-week) or 6 (seconds first)")
        try:
            CronSim(self.expression, datetime(2000, 1, 1, tzinfo=self.zone))
        except CronSimError as exc:
            raise CronError(f"cron {expression!r} is invalid: {exc}") from None
        except (ValueError, IndexError, KeyError, TypeError):
            raise CronError(f"cron {expression!r} is invalid") from None

    def _iter(self, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
        for local in CronSim(self.expression, start.astimezone(self.zone), reverse=reverse):
            yield local.astimezone(UTC)

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after `moment` (None: it never fires again)."""
        return next(self._iter(moment), None)

    def next_fires(self, moment: datetime, count: int) -> list[datetime]:
        """Up to `count` fire times strictly after `moment`."""
        fires: list[datetime] = []
        for fire in self._iter(moment):
            fires.append(fire)
            if len(fires) == count:
                break
        return fires

    def latest(self, due: datetime, now: datetime) -> datetime:
        """The latest fire time in [due, now], `due` being a fire time not after `now`.

        Fires missed while no scheduler ran are not replayed one by one: only the latest
        of them runs (the catch-up run)."""
        latest = due
        for step, fire in enumerate(self._iter(due)):
            if fire > now:
                return latest
            latest = fire
            if step == _FORWARD_STEPS:
                break
        # Long downtime of a frequent schedule: look backwards from now instead.
        backwards = next(self._iter(now + timedelta(microseconds=1), reverse=True), due)
        return max(backwards, latest)
