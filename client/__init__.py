"""tagrun's Python client: submit jobs, follow their logs, wait for them, and manage scripts,
schedules and secrets, from synchronous code (`Client`) or asyncio (`AsyncClient`).

    from tagrun.client import Client

    with Client() as client:  # TAGRUN_URL, TAGRUN_TOKEN
        job = client.submit("echo hello", language="bash")
        for line in client.logs(job, follow=True):
            print(line)
        print(client.wait(job).result)

`AsyncClient` has the same methods, awaited (`logs` is an async iterator). Every error is a
`TagrunError`: `TransportError` (no answer: worth retrying) apart from `APIError` (the server
answered no; a subclass per status, the server's message as its text), `WaitTimeout` from
`wait`, `ConfigError` for a missing token or a malformed URL.

Inside: `_config` (arguments and environment), `_calls` (each API operation, without I/O),
`_flows` (the wait and log-following loops, without I/O), `_models` (answers as objects),
`_errors`; `_sync` and `_async` only send what those build.
"""

from __future__ import annotations

from tagrun.client._async import AsyncClient
from tagrun.client._errors import (
    APIError,
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServerError,
    TagrunError,
    TooManyRequests,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    WaitTimeout,
)
from tagrun.client._models import Job, JobError, PendingReason, Schedule, Script, Secret
from tagrun.client._sync import Client

__all__ = [
    "APIError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "Job",
    "JobError",
    "NotFound",
    "PayloadTooLarge",
    "PendingReason",
    "Schedule",
    "Script",
    "Secret",
    "ServerError",
    "TagrunError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "WaitTimeout",
]
