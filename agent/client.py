"""HTTP client for the agent routes, retrying what is transient.

Connection errors, timeouts, 5xx, 408 and 429 are retried with exponential backoff and jitter
(Retry-After honoured): forever for claim and heartbeat; for a job's logs and completion,
until the job's lease (as last renewed) would have run out; within a bound for the rest.
Past its bound or deadline a call raises GaveUp. 401 raises TokenRefused and any other 4xx
ServerAnswer, at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from tagrun.agent.errors import (
    GaveUp,
    ServerAnswer,
    ServerUntrusted,
    TokenRefused,
    VersionRefused,
)
from tagrun.shared import agent_wire as wire
from tagrun.shared.version import __version__

log = logging.getLogger("tagrun.agent")

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
CLAIM_GRACE_S = 15.0  # on top of wait_s: the server holds a claim open that long
MAX_RETRY_AFTER_S = 120.0
GOODBYE_S = 3.0  # how long an exiting agent waits for its goodbye's answer
ACK_RETRY_WAIT_S = 0.5  # the longest wait between tries of an acknowledging heartbeat
DEFAULT_TIMEOUT = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
# Requests are encoded and answers decoded by msgspec (the wire models are its Structs): the
# standard library's json took both steps' time again in every request (py-spy, an agents'
# drain).
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()
# Where the agent posts most: joined to the base URL once each (AgentClient._url).
_FIXED_PATHS = frozenset({"/api/agent_workers/claim", "/api/agent_workers/heartbeat",
                          "/api/agent_workers/release", "/api/agent_workers/complete",
                          "/api/agent_workers/goodbye"})

Sleep = Callable[[float], Awaitable[None]]
Deadline = Callable[[], float]  # the time.monotonic() after which a call stops retrying


class _Transient(Exception):
    """The server could not answer now (5xx, 408, 429, garbled body): try again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_RETRIED = (httpx.TransportError, _Transient)


class _WaitRetryAfter(wait_base):
    """The server's Retry-After when it gave one, else the fallback backoff."""

    def __init__(self, fallback: wait_base, deadline: Deadline | None = None,
                 most: float | None = None) -> None:
        self.fallback = fallback
        self.deadline = deadline
        self.most = most

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _Transient) and error.retry_after is not None:
            wait = error.retry_after
        else:
            wait = float(self.fallback(retry_state))
        if self.deadline is not None:  # one last try at the deadline, not long past it
            wait = min(wait, max(self.deadline() - time.monotonic(), 0.05))
        if self.most is not None:
            wait = min(wait, self.most)
        return wait


class _StopAt(stop_base):
    """Stop retrying once the deadline has passed; it is read at each try, so a deadline
    that moves on (a lease renewed meanwhile) is followed."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.deadline()


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between tries, and when a bounded call gives up (tests shorten both)."""

    wait: wait_base = field(default_factory=lambda: wait_random_exponential(multiplier=0.2, max=10))
    bounded_stop: stop_base = field(default_factory=lambda: stop_after_delay(120))
    sleep: Sleep = asyncio.sleep


class AgentClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        name: str,
        *,
        ca_file: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        verify: str | None = None,
        policy: wire.ClaimPolicy | None = None,
        slots: int = 1,
    ) -> None:
        """`verify`: how it checks jobs' signatures ("block; keys=a,b"), shown on the
        Workers page; `policy`: what its local policy lets it run, sent with every claim."""
        self.name = name
        self.policy = policy
        self._retry = retry or RetryPolicy()
        # When the last heartbeat try was sent (time.monotonic()): a heartbeat that succeeds
        # renewed its leases from at least then.
        self.heartbeat_sent_at = 0.0
        # What the server last said of this agent: paused (claims wait without jobs), and
        # whether an operator asked it to drain (it stays so).
        self.paused = False
        self.quarantined = False  # the server quarantined it: claims wait, as when paused
        self.drain_requested = False
        # Its token's max_jobs are all claimed: it claims nothing more (it stays so).
        self.token_spent = False
        # The server records outcomes sent with a claim (its claim answers say so).
        self.accepts_completed = False
        self.server: dict[str, Any] | None = None  # from the first answered claim
        self._urls: dict[str, httpx.URL] = {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            # The session makes this process a holder of its own: the server records it with
            # each lease, so another agent, even one with the same token and name, can act on
            # none of this one's jobs. It lives only in this process's memory.
            headers={"Authorization": f"Bearer {token}",
                     "Tagrun-Agent-Session": secrets.token_urlsafe(24),
                     # It acknowledges each job it is handed (runner: the first heartbeat
                     # comes within the job's ack_s), so a lost claim answer costs seconds.
                     "Tagrun-Agent-Features": "ack, secrets",
                     "User-Agent": f"tagrun-agent/{__version__}",
                     # Every request it sends is a JSON body.
                     "Content-Type": "application/json",
                     # Who it is, said outright: the server's version window reads it.
                     wire.INFO_HEADER: wire.info_header(
                         __version__, platform.system().lower() or "unknown",
                         platform.machine().lower() or "unknown", slots),
                     **({wire.VERIFY_HEADER: verify} if verify else {})},
            timeout=DEFAULT_TIMEOUT,
            # trust_env: HTTPS_PROXY/HTTP_PROXY/NO_PROXY.
            verify=tls_context(ca_file),
            trust_env=True,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def claim(self, slots: int, wait_s: float, exclude: Collection[int] = (),
                    running: int | None = None) -> list[dict[str, Any]]:
        """Long-poll for up to `slots` jobs; the server answers within about wait_s."""
        jobs, _ = await self.claim_with(slots, wait_s, exclude, running)
        return jobs

    async def claim_with(
        self, slots: int, wait_s: float, exclude: Collection[int] = (),
        running: int | None = None, completed: Sequence[wire.CompletedJob] = (),
    ) -> tuple[list[dict[str, Any]], list[wire.CompletedItem] | None]:
        """The same, carrying the outcomes of finished jobs (`completed`, for a server that
        `accepts_completed`; then it answers at once): the jobs, and an answer for each
        outcome (None if the server gave none)."""
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S,
                                read=wait_s + CLAIM_GRACE_S)
        body = wire.ClaimIn(self.name, slots, wait_s, self.policy or msgspec.UNSET,
                            sorted(exclude) if exclude else msgspec.UNSET,
                            running if running is not None else msgspec.UNSET,
                            list(completed) if completed else msgspec.UNSET)
        answer = await self._post("/api/agent_workers/claim", body, stop_never, timeout)
        self.accepts_completed = answer.get("accepts_completed") is True
        self.paused = answer.get("paused") is True
        self.quarantined = answer.get("quarantined") is True
        self.drain_requested |= answer.get("drain") is True
        self.token_spent |= answer.get("spent") is True
        if self.server is None:  # the first answered claim: who the server takes us for
            self.server = {"group": answer.get("group"), "tags": answer.get("tags"),
                           "server_version": answer.get("server_version")}
        # Each job is read on its own (wire.claimed_job): one malformed job costs only itself.
        jobs = answer.get("jobs")
        done = None
        if completed:
            try:
                done = msgspec.convert(answer.get("completed"), list[wire.CompletedItem])
            except msgspec.ValidationError as exc:  # each of those jobs hears "no answer"
                log.error("agent.bad_answer", extra={"route": "/api/agent_workers/claim",
                                                     "error": f"completed: {exc}"})
        return ([j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else [],
                done)

    async def heartbeat(
        self, running: list[tuple[int, int]], *, acknowledges: bool = False,
    ) -> tuple[list[int], list[int]]:
        """Extend the leases of the running jobs; returns the ids to cancel and those lost.
        `acknowledges`: it acknowledges jobs the server is waiting for (within ack_s), so
        it is retried at short intervals: a link back after a short cut must not find the
        agent waiting out a long backoff while the acknowledgement window closes."""
        path = "/api/agent_workers/heartbeat"
        answer = await self._post(path, wire.HeartbeatIn(self.name, _held(running)), stop_never,
                                  heartbeat=True,
                                  most_wait=ACK_RETRY_WAIT_S if acknowledges else None)
        beat = _read(answer, wire.HeartbeatOut, path)
        if beat is None:
            return [], []
        self.drain_requested |= beat.drain
        return beat.cancel, beat.lost

    async def release(self, jobs: list[tuple[int, int]],
                      refusals: list[wire.RefusalIn] | None = None) -> list[int]:
        """Give jobs back without using an attempt; `refusals`: jobs it would not run, and
        why (the server records it and leases them to it no more)."""
        path = "/api/agent_workers/release"
        answer = await self._post(path, wire.ReleaseIn(self.name, _held(jobs),
                                                       refusals or msgspec.UNSET),
                                  self._retry.bounded_stop)
        released = _read(answer, wire.Released, path)
        return released.released if released else []

    async def goodbye(self, reason: str = "stopped") -> bool:
        """The last request of an agent that stops cleanly: the server shows it `stopped` at
        once. One try, GOODBYE_S at most (the agent is exiting): False, logged, if it did not
        get through or the server does not know the route (an older server)."""
        body = _encoded(wire.GoodbyeIn(self.name, reason))
        try:
            await self._send("/api/agent_workers/goodbye", body, httpx.Timeout(GOODBYE_S))
        except (httpx.HTTPError, _Transient, ServerAnswer, TokenRefused) as exc:
            log.warning("agent.goodbye_failed", extra={"error": _describe(exc)})
            return False
        return True

    def _until(self, deadline: Deadline | None) -> stop_base:
        return _StopAt(deadline) if deadline is not None else self._retry.bounded_stop

    async def append_logs(
        self, workspace: str, job_id: int, attempt: int, offset: int, data: str, *,
        until: Deadline | None = None, marks: Sequence[wire.LogMark] | None = None,
    ) -> int:
        """Retried until `until` (the job's lease) when given, else within the bound.
        `marks`: the chunk's lines (None: not sent, for a server that does not keep them)."""
        path = _job_path(workspace, job_id, "logs")
        body = wire.LogsIn(attempt, offset, data, self.name,
                           msgspec.UNSET if marks is None else list(marks))
        answer = await self._post(path, body, self._until(until))
        ack = _read(answer, wire.LogsAck, path)
        return ack.offset if ack else offset + len(data)

    async def complete(
        self, workspace: str, job_id: int, attempt: int, status: str, result: Any,
        error: dict[str, str] | None, *, retryable: bool = True, until: Deadline | None = None,
        log_chunks_lost: int = 0,
    ) -> str:
        return await self.report(workspace, outcome(
            job_id, attempt, status, result, error, retryable=retryable,
            log_chunks_lost=log_chunks_lost), until=until)

    async def report(
        self, workspace: str, done: wire.CompletedJob, *, until: Deadline | None = None,
    ) -> str:
        """One job's outcome by itself; its new status."""
        path = _job_path(workspace, done.id, "complete")
        body = wire.CompleteIn(done.attempt, done.status, done.result, done.error, self.name,
                               done.retryable, done.log_chunks_lost, done.signature_check,
                               done.traceparent)
        answer = await self._post(path, body, self._until(until))
        completed = _read(answer, wire.Completed, path)
        return completed.status if completed else done.status

    async def complete_many(
        self, jobs: list[wire.CompletedJob], *, until: Deadline | None = None,
    ) -> list[wire.CompletedItem]:
        """Outcomes of several jobs; one answer each (a new status, or a refusal)."""
        path = "/api/agent_workers/complete"
        answer = await self._post(path, wire.CompleteManyIn(self.name, jobs), self._until(until))
        answers = _read(answer, wire.CompletedMany, path)
        return answers.jobs if answers else []

    async def _post(
        self, path: str, request: msgspec.Struct, stop: stop_base,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT, *, heartbeat: bool = False,
        most_wait: float | None = None,
    ) -> dict[str, Any]:
        body = _encoded(request)
        # The first try goes out directly: tenacity's machinery (a retrying object, its
        # statistics and iteration) cost about a twentieth of an agent's CPU per request,
        # for the rare request that fails. A failure is handed to tenacity as its first
        # attempt's, so the retries, their waits (Retry-After) and logs are as they were.
        if heartbeat:
            self.heartbeat_sent_at = time.monotonic()
        try:
            return await self._send(path, body, timeout)
        except Exception as exc:  # noqa: BLE001 - replayed below, where tenacity judges it
            first: Exception | None = exc
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=_WaitRetryAfter(self._retry.wait,
                                 stop.deadline if isinstance(stop, _StopAt) else None,
                                 most_wait),
            stop=stop,
            before_sleep=_log_retry(path),
            reraise=True,
            sleep=self._retry.sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:
                        failed, first = first, None
                        raise failed
                    if heartbeat:
                        self.heartbeat_sent_at = time.monotonic()
                    return await self._send(path, body, timeout)
        except httpx.TransportError as exc:
            if (untrusted := _certificate_error(exc)) is not None:
                raise ServerUntrusted(
                    f"the server's certificate is not trusted ({untrusted.verify_message}): "
                    "give the CA that signed it in AGENT_CA_FILE (or the system's trust "
                    "store), or fix BASE_INTERNAL_URL's host name") from None
            raise GaveUp(f"POST {path}: gave up after retries: {_describe(exc)}") from None
        except _Transient as exc:
            raise GaveUp(f"POST {path}: gave up after retries: {_describe(exc)}") from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _send(self, path: str, body: bytes, timeout: httpx.Timeout) -> dict[str, Any]:
        return _answer(await self._http.post(self._url(path), content=body, timeout=timeout))

    def _url(self, path: str) -> httpx.URL | str:
        """The routes every claim and heartbeat takes, as whole URLs made once: httpx
        parses a path and joins it to the base URL at each request otherwise (about a
        tenth of its cost per request). Other paths (a job's own) are joined as before."""
        url = self._urls.get(path)
        if url is None:
            if path not in _FIXED_PATHS:
                return path
            base = self._http.base_url  # ends with "/", as httpx joins paths to it
            url = self._urls[path] = base.copy_with(
                raw_path=base.raw_path + path.lstrip("/").encode("ascii"))
        return url


def outcome(
    job_id: int, attempt: int, status: str, result: Any, error: dict[str, str] | None, *,
    retryable: bool = True, log_chunks_lost: int = 0,
) -> wire.CompletedJob:
    """An attempt's outcome as the complete routes take it. `retryable` and `log_chunks_lost`
    are sent only when they say something (false, more than 0: fields at their default are
    left out), since a server older than them refuses fields it does not know."""
    return wire.CompletedJob(
        job_id, attempt, status, result,
        wire.ErrorIn(error["kind"], error.get("message", "")) if error else None,
        retryable, log_chunks_lost)


A = TypeVar("A", bound=msgspec.Struct)


def _read(answer: dict[str, Any], kind: type[A], path: str) -> A | None:
    """An answer read with its wire model; None (logged) if it does not fit."""
    try:
        return msgspec.convert(answer, kind)
    except msgspec.ValidationError as exc:
        log.error("agent.bad_answer", extra={"route": path, "error": str(exc)})
        return None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """What the agent trusts: the operating system's trust store (truststore, as pip does: a
    CA that Windows or macOS trusts is trusted here too), plus SSL_CERT_FILE and AGENT_CA_FILE
    when set."""
    try:
        import truststore
    except ImportError:  # a platform truststore does not support: OpenSSL's defaults
        context = ssl.create_default_context()
    else:
        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    extra = os.environ.get("SSL_CERT_FILE")
    if extra and os.path.isfile(extra):  # as OpenSSL does, a missing one is passed over
        context.load_verify_locations(cafile=extra)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def _certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _transient(error: BaseException) -> bool:
    """Worth another try: not a certificate the agent will never trust (a config error)."""
    return isinstance(error, _RETRIED) and _certificate_error(error) is None


def _encoded(request: msgspec.Struct) -> bytes:
    try:
        return _ENCODER.encode(request)
    except UnicodeEncodeError:
        # A lone surrogate (text from undecodable bytes) has no UTF-8: sent \u-escaped, as
        # JSON allows, the server refuses it with a 400 the caller handles (httpx's own
        # encoding raised here before, out of the request's error handling).
        return json.dumps(msgspec.to_builtins(request)).encode()


def _answer(response: httpx.Response) -> dict[str, Any]:
    status = response.status_code
    if status == 401:
        raise TokenRefused(_refusal(response))
    if status >= 500 or status in (408, 429):
        raise _Transient(f"server answered {status}", _retry_after(response))
    if status >= 300:
        code, message = _error_of(response)
        if status == 426 and code == "agent_version_refused":
            raise VersionRefused(message)
        raise ServerAnswer(status, code, message)
    try:
        answer = _DECODER.decode(response.content)
    except ValueError:  # msgspec.DecodeError is one
        answer = None
    if not isinstance(answer, dict):
        # Typically a proxy's or captive portal's page: not the server, so try again.
        raise _Transient(f"server answered {status} without a JSON object")
    return answer


def _refusal(response: httpx.Response) -> str:
    """Why the server refused the token, in its words ("agent token revoked", "agent token
    expired", "not a valid agent token": another server's, or damaged)."""
    code, message = _error_of(response)
    if code == "http_error":  # no tagrun error body: a proxy in between, say
        return f"the server refused the agent token (HTTP 401: {message})"
    return f"the server refused the agent token: {message}"


def _error_of(response: httpx.Response) -> tuple[str, str]:
    if 300 <= response.status_code < 400:
        where = response.headers.get("location", "?")
        return "redirect", f"redirected to {where}; point BASE_INTERNAL_URL there"
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", response.reason_phrase or "error"


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _log_retry(path: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("agent.retrying", extra={
            "route": path, "reason": _describe(error), "attempt": state.attempt_number,
            "wait_s": round(wait_s, 3)})
    return before_sleep


def _describe(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _job_path(workspace: str, job_id: int, action: str) -> str:
    return f"/api/w/{quote(workspace, safe='')}/agent_workers/jobs/{int(job_id)}/{action}"


def _held(jobs: list[tuple[int, int]]) -> list[wire.Held]:
    return [wire.Held(job_id, attempt) for job_id, attempt in jobs]
