"""Wire models of the agent API (`/api/agent_workers`) and of agent tokens."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

AgentName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}\Z")]
Group = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")]
JobId = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=1000)]


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Held(_Body):
    id: JobId
    attempt: Attempt


class ClaimIn(_Body):
    name: AgentName
    slots: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 25.0


class HeartbeatIn(_Body):
    name: AgentName
    running: Annotated[list[Held], msgspec.Meta(max_length=1000)] = []


class ReleaseIn(_Body):
    name: AgentName
    jobs: Annotated[list[Held], msgspec.Meta(max_length=1000)] = []


class LogsIn(_Body):
    attempt: Attempt
    offset: Annotated[int, msgspec.Meta(ge=0, le=2**62)]
    data: str
    name: AgentName | None = None


class ErrorIn(_Body):
    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,40}\Z")]
    message: Annotated[str, msgspec.Meta(max_length=10_000)] = ""


# false: this failure can never succeed on another attempt (the server refused the job's
# result, say), so the job fails now rather than being retried.
Retryable = Annotated[bool, msgspec.Meta(description=(
    "false: the failure cannot succeed on another attempt (a refused result): the job fails "
    "now instead of being retried"))]


LogChunksLost = Annotated[int, msgspec.Meta(ge=0, le=1_000_000, description=(
    "log chunks the server refused while the job ran (each left a marker in the log)"))]


class CompleteIn(_Body):
    attempt: Attempt
    status: Annotated[str, msgspec.Meta(pattern=r"^(succeeded|failed|cancelled)\Z")]
    result: Any = None
    error: ErrorIn | None = None
    name: AgentName | None = None
    retryable: Retryable = True
    log_chunks_lost: LogChunksLost = 0


class CompletedJob(_Body):
    id: JobId
    attempt: Attempt
    status: Annotated[str, msgspec.Meta(pattern=r"^(succeeded|failed|cancelled)\Z")]
    result: Any = None
    error: ErrorIn | None = None
    retryable: Retryable = True
    log_chunks_lost: LogChunksLost = 0


class CompleteManyIn(_Body):
    """Several outcomes in one request: what an agent sends when jobs finish together."""

    name: AgentName
    jobs: Annotated[list[CompletedJob], msgspec.Meta(min_length=1, max_length=1000)]


class AgentTokenIn(_Body):
    group: Group
    tags: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)]
    expires_in_s: Annotated[int, msgspec.Meta(ge=60, le=10 * 365 * 86400)] = 30 * 86400
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""
