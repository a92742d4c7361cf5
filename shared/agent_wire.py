"""The agent API's contract (`/api/agent_workers`): every request and answer, defined once.

The server decodes requests with these (strictly: an unknown field is refused) and builds its
answers from them; the agent builds its requests from them and reads the answers with them
(leniently: a newer server may add fields). Both sides and the tests' fake server share this
one module, so the two ends cannot drift apart. Agent tokens' request model lives here too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from tagrun.shared.loglines import MAX_MS, STREAMS

AGENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}\Z"
GROUP_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z"
AgentName = Annotated[str, msgspec.Meta(pattern=AGENT_NAME_PATTERN)]
Group = Annotated[str, msgspec.Meta(pattern=GROUP_PATTERN)]
JobId = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=1000)]


NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
# How an attempt can end: the job states a holder reports (server/job_states.py adds the rest).
OUTCOMES = ("succeeded", "failed", "cancelled")
Outcome = Annotated[str, msgspec.Meta(pattern=rf"^({'|'.join(OUTCOMES)})\Z")]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
# A W3C trace context, version 00 (shared/tracing.py); all-zero ids are invalid.
TRACEPARENT_PATTERN = r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z"
Traceparent = Annotated[str, msgspec.Meta(pattern=TRACEPARENT_PATTERN)]

# What the agent assumes of a claim answer from a server too old to say.
DEFAULT_HEARTBEAT_S = 10.0
DEFAULT_LEASE_S = 60.0


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """A request body."""


class _Outcome(_Body, omit_defaults=True):
    """An outcome: fields at their default are left out when the agent sends it, since a
    server older than a field (`retryable`, `log_chunks_lost`) refuses fields it does not
    know."""


class _Answer(msgspec.Struct, kw_only=True, frozen=True):
    """An answer: the server sends every field; the agent ignores fields it does not know."""


class Held(_Body):
    id: JobId
    attempt: Attempt


# How an agent that checks signatures says so ("block; keys=a,b"), on every request: shown
# on the Workers page (shared/signing.py parse_verify_header).
VERIFY_HEADER = "Tagrun-Agent-Verify"
# What an agent says of itself on every request, "version=1.4.0; os=linux; arch=x86_64;
# slots=4": shown on the Workers page, and its version is held against the server's
# min_agent_version. A header, not a body field, so that an older server ignores it.
INFO_HEADER = "Tagrun-Agent-Info"
_INFO_VALUE = re.compile(r"[A-Za-z0-9_.+-]{1,40}")


def info_header(version: str, os_name: str, arch: str, slots: int) -> str:
    return f"version={version}; os={os_name}; arch={arch}; slots={slots}"


def parse_info_header(raw: str) -> dict[str, str | int]:
    """The parts of a Tagrun-Agent-Info header that make sense; the rest is left out."""
    info: dict[str, str | int] = {}
    for part in raw[:500].split(";"):
        key, _, value = part.strip().partition("=")
        value = value.strip()
        if key not in ("version", "os", "arch", "slots") or not _INFO_VALUE.fullmatch(value):
            continue
        if key == "slots":
            if value.isdigit() and 1 <= int(value) <= 100_000:
                info[key] = int(value)
        else:
            info[key] = value.lower() if key != "version" else value
    return info


# A glob on script paths: * and ? only, so the agent (fnmatch) and the claim (LIKE) agree.
Glob = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_.*?/-]{1,255}\Z")]
LANGUAGE_PATTERN = r"^[a-z]{1,20}\Z"


class ClaimPolicy(_Body, omit_defaults=True):
    """What an agent's local policy lets it run (AGENT_ALLOW_*), sent with every claim so
    that the server leases it nothing else. null: any."""

    languages: Annotated[list[Annotated[str, msgspec.Meta(pattern=LANGUAGE_PATTERN)]],
                         msgspec.Meta(max_length=20)] | None = None
    workspaces: Annotated[list[Annotated[str, msgspec.Meta(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}\Z")]], msgspec.Meta(max_length=100)] | None = None
    # Globs on script paths (* and ? match any characters, / included).
    scripts: Annotated[list[Glob], msgspec.Meta(max_length=100)] | None = None
    inline: bool = True  # inline jobs (no script) too


class ClaimIn(_Body):
    name: AgentName
    slots: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 25.0
    # Sent only when set (UNSET is left out), since a server older than them refuses them.
    policy: ClaimPolicy | msgspec.UnsetType = msgspec.UNSET
    # Jobs this agent refused (its pre-job hook said no): never leased to it again.
    exclude: Annotated[list[JobId], msgspec.Meta(max_length=1000)] | msgspec.UnsetType = \
        msgspec.UNSET
    # The jobs it runs as it claims (its state: busy or live, from this claim on).
    running: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | msgspec.UnsetType = \
        msgspec.UNSET
    # Outcomes of jobs it finished, recorded before the claim is served, each on its own as
    # POST /api/agent_workers/complete would (answered in Claimed.completed). A claim that
    # carries them is answered at once, without waiting for jobs. Sent only to a server whose
    # claim answers said `accepts_completed` (an older one refuses the field).
    completed: Annotated[list[CompletedJob], msgspec.Meta(max_length=1000)] | \
        msgspec.UnsetType = msgspec.UNSET


class HeartbeatIn(_Body):
    name: AgentName
    running: Annotated[list[Held], msgspec.Meta(max_length=1000)] = []


REFUSAL_KINDS = ("policy", "hook")


class RefusalIn(_Body):
    """A job the agent will not run: outside its local policy, or refused by its pre-job
    hook. It goes back to the queue without using an attempt, and the job shows why."""

    id: JobId
    attempt: Attempt
    kind: Annotated[str, msgspec.Meta(pattern=rf"^({'|'.join(REFUSAL_KINDS)})\Z")]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class ReleaseIn(_Body):
    name: AgentName
    jobs: Annotated[list[Held], msgspec.Meta(max_length=1000)] = []
    refusals: Annotated[list[RefusalIn], msgspec.Meta(max_length=1000)] | msgspec.UnsetType \
        = msgspec.UNSET


# A line of a log chunk: where it begins in the chunk, when (epoch ms) and on which stream
# (its index in STREAMS: 0 stdout, 1 stderr, 2 tagrun, the holder's own lines).
LogMark = tuple[NonNegative, Annotated[int, msgspec.Meta(ge=0, le=MAX_MS)],
                Annotated[int, msgspec.Meta(ge=0, lt=len(STREAMS))]]


class LogsIn(_Body):
    attempt: Attempt
    offset: NonNegative
    data: str
    name: AgentName | None = None
    # Sent only to a server whose claim said `log_marks` (an older one refuses the field).
    marks: Annotated[list[LogMark], msgspec.Meta(max_length=1 << 20, description=(
        "where the chunk's lines begin: [position in data, epoch ms, stream (0 stdout, "
        "1 stderr, 2 tagrun)], positions ascending"))] | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if isinstance(self.marks, list):
            last = -1
            for pos, _, _ in self.marks:
                if not last < pos < len(self.data):
                    raise ValueError("marks: positions must ascend and fall inside data")
                last = pos


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


# What a holder that verifies signatures (AGENT_VERIFY_KEYS) found for the job it ran or
# refused: shown on the job's page.
VERDICTS = ("verified", "unverified", "refused")


class SignatureCheck(_Body, omit_defaults=True):
    verdict: Annotated[str, msgspec.Meta(pattern=rf"^({'|'.join(VERDICTS)})\Z")]
    key_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    message: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class CompleteIn(_Outcome):
    attempt: Attempt
    status: Outcome
    result: Any = None
    error: ErrorIn | None = None
    name: AgentName | None = None
    retryable: Retryable = True
    log_chunks_lost: LogChunksLost = 0
    signature_check: SignatureCheck | None = None
    traceparent: Traceparent | None = None


class CompletedJob(_Outcome):
    id: JobId
    attempt: Attempt
    status: Outcome
    result: Any = None
    error: ErrorIn | None = None
    retryable: Retryable = True
    log_chunks_lost: LogChunksLost = 0
    signature_check: SignatureCheck | None = None
    # The holder's run span (docs/tracing.md): the server's completion span is its child.
    # Sent only for a job whose claim carried a traceparent (a server that knows the field).
    traceparent: Traceparent | None = None


class CompleteManyIn(_Body):
    """Several outcomes in one request: what an agent sends when jobs finish together."""

    name: AgentName
    jobs: Annotated[list[CompletedJob], msgspec.Meta(min_length=1, max_length=1000)]


class GoodbyeIn(_Body):
    """An agent's last act when it stops cleanly: its record shows `stopped` at once."""

    name: AgentName
    # Why: "stopped" (a stop signal, drained), or another word the agent gives.
    reason: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,40}\Z")] = "stopped"


