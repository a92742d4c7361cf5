"""What the API answers, as frozen, typed objects; each keeps the whole answer in `raw`.

Read leniently, so that a client keeps working across server versions: fields a newer server
adds are ignored (they are in `raw`), fields an older one lacks take their defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class JobError:
    """Why a job failed: `kind` is script_error, timeout, lease_expired, cancelled, ..."""

    kind: str
    message: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> JobError:
        return cls(kind=str(data.get("kind", "")), message=str(data.get("message", "")))


@dataclass(frozen=True)
class PendingReason:
    """Why a queued job waits: `code` (no_live_worker, all_busy, cap, delayed, ...) and a
    sentence; `workers`, `until`, `cap` and `value` detail some codes."""

    code: str
    message: str
    workers: tuple[str, ...] = ()
    until: datetime | None = None
    cap: str | None = None
    value: int | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> PendingReason:
        return cls(code=str(data.get("code", "")), message=str(data.get("message", "")),
                   workers=tuple(data.get("workers") or ()), until=_time(data.get("until")),
                   cap=data.get("cap"), value=data.get("value"))


@dataclass(frozen=True)
class Job:
    id: int
    workspace: str
    status: str  # queued, running, succeeded, failed, cancelled
    tag: str
    language: str
    script: str | None
    script_version: int | None
    args: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    timeout_s: float | None
    lease_s: float | None
    worker: str | None
    cancel_requested: bool
    result: Any
    error: JobError | None
    pending_reason: PendingReason | None
    log_truncated: bool
    run_at: datetime | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """It reached a final state: succeeded, failed or cancelled."""
        return self.status in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Job:
        error, reason = data.get("error"), data.get("pending_reason")
        return cls(
            id=int(data["id"]), workspace=str(data.get("workspace", "")),
            status=str(data["status"]), tag=str(data.get("tag", "")),
            language=str(data.get("language", "")), script=data.get("script"),
            script_version=data.get("script_version"), args=dict(data.get("args") or {}),
            priority=int(data.get("priority", 0)), attempt=int(data.get("attempt", 0)),
            max_attempts=int(data.get("max_attempts", 0)), timeout_s=data.get("timeout_s"),
            lease_s=data.get("lease_s"), worker=data.get("worker"),
            cancel_requested=bool(data.get("cancel_requested", False)),
            result=data.get("result"),
            error=JobError.from_api(error) if isinstance(error, Mapping) else None,
            pending_reason=PendingReason.from_api(reason) if isinstance(reason, Mapping)
            else None,
            log_truncated=bool(data.get("log_truncated", False)),
            run_at=_time(data.get("run_at")), created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")), finished_at=_time(data.get("finished_at")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Script:
    """One version of a deployed script."""

    path: str
    version: int
    language: str
    tag: str | None
    timeout_s: float | None
    max_attempts: int
    concurrency_limit: int | None
    lease_s: float | None
    secrets: tuple[str, ...]
    content: str | None  # not in lists
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Script:
        return cls(
            path=str(data["path"]), version=int(data.get("version", 0)),
            language=str(data.get("language", "")), tag=data.get("tag"),
            timeout_s=data.get("timeout_s"), max_attempts=int(data.get("max_attempts", 0)),
            concurrency_limit=data.get("concurrency_limit"), lease_s=data.get("lease_s"),
            secrets=tuple(data.get("secrets") or ()), content=data.get("content"),
            created_at=_time(data.get("created_at")), raw=dict(data),
        )


@dataclass(frozen=True)
class Schedule:
    name: str
    workspace: str
    cron: str
    timezone: str
    script: str | None
    args: dict[str, Any]
    overlap: str  # queue, skip, replace
    enabled: bool
    timeout_s: float | None
    tag: str | None
    builtin: bool  # a built-in maintenance schedule: never deleted
    next_fires: tuple[datetime, ...]
    created_at: datetime | None
    updated_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Schedule:
        fires = (_time(f) for f in data.get("next_fires") or ())
        return cls(
            name=str(data["name"]), workspace=str(data.get("workspace", "")),
            cron=str(data.get("cron", "")), timezone=str(data.get("timezone", "UTC")),
            script=data.get("script"), args=dict(data.get("args") or {}),
            overlap=str(data.get("overlap", "queue")), enabled=bool(data.get("enabled", True)),
            timeout_s=data.get("timeout_s"), tag=data.get("tag"),
            builtin=bool(data.get("builtin", False)),
            next_fires=tuple(f for f in fires if f is not None),
            created_at=_time(data.get("created_at")), updated_at=_time(data.get("updated_at")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Secret:
    """A secret as the API shows it: never its value."""

    name: str
    allowed_tags: tuple[str, ...] | None  # None: jobs of any tag may use it
    created_at: datetime | None
    created_by: str
    updated_at: datetime | None
    updated_by: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Secret:
        tags = data.get("allowed_tags")
        return cls(
            name=str(data["name"]), allowed_tags=None if tags is None else tuple(tags),
            created_at=_time(data.get("created_at")), created_by=str(data.get("created_by", "")),
            updated_at=_time(data.get("updated_at")), updated_by=str(data.get("updated_by", "")),
            raw=dict(data),
        )


class LogChunk(NamedTuple):
    """A job's log from an offset on (characters), and whether that is all there will be."""

    data: str
    offset: int
    done: bool

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> LogChunk:
        return cls(str(data["data"]), int(data["offset"]), bool(data["done"]))


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
