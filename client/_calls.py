"""The tagrun API without I/O: each operation as a `Call` (method, path, query, body) that
knows how to read its answer. The sync and async clients only send them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from tagrun.client._errors import UnexpectedResponse, api_error
from tagrun.client._models import Job, LogChunk, Schedule, Script, Secret

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]  # the answer's JSON -> what the caller gets
    params: Mapping[str, str | int | float] | None = None
    json: Any = None  # None: no body
    headers: Mapping[str, str] | None = None
    hold_s: float = 0.0  # a long poll: the server may hold the answer this long


def build_request(build: Callable[..., httpx.Request], call: Call[Any],
                  timeout: httpx.Timeout) -> httpx.Request:
    """`call` as a request, made by an httpx client's `build_request`."""
    return build(call.method, call.path, params=call.params, json=call.json,
                 headers=call.headers, timeout=timeout_for(timeout, call.hold_s))


def timeout_for(timeout: httpx.Timeout, hold_s: float) -> httpx.Timeout:
    """The client's timeout, with time to read an answer the server holds for `hold_s`."""
    if not hold_s or timeout.read is None:
        return timeout
    return httpx.Timeout(connect=timeout.connect, read=timeout.read + hold_s,
                         write=timeout.write, pool=timeout.pool)


def read_answer(call: Call[T], response: httpx.Response) -> T:
    if not response.is_success:
        raise api_error(response)
    try:
        return call.read(response.json() if response.content else None)
    except (ValueError, KeyError, TypeError) as exc:
        raise UnexpectedResponse(
            f"the answer to {call.method} {call.path} is not tagrun's "
            f"({response.status_code}, {response.headers.get('content-type')}): {exc!r}"
        ) from None


def raw(method: str, path: str, *, params: Mapping[str, str | int | float] | None = None,
        json: Any = None, headers: Mapping[str, str] | None = None) -> Call[Any]:
    return Call(method, path, _same, params=params, json=json, headers=headers)


# --- jobs ----------------------------------------------------------------------------------

def job_body(content: str | None = None, *, language: str | None = None,
             script: str | None = None, script_version: int | None = None,
             args: Mapping[str, Any] | None = None, tag: str | None = None, priority: int = 0,
             run_at: datetime | None = None, timeout_s: float | None = None,
             max_attempts: int | None = None, lease_s: float | None = None,
             secrets: Iterable[str] | None = None) -> dict[str, Any]:
    """A job request: a deployed `script`, or `language` and `content`; what is left out
    takes the server's default (or the script's)."""
    return _given(content=content, language=language, script=script,
                  script_version=script_version, args=dict(args) if args else None, tag=tag,
                  priority=priority or None,
                  run_at=run_at.isoformat() if run_at is not None else None,
                  timeout_s=timeout_s, max_attempts=max_attempts, lease_s=lease_s,
                  secrets=list(secrets) if secrets else None)


def submit(workspace: str, body: dict[str, Any], idempotency_key: str | None) -> Call[Job]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
    return Call("POST", _in(workspace, "jobs"), Job.from_api, json=body, headers=headers)


def batch(workspace: str, jobs: Iterable[Mapping[str, Any]]) -> Call[list[int]]:
    body = {"jobs": [job_body(**job) for job in jobs]}
    return Call("POST", _in(workspace, "jobs/batch"), _ids, json=body)


def get_job(workspace: str, job_id: int, wait_s: float = 0.0) -> Call[Job]:
    params = {"wait_s": round(wait_s, 3)} if wait_s > 0 else None
    return Call("GET", _job(workspace, job_id), Job.from_api, params=params, hold_s=wait_s)


def list_jobs(workspace: str, *, status: str | None, tag: str | None, script: str | None,
              limit: int, before: int | None) -> Call[list[Job]]:
    params = _query(status=status, tag=tag, script=script, limit=limit, cursor=before)
    return Call("GET", _in(workspace, "jobs"), _each(Job.from_api, "jobs"), params=params)


def id_of(job: Job | int) -> int:
    return job.id if isinstance(job, Job) else int(job)


def job_logs(workspace: str, job_id: int, offset: int) -> Call[LogChunk]:
    return Call("GET", f"{_job(workspace, job_id)}/logs", LogChunk.from_api,
                params={"offset": offset})


def cancel(workspace: str, job_id: int) -> Call[Job]:
    return Call("POST", f"{_job(workspace, job_id)}/cancel", Job.from_api)


def retry(workspace: str, job_id: int) -> Call[Job]:
    return Call("POST", f"{_job(workspace, job_id)}/retry", Job.from_api)


# --- scripts -------------------------------------------------------------------------------

