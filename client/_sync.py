"""`Client`: the tagrun API from synchronous code, over one `httpx.Client`."""

from __future__ import annotations

import ssl
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from tagrun.client import _calls as calls
from tagrun.client import _flows as flows
from tagrun.client._config import DEFAULT_TIMEOUT, settings
from tagrun.client._errors import request_failed
from tagrun.client._models import Job, Schedule, Script, Secret

S = TypeVar("S")
T = TypeVar("T")


class Client:
    """A connection to a tagrun server, acting in one workspace.

    `url` defaults to TAGRUN_URL (else http://127.0.0.1:8000), `token` to TAGRUN_TOKEN,
    `workspace` to TAGRUN_WORKSPACE (else "default"). Use it as a context manager, or close().
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 workspace: str | None = None,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 verify: ssl.SSLContext | bool = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._settings = settings(url, token, workspace)
        self._http = httpx.Client(
            base_url=self.url, headers=self._settings.headers(),
            timeout=timeout, verify=verify, transport=transport)

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def workspace(self) -> str:
        return self._settings.workspace

    def __repr__(self) -> str:
        return f"<Client url={self.url!r} workspace={self.workspace!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *,
                params: Mapping[str, str | int | float] | None = None, json: Any = None,
                headers: Mapping[str, str] | None = None) -> Any:
        """Any API route (`/api/...`): its answer's JSON, or the error it stands for."""
        return self._send(calls.raw(method, path, params=params, json=json, headers=headers))

    # --- jobs ------------------------------------------------------------------------------

    def submit(self, content: str | None = None, *, language: str | None = None,
               script: str | None = None, script_version: int | None = None,
               args: Mapping[str, Any] | None = None, tag: str | None = None,
               priority: int = 0, run_at: datetime | None = None,
               timeout_s: float | None = None, max_attempts: int | None = None,
               lease_s: float | None = None, secrets: Iterable[str] | None = None,
               idempotency_key: str | None = None) -> Job:
        """Queue a job: `content` in `language`, or a deployed `script`."""
        body = calls.job_body(
            content, language=language, script=script, script_version=script_version,
            args=args, tag=tag, priority=priority, run_at=run_at, timeout_s=timeout_s,
            max_attempts=max_attempts, lease_s=lease_s, secrets=secrets)
        return self._send(calls.submit(self.workspace, body, idempotency_key))

    def batch(self, jobs: Iterable[Mapping[str, Any]]) -> list[int]:
        """Queue several jobs, each a dict of submit's keywords, all or none: their ids."""
        return self._send(calls.batch(self.workspace, jobs))

    def get_job(self, job: Job | int) -> Job:
        return self._send(calls.get_job(self.workspace, calls.id_of(job)))

    def list_jobs(self, *, status: str | None = None, tag: str | None = None,
                  script: str | None = None, limit: int = 50,
                  before: int | None = None) -> list[Job]:
        """Newest first; the next page: before=jobs[-1].id."""
        return self._send(calls.list_jobs(self.workspace, status=status, tag=tag,
                                          script=script, limit=limit, before=before))

    def wait(self, job: Job | int, timeout: float | None = None) -> Job:
        """The job once succeeded, failed or cancelled; WaitTimeout after `timeout` seconds."""
        return self._drive(flows.wait(self.workspace, calls.id_of(job), timeout))

    def logs(self, job: Job | int, *, follow: bool = False) -> Iterator[str]:
        """The job's log, line by line; with `follow`, until the job ends."""
        return self._stream(flows.follow_logs(self.workspace, calls.id_of(job), follow=follow))

    def cancel(self, job: Job | int) -> Job:
        """End a queued job now, a running one at its next heartbeat."""
        return self._send(calls.cancel(self.workspace, calls.id_of(job)))

    def retry(self, job: Job | int) -> Job:
        """Queue a failed or cancelled job again, with fresh attempts."""
        return self._send(calls.retry(self.workspace, calls.id_of(job)))

    # --- scripts ---------------------------------------------------------------------------

    def deploy_script(self, path: str, content: str, *, language: str, tag: str | None = None,
                      timeout_s: float | None = None, max_attempts: int | None = None,
                      concurrency_limit: int | None = None, lease_s: float | None = None,
                      secrets: Iterable[str] | None = None) -> Script:
        """A new version of the script at `path`."""
        body = calls.script_body(
            path, content, language=language, tag=tag, timeout_s=timeout_s,
            max_attempts=max_attempts, concurrency_limit=concurrency_limit, lease_s=lease_s,
            secrets=secrets)
        return self._send(calls.deploy_script(self.workspace, body))

    def get_script(self, path: str) -> Script:
        return self._send(calls.get_script(self.workspace, path))

    def list_scripts(self, *, limit: int = 100, after: str | None = None) -> list[Script]:
        """Latest versions by path; the next page: after=scripts[-1].path."""
        return self._send(calls.list_scripts(self.workspace, limit=limit, after=after))

    # --- schedules -------------------------------------------------------------------------

    def create_schedule(self, name: str, *, cron: str, script: str,
                        timezone: str | None = None, args: Mapping[str, Any] | None = None,
                        overlap: str | None = None, enabled: bool = True,
                        timeout_s: float | None = None, tag: str | None = None) -> Schedule:
        """Run `script` on `cron` (in `timezone`, default UTC); `overlap`: queue, skip or
        replace a run still going."""
        body = calls.schedule_body(
            name, cron=cron, script=script, timezone=timezone, args=args, overlap=overlap,
            enabled=enabled, timeout_s=timeout_s, tag=tag)
        return self._send(calls.create_schedule(self.workspace, body))

    def get_schedule(self, name: str) -> Schedule:
        return self._send(calls.get_schedule(self.workspace, name))

    def list_schedules(self, *, limit: int = 100, after: str | None = None) -> list[Schedule]:
        """By name; the next page: after=schedules[-1].name."""
        return self._send(calls.list_schedules(self.workspace, limit=limit, after=after))

    def update_schedule(self, name: str, **changes: Any) -> Schedule:
        """Change the fields given (cron=, timezone=, args=, ...); None clears one."""
        return self._send(calls.update_schedule(self.workspace, name, changes))

    def enable_schedule(self, name: str) -> Schedule:
        return self.update_schedule(name, enabled=True)

    def disable_schedule(self, name: str) -> Schedule:
        return self.update_schedule(name, enabled=False)

    def delete_schedule(self, name: str) -> None:
        self._send(calls.delete_schedule(self.workspace, name))

    # --- secrets ---------------------------------------------------------------------------

    def set_secret(self, name: str, value: str, *,
                   allowed_tags: Iterable[str] | None = None) -> Secret:
        """Create or replace; only jobs of `allowed_tags` (None: any) may use it."""
        return self._send(calls.set_secret(self.workspace, name, value, allowed_tags))

    def scope_secret(self, name: str, allowed_tags: Iterable[str] | None) -> Secret:
        """Change which tags' jobs may use it (None: any), keeping its value."""
        return self._send(calls.scope_secret(self.workspace, name, allowed_tags))

    def list_secrets(self) -> list[Secret]:
        """Names, scopes and authors: never a value."""
        return self._send(calls.list_secrets(self.workspace))

    def delete_secret(self, name: str) -> None:
        self._send(calls.delete_secret(self.workspace, name))

    # --- I/O -------------------------------------------------------------------------------

    def _send(self, call: calls.Call[T]) -> T:
        request = calls.build_request(self._http.build_request, call, self._http.timeout)
        try:
            response = self._http.send(request)
        except httpx.RequestError as exc:
            raise request_failed(self.url, exc) from exc
        return calls.read_answer(call, response)

    def _drive(self, flow: Generator[calls.Call[S], S, T]) -> T:
        """Send each call the flow yields, and give it the answer, until it returns."""
        call = next(flow)
        while True:
            answer = self._send(call)
            try:
                call = flow.send(answer)
            except StopIteration as stop:
                result: T = stop.value
                return result

    def _stream(self, flow: flows.Steps) -> Iterator[str]:
        """Send each call the flow yields; pass on each line."""
        answer: Any = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration:
                return
            if isinstance(step, str):
                answer = None
                yield step
            else:
                answer = self._send(step)
