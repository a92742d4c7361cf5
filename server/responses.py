"""Wire models of responses: what the API answers, as the OpenAPI document describes it.

The server builds plain dicts; tests decode real responses into these (strictly), so the
document and the server cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from tagrun.shared.loglines import STREAMS


class _Out(msgspec.Struct, forbid_unknown_fields=True):
    pass


class ErrorDetail(_Out):
    code: str
    message: str


class ErrorOut(_Out):
    error: ErrorDetail


class Health(_Out):
    status: str
    version: str


class JobError(_Out):
    kind: str
    message: str


class Attempt(_Out):
    attempt: int
    worker: str | None
    started_at: str | None
    finished_at: str
    status: str
    error: JobError | None


class Signer(_Out):
    """Who signed a job (docs/signing.md): the key's id, whether the args were left out, and
    where the signature came from: "job" (its submitter), "script" (its version's deploy),
    "schedule"."""

    key_id: str
    unsigned_args: bool = False
    source: str = "job"


class SignatureCheck(_Out):
    """What the last holder that verifies signatures found: verified, unverified (it ran, in
    warn mode) or refused (it failed unrun)."""

    verdict: str
    key_id: str | None = None
    message: str = ""


class ScriptSignature(_Out):
    key_id: str
    sig: str  # base64 Ed25519 signature of the version's payload
    unsigned_args: bool = True
    source: str = "deploy"


class Verify(_Out):
    """How a holder checks jobs' signatures: block or warn, with these key ids."""

    mode: str
    keys: list[str]


class PendingReason(_Out):
    """Why a queued job waits (server/services/pending.py lists the codes): no_live_worker,
    paused, refused_by_agents, cap, all_busy, delayed, retry_backoff, claimable."""

    code: str
    message: str
    workers: list[str] = []  # the workers it names
    until: str | None = None  # delayed, retry_backoff: when it is due
    cap: str | None = None  # cap: which (task_max_concurrent, concurrency_limit, schedule)
    value: int | None = None  # cap: its value


class JobRefusal(_Out):
    """An agent that would not run the job: its local policy or its pre-job hook said no
    (the job went back to the queue without using an attempt)."""

    worker: str
    kind: str  # policy, hook
    reason: str
    at: str


class BroadcastChild(_Out):
    """One child of a broadcast: its agent and how it went."""

    id: int
    agent: str
    status: str
    worker: str | None  # who ran it (its agent), null while it has not run
    result: Any
    error: JobError | None
    started_at: str | None
    finished_at: str | None


class Job(_Out):
    id: int
    workspace: str
    script: str | None
    script_version: int | None
    language: str
    tag: str
    args: dict[str, Any]
    priority: int
    run_at: str
    timeout_s: float | None
    max_attempts: int
    # Its own lease, from the job or its script; null: the server's TAGRUN_LEASE_S.
    lease_s: float | None
    status: str
    attempt: int
    worker: str | None
    cancel_requested: bool
    result: Any
    error: JobError | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: list[Attempt]
    # The stored log reached TAGRUN_MAX_LOG_BYTES; the rest was dropped after a marker.
    log_truncated: bool = False
    # Log chunks the server refused while the job ran; a marker in the log shows each.
    log_chunks_lost: int = 0
    content: str | None = None
    # The names of the secrets it uses (never a value): its holder gets them as variables.
    secrets: list[str] = []
    signature: Signer | None = None
    signature_check: SignatureCheck | None = None
    refusals: list[JobRefusal] = []
    # Why a queued job waits (on every queued job the API returns, lists included).
    pending_reason: PendingReason | None = None
    # Its concurrency cap: its script's concurrency_limit, or its schedule's one at a time.
    concurrency_limit: int | None = None
    concurrency_key: str | None = None
    # A broadcast (docs/fleet.md): the parent, with its children (the job view only);
    # or a child, with its parent and the agent it is pinned to.
    broadcast: bool = False
    parent_id: int | None = None
    pinned_to: str | None = None
    children: list[BroadcastChild] | None = None


class JobPage(_Out):
    jobs: list[Job]
    next_cursor: str | None


class JobIds(_Out):
    ids: list[int]


class LogLine(_Out):
    """One line of a log (the newline that ends it is not in `text`)."""

    offset: int
    # When it began (UTC, to the millisecond) and who wrote it: stdout, stderr, or tagrun
    # (the holder's own lines); null for a line from a holder that does not say.
    at: str | None
    stream: Annotated[str, msgspec.Meta(pattern=rf"^({'|'.join(STREAMS)})\Z")] | None
    text: str


class Logs(_Out):
    data: str
    offset: int
    done: bool
    # The lines that begin and end in `data`; a line still being written is left for the
    # next read, which asks from `lines_end` (`offset` when data ends at a line's end).
    lines: list[LogLine]
    lines_end: int


class Script(_Out):
    path: str
    version: int
    language: str
    tag: str | None
    timeout_s: float | None
    max_attempts: int
    concurrency_limit: int | None
    lease_s: float | None  # its jobs' lease; null: the server's TAGRUN_LEASE_S
    created_at: str
    secrets: list[str] = []  # the secrets its jobs use, by name
    content: str | None = None
    signature: ScriptSignature | None = None  # signed at deploy (args left out)


class ScriptPage(_Out):
    scripts: list[Script]
    next_cursor: str | None


class SecretInfo(_Out):
    """A secret as listed: never its value, not even to the superadmin."""

    name: str
    allowed_tags: list[str] | None  # null: jobs of any tag may use it
    created_at: str
    created_by: str  # "superadmin" or "token <id>"
    updated_at: str
    updated_by: str


class Secrets(_Out):
    secrets: list[SecretInfo]


class SecretDeleted(_Out):
    name: str
    deleted: bool


class SecretsRotated(_Out):
    key_id: str  # the key that now encrypts every secret (an id, never the key)
    resealed: int
    keys_in_use: list[str]


class Workspace(_Out):
    id: str
    created_at: str


class Workspaces(_Out):
    workspaces: list[Workspace]


class WorkspaceToken(_Out):
    id: int
    workspace: str | None  # null for an autoscale token
    label: str
    created_at: str
    expires_at: str | None
    revoked: bool
    token: str | None = None
    kind: str = "workspace"  # or "autoscale": it reads GET /api/autoscale, nothing else


class WorkspaceTokens(_Out):
    tokens: list[WorkspaceToken]


class Revoked(_Out):
    revoked: bool
    id: int | None = None
    jti: str | None = None


class AgentToken(_Out):
    jti: str
    group: str
    tags: list[str]
    label: str
    expires_at: str
    created_at: str | None = None
    revoked: bool | None = None
    token: str | None = None
    # A job-limited token: the jobs it may claim in total (None: unlimited), and has claimed.
    max_jobs: int | None = None
    jobs_claimed: int | None = None


class AgentTokens(_Out):
    agent_tokens: list[AgentToken]


class Agent(_Out):
    name: str
    kind: str
    group: str
    tags: list[str]
    active_count: int
    jobs_executed: int
    connected_at: str
    last_seen: str
    ip: str | None
    version: str | None
    # One of services/fleet.py STATES: live, busy, stopped, stale, token_revoked.
    state: str
    stale: bool  # state == "stale" (kept for clients older than `state`)
    # When it said goodbye (state "stopped"), and why: "stopped" (drained), "aborted".
    stopped_at: str | None
    stop_reason: str | None
    # While paused: why, by whom, until when (null: until resumed), and whether the agent or
    # its group ("agent", "group") was paused. While draining: the note given.
    pause_note: str | None
    paused_by: str | None
    paused_until: str | None
    paused_as: str | None
    drain_note: str | None
    verify: Verify | None = None  # null: it runs jobs without checking their signatures
    # What the agent says of itself (its Tagrun-Agent-Info header; null from older agents):
    # os (linux, darwin, windows), CPU architecture, and how many jobs it runs at once.
    os: str | None = None
    arch: str | None = None
    slots: int | None = None
    outdated: bool = False  # below recommended_agent_version: it runs, flagged
    version_refused_min: str | None = None  # state version_refused: the minimum it was below
    # State quarantined: what the rule saw, and when it ends by itself (null: when resumed).
    quarantine_reason: str | None = None
    quarantined_until: str | None = None


class PausedTag(_Out):
    """A paused tag: no agent or worker claims its jobs until it is resumed or until."""

    tag: str
    paused_at: str
    paused_until: str | None  # null: until resumed
    note: str
    paused_by: str | None


class Steered(_Out):
    """What a pause, resume or drain did."""

    name: str  # the agent's name, or the group's
    state: str  # paused, resumed, draining


class Pool(_Out):
    group: str
    tags: list[str]
    live_agents: int
    running_now: int
    pending_now: int


class TagLoad(_Out):
    tag: str
    queued: int
    running: int
    live_workers: int
    oldest_queued_s: float | None = None  # how long its oldest due job has waited
    # Queue wait (due to start) of its jobs that finished in the last 15 minutes.
    wait_p50_s: float | None = None
    wait_p95_s: float | None = None


class FleetTotals(_Out):
    """Agents and workers in all, in each state, and matching the filters."""

    all: int
    live: int
    busy: int
    paused: int
    draining: int
    stopped: int
    stale: int
    token_revoked: int
    version_refused: int
    quarantined: int
    matched: int


class Fleet(_Out):
    version: str
    task_max_concurrent: int
    task_inline_max_concurrent: int
    min_agent_version: str
    recommended_agent_version: str
    agent_download_url: str
    agents: list[Agent]  # one page, by name
    paused_tags: list[PausedTag]
    next_cursor: str | None  # ?cursor= for the next page; null: the last
    totals: FleetTotals
    pools: list[Pool]
    tags: list[TagLoad]


class AgentJobLine(_Out):
    """A job on an agent's page: one it runs now, or (with an outcome) one it ended."""

    id: int
    workspace: str
    script: str | None  # its script's path; null: inline code
    tag: str
    attempt: int
    started_at: str | None
    status: str | None = None  # succeeded, failed, cancelled (jobs it ended only)
    finished_at: str | None = None
    duration_s: float | None = None  # from its last start to its end


class WorkerEvent(_Out):
    """One line of an agent's state history."""

    what: str  # paused, resumed, drain_requested, quarantined, released, version_refused
    note: str | None
    by: str | None
    at: str
    until: str | None  # when it ends by itself (a pause with a timeout)
    scope: str  # "agent", or "group": its group's pause or resume
    name: str  # the agent's name, or the group's


class AgentDetail(Agent, kw_only=True):
    """`GET /api/workers/{name}`: the agent as the list shows it, and more."""

    jti: str | None  # its token's id (null: a direct worker)
    token_label: str | None
    token_problem: str | None  # "revoked" or "expired"
    current_jobs: list[AgentJobLine]
    recent_jobs: list[AgentJobLine]  # the last 50 it ended, newest first
    history: list[WorkerEvent]  # newest first, its group's lines included


class AutoscaleInputs(_Out):
    """The formula's inputs used (docs/autoscaling.md), defaults filled in."""

    target_slots_per_job: float
    max_queue_age_s: float | None
    slots_per_agent: int


class AutoscalePool(_Out):
    """A tag's or a group's figures (a group: its tags' queues, its own agents' jobs)."""

    queued: int  # every queued job, delayed ones included
    queued_due: int  # those due to run now
    running: int
    oldest_queued_s: float | None  # how long the oldest due job has waited
    agents_live: int  # connected, running nothing
    agents_busy: int
    agents_paused: int
    agents_draining: int
    slots_live: int  # slots of the live and busy agents
    slots_busy: int
    slots_idle: int
    desired_agents: int  # never negative; 0 when nothing is queued or running


class AutoscaleTag(AutoscalePool):
    tag: str
    paused: bool = False  # paused: its queued jobs count as no demand


class AutoscaleGroup(AutoscalePool):
    group: str
    tags: list[str]


class Autoscale(_Out):
    inputs: AutoscaleInputs
    groups: list[AutoscaleGroup]
    tags: list[AutoscaleTag]


class SettingsOut(_Out):
    settings: dict[str, int | str]  # caps are numbers; the agent version window is text


class ScheduleRun(_Out):
    fire_at: str
    job_id: int | None
    status: str
    message: str | None
    started_at: str | None
    finished_at: str | None


class Schedule(_Out):
    name: str
    workspace: str
    cron: str
    timezone: str
    script: str | None
    args: dict[str, Any]
    overlap: str
    enabled: bool
    timeout_s: float | None
    tag: str | None
    builtin: bool
    description: str | None
    next_fires: list[str]
    last_runs: list[ScheduleRun]
    created_at: str
    updated_at: str
    # The version it fires (null: the script's latest at each fire), and who signed its runs.
    script_version: int | None = None
    signature: Signer | None = None


class SchedulePage(_Out):
    schedules: list[Schedule]
    next_cursor: str | None


class ScheduleDeleted(_Out):
    name: str
    workspace: str
    deleted: bool
