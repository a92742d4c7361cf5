"""Errors a client can cause, mapped to HTTP in one table (see `app.exception_handlers`).

    TagrunError
    ├── InvalidInput        400 invalid_input
    ├── Unauthorized        401 unauthorized
    ├── Forbidden           403 forbidden
    ├── NotFound            404 not_found
    ├── Conflict            409 conflict
    │   ├── LeaseLost       409 lease_lost
    │   └── AgentNameTaken  409 agent_name_taken
    ├── PayloadTooLarge     413 payload_too_large
    └── TooManyRequests     429 too_many_requests
"""

from __future__ import annotations


class TagrunError(Exception):
    status = 500
    code = "internal"
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        super().__init__(self.message)


class InvalidInput(TagrunError):
    status = 400
    code = "invalid_input"
    default_message = "invalid input"


class Unauthorized(TagrunError):
    status = 401
    code = "unauthorized"
    default_message = "missing or invalid credentials"


class Forbidden(TagrunError):
    status = 403
    code = "forbidden"
    default_message = "this token may not do that"


class NotFound(TagrunError):
    status = 404
    code = "not_found"
    default_message = "not found"


class Conflict(TagrunError):
    status = 409
    code = "conflict"
    default_message = "conflict with the current state"


class LeaseLost(Conflict):
    code = "lease_lost"
    default_message = "this attempt no longer holds the job's lease"


class CompletionConflict(Conflict):
    """A second, different outcome for an attempt whose outcome is already recorded."""

    code = "completion_conflict"
    default_message = "this attempt's outcome is already recorded, and it is another one"


class AgentNameTaken(Conflict):
    code = "agent_name_taken"
    default_message = "this agent name is in use by a live agent with another token"


class AgentVersionRefused(TagrunError):
    """A claim from an agent below min_agent_version (426 Upgrade Required): it finishes its
    running jobs (heartbeats and completions are still taken), then exits 4."""

    status = 426
    code = "agent_version_refused"
    default_message = "this agent's version is below the server's minimum"


class PayloadTooLarge(TagrunError):
    status = 413
    code = "payload_too_large"
    default_message = "request body too large"


class TooManyRequests(TagrunError):
    status = 429
    code = "too_many_requests"
    default_message = "too many requests"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