class AgentTokenIn(_Body):
    group: Group
    tags: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)]
    expires_in_s: Annotated[int, msgspec.Meta(ge=60, le=10 * 365 * 86400)] = 30 * 86400
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""
    # A job-limited token: agents using it claim at most this many jobs in total (then only
    # finish them); absent: unlimited.
    max_jobs: Annotated[int, msgspec.Meta(ge=1, le=10**9, description=(
        "jobs the agents using this token may claim in total; absent: unlimited"))] | None = None


# -- answers ---------------------------------------------------------------------------------


class JobSignature(_Answer, frozen=True):
    """Who signed a job (docs/signing.md): the key's id, the Ed25519 signature (base64) and
    whether the signer left the args out."""

    key_id: str
    sig: str
    unsigned_args: bool = False


class AgentJob(_Answer, frozen=True):
    """A claimed job as the agent receives it."""

    id: JobId
    workspace: str
    language: str
    attempt: Attempt
    content: str = ""
    args: dict[str, Any] = {}
    tag: str = ""
    timeout_s: Seconds | None = None
    # The job's own lease (or the server's), and a heartbeat that renews it 3 times over.
    lease_s: Seconds = DEFAULT_LEASE_S
    heartbeat_s: Seconds = DEFAULT_HEARTBEAT_S
    log_offset: NonNegative = 0
    # The server keeps each log line's time and stream: send them (LogsIn.marks).
    log_marks: bool = False
    # Seconds within which the agent must acknowledge the job (a heartbeat or log naming it)
    # or it goes back to the queue unused; null: no acknowledgement asked (an agent that did
    # not send `Tagrun-Agent-Features: ack`, or TAGRUN_CLAIM_ACK_S=0).
    ack_s: Seconds | None = None
    # The secrets it uses, opened for this lease alone: its process gets them as environment
    # variables, and its holder redacts them from its log, result and error.
    secrets: dict[str, str] = {}
    # Secrets it names that were withheld (deleted, no longer allowed, not readable): why.
    withheld: dict[str, str] = {}
    # The script and version it runs (None: inline), and its signature, if it was signed:
    # a holder that verifies signatures recomputes the signed payload from these fields.
    script: str | None = None
    script_version: int | None = None
    signature: JobSignature | None = None
    # The W3C trace context its run span is a child of (docs/tracing.md); None: untraced.
    traceparent: str | None = None


