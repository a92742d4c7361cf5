"""Cron expressions in a time zone: validation, next fire times, the latest missed one.

Fields are matched by cronsim; daylight-saving changes are handled as Debian cron does: a
fixed-time job (neither its minute nor its hour field starts with `*`) whose local time is
skipped in spring runs right after the gap (02:30 on the spring-forward day fires at 03:00),
and one whose local time repeats in autumn fires once, at the first occurrence; other jobs
fire on every real occurrence. Six fields put seconds first and follow the same rule (cronsim
applies it to five fields only, so fixed-time expressions are evaluated here in local wall
time and placed in real time by `_placed`). Server-side only: the agent never imports this
module.
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


def _exists(moment: datetime) -> bool:
    """Whether an aware local time exists (is not skipped by a clock change)."""
    zone = moment.tzinfo
    return moment.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == \
        moment.replace(tzinfo=None)


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
        parts = self.expression.split(" ")
        minute, hour = parts[-5], parts[-4]
        # Fixed-time jobs are evaluated in wall time, then placed (see `_placed`).
        self.wall_time = (self.zone.key != "UTC" and not minute.startswith("*")
                          and not hour.startswith("*"))
        try:
            CronSim(self.expression, datetime(2000, 1, 1, tzinfo=self.zone))
        except CronSimError as exc:
            raise CronError(f"cron {expression!r} is invalid: {exc}") from None
        except (ValueError, IndexError, KeyError, TypeError):
            raise CronError(f"cron {expression!r} is invalid") from None

    def _iter(self, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
        """Fire times after `start` (before or at it, `reverse`), in UTC, each once."""
        local = start.astimezone(self.zone)
        if not self.wall_time:
            for fire in CronSim(self.expression, local, reverse=reverse):
                yield fire.astimezone(UTC)
            return
        last: datetime | None = None
        for wall in CronSim(self.expression, local.replace(tzinfo=None), reverse=reverse):
            fire = self._placed(wall)
            # A repeated wall time maps to its first occurrence, a skipped one to the end of
            # the gap: drop what falls on the wrong side of `start` or repeats a fire.
            if reverse:
                if fire > start or (last is not None and fire >= last):
                    continue
            elif fire <= start or (last is not None and fire <= last):
                continue
            last = fire
            yield fire

    def _placed(self, wall: datetime) -> datetime:
        """The real instant (UTC) of local wall time `wall`: the first occurrence of a
        repeated time (fall back), the first instant after the gap for a skipped one
        (spring forward)."""
        moment = wall.replace(tzinfo=self.zone)  # fold=0: the earlier of a repeated time
        if _exists(moment):
            return moment.astimezone(UTC)
        moment = moment.replace(second=0, microsecond=0)
        for _ in range(24 * 60):  # gaps end on a minute, and last at most a day
            moment += timedelta(minutes=1)
            if _exists(moment):
                break
        return moment.astimezone(UTC)

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
