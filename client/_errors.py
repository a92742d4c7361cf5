"""The errors the client raises: one root, and "the server could not be reached" (worth
retrying) kept apart from "the server answered no".

    TagrunError
    ├── ConfigError             the client is set up wrong (no token, a bad TAGRUN_URL): says which
    ├── TransportError          the server could not be reached, or did not answer in time: retry
    ├── UnexpectedResponse      an answer that is not tagrun's (a proxy's page?)
    ├── APIError                the server answered with an error: .status, .code, .message
    │   ├── BadRequest          400: the request is invalid; the message says how
    │   ├── Unauthorized        401: no token, or a wrong, revoked or expired one
    │   ├── Forbidden           403: this token may not do that
    │   ├── NotFound            404
    │   ├── Conflict            409: not in this state (cancelling a finished job, ...)
    │   ├── PayloadTooLarge     413
    │   ├── TooManyRequests     429: too many queued jobs; retry after .retry_after
    │   └── ServerError         5xx: retry after .retry_after (503: the database is out of reach)
    └── WaitTimeout             wait() ran out of time; .job is the job as last seen

An APIError's str is the server's own message; its `code` is the API's error code
(`job_not_found`, `invalid_input`, ...; None when the answer was not the API's error shape).
No error ever holds the token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tagrun.client._models import Job


class TagrunError(Exception):
    """Every error this client raises."""


class ConfigError(TagrunError, ValueError):
    """The client is set up wrong; the message names the argument or variable."""


class TransportError(TagrunError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the tagrun server at {url} ({reason})")
        self.url = url
        self.reason = reason  # the underlying httpx error's name: ConnectError, ReadTimeout, ...


class UnexpectedResponse(TagrunError):
    pass


class APIError(TagrunError):
    def __init__(self, status: int, code: str | None, message: str, *,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, from the Retry-After header

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    pass


class Forbidden(APIError):
    pass


class NotFound(APIError):
    pass


class Conflict(APIError):
    pass


class PayloadTooLarge(APIError):
    pass


class TooManyRequests(APIError):
    pass


class ServerError(APIError):
    pass


class WaitTimeout(TagrunError, TimeoutError):
    def __init__(self, job: Job, timeout: float) -> None:
        why = f": {job.pending_reason.message}" if job.pending_reason else ""
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g} s{why}")
        self.job = job
        self.timeout = timeout


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 429: TooManyRequests,
}


def api_error(response: httpx.Response) -> APIError:
    """The error an answer of status 4xx or 5xx stands for."""
    status = response.status_code
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    code, message = _error_detail(response)
    return kind(status, code, message, retry_after=_seconds(response.headers.get("retry-after")))


def request_failed(url: str, exc: httpx.RequestError) -> TagrunError:
    """The error a request that got no usable answer stands for."""
    if isinstance(exc, httpx.TransportError):
        return TransportError(url, exc.__class__.__name__)
    return UnexpectedResponse(f"the answer from {url} could not be read ({exc})")


def _error_detail(response: httpx.Response) -> tuple[str | None, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        request = response.request
        return None, (f"{response.status_code} from {request.method} {request.url.path}: "
                      f"{response.text[:200]}")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