# Steering: an operator paused the agent (or its group), so a claim waits without jobs; or
# asked it to drain: claim nothing more, finish the jobs it runs, say goodbye and exit 0.
Paused = Annotated[bool, msgspec.Meta(description=(
    "the agent (or its group) is paused: the claim waited without jobs"))]
Drain = Annotated[bool, msgspec.Meta(description=(
    "claim nothing more: finish the running jobs, say goodbye (reason drained) and exit"))]
Quarantined = Annotated[bool, msgspec.Meta(description=(
    "the agent is quarantined (its recent attempts all failed while other agents of its tags "
    "succeeded): the claim waited without jobs until an operator resumes it or the "
    "quarantine times out"))]
# A job-limited token (max_jobs) whose budget is spent: no claim will get a job again.
Spent = Annotated[bool, msgspec.Meta(description=(
    "the token's max_jobs are all claimed: finish the running jobs, say goodbye (reason "
    "token_spent) and exit"))]


class Claimed(_Answer, frozen=True):
    jobs: list[AgentJob]
    paused: Paused = False
    drain: Drain = False
    spent: Spent = False
    quarantined: Quarantined = False
    # Who the server takes the agent for (its token's group and tags), and its version: the
    # agent logs them once, at its first answered claim (agent.connected).
    group: str | None = None
    tags: list[str] | None = None
    server_version: str | None = None
    # This server records outcomes sent with a claim (ClaimIn.completed): one request per
    # batch of jobs instead of two. `completed`: the answer for each of them, in their order.
    accepts_completed: bool = False
    completed: list[CompletedItem] | msgspec.UnsetType = msgspec.UNSET


class HeartbeatOut(_Answer, frozen=True):
    cancel: list[int]
    lost: list[int]
    drain: Drain = False


class Released(_Answer, frozen=True):
    released: list[int]


class LogsAck(_Answer, frozen=True):
    offset: NonNegative


class Completed(_Answer, frozen=True):
    status: str


class Goodbye(_Answer, frozen=True):
    stopped: bool


class Refusal(_Answer, frozen=True):
    code: str
    message: str


class CompletedItem(_Answer, frozen=True):
    """One job of a batch completion: its new `status`, or the `error` that refused it."""

    id: int
    status: str | None = None
    error: Refusal | None = None


class CompletedMany(_Answer, frozen=True):
    jobs: list[CompletedItem]


def claimed_job(raw: Any) -> AgentJob:
    """One job of a claim answer, checked; ValueError says what is wrong with it."""
    try:
        return msgspec.convert(raw, AgentJob)
    except msgspec.ValidationError as exc:
        raise ValueError(f"malformed job in claim answer: {exc}") from None