def script_body(path: str, content: str, *, language: str, tag: str | None = None,
                timeout_s: float | None = None, max_attempts: int | None = None,
                concurrency_limit: int | None = None, lease_s: float | None = None,
                secrets: Iterable[str] | None = None) -> dict[str, Any]:
    return _given(path=path, content=content, language=language, tag=tag, timeout_s=timeout_s,
                  max_attempts=max_attempts, concurrency_limit=concurrency_limit,
                  lease_s=lease_s, secrets=list(secrets) if secrets else None)


def deploy_script(workspace: str, body: dict[str, Any]) -> Call[Script]:
    return Call("POST", _in(workspace, "scripts"), Script.from_api, json=body)


def get_script(workspace: str, path: str) -> Call[Script]:
    return Call("GET", _in(workspace, f"scripts/{quote(path, safe='/')}"), Script.from_api)


def list_scripts(workspace: str, *, limit: int, after: str | None) -> Call[list[Script]]:
    return Call("GET", _in(workspace, "scripts"), _each(Script.from_api, "scripts"),
                params=_query(limit=limit, cursor=after))


# --- schedules -----------------------------------------------------------------------------

def schedule_body(name: str, *, cron: str, script: str, timezone: str | None = None,
                  args: Mapping[str, Any] | None = None, overlap: str | None = None,
                  enabled: bool = True, timeout_s: float | None = None,
                  tag: str | None = None) -> dict[str, Any]:
    """A schedule request; what is left out takes the server's default (UTC, queue)."""
    return _given(name=name, cron=cron, script=script, timezone=timezone,
                  args=dict(args) if args else None, overlap=overlap,
                  enabled=None if enabled else False, timeout_s=timeout_s, tag=tag)


def create_schedule(workspace: str, body: dict[str, Any]) -> Call[Schedule]:
    return Call("POST", _in(workspace, "schedules"), Schedule.from_api, json=body)


def get_schedule(workspace: str, name: str) -> Call[Schedule]:
    return Call("GET", _schedule(workspace, name), Schedule.from_api)


def list_schedules(workspace: str, *, limit: int, after: str | None) -> Call[list[Schedule]]:
    return Call("GET", _in(workspace, "schedules"), _each(Schedule.from_api, "schedules"),
                params=_query(limit=limit, cursor=after))


def update_schedule(workspace: str, name: str, changes: Mapping[str, Any]) -> Call[Schedule]:
    """Only the fields in `changes`; None clears one (timeout_s, tag)."""
    return Call("PATCH", _schedule(workspace, name), Schedule.from_api, json=dict(changes))


def delete_schedule(workspace: str, name: str) -> Call[None]:
    return Call("DELETE", _schedule(workspace, name), _nothing)


# --- secrets -------------------------------------------------------------------------------

def set_secret(workspace: str, name: str, value: str,
               allowed_tags: Iterable[str] | None) -> Call[Secret]:
    body = {"value": value, "allowed_tags": _tags(allowed_tags)}
    return Call("PUT", _secret(workspace, name), Secret.from_api, json=body)


def scope_secret(workspace: str, name: str, allowed_tags: Iterable[str] | None) -> Call[Secret]:
    return Call("PATCH", _secret(workspace, name), Secret.from_api,
                json={"allowed_tags": _tags(allowed_tags)})


def list_secrets(workspace: str) -> Call[list[Secret]]:
    return Call("GET", _in(workspace, "secrets"), _each(Secret.from_api, "secrets"))


def delete_secret(workspace: str, name: str) -> Call[None]:
    return Call("DELETE", _secret(workspace, name), _nothing)


# --- paths and answers ---------------------------------------------------------------------

def _in(workspace: str, rest: str) -> str:
    return f"/api/w/{quote(workspace, safe='')}/{rest}"


def _job(workspace: str, job_id: int) -> str:
    return _in(workspace, f"jobs/{int(job_id)}")


def _schedule(workspace: str, name: str) -> str:
    return _in(workspace, f"schedules/{quote(name, safe='')}")


def _secret(workspace: str, name: str) -> str:
    return _in(workspace, f"secrets/{quote(name, safe='')}")


def _query(**params: str | int | None) -> dict[str, str | int | float]:
    return {k: v for k, v in params.items() if v is not None}


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that were given: a body leaves the rest to the server's defaults."""
    return {k: v for k, v in fields.items() if v is not None}


def _tags(tags: Iterable[str] | None) -> list[str] | None:
    return None if tags is None else list(tags)


def _same(answer: Any) -> Any:
    return answer


def _nothing(answer: Any) -> None:
    return None


def _ids(answer: Any) -> list[int]:
    return [int(i) for i in answer["ids"]]


def _each(read: Callable[[Any], T], key: str) -> Callable[[Any], list[T]]:
    def read_all(answer: Any) -> list[T]:
        return [read(item) for item in answer[key]]
    return read_all
