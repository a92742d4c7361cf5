"""The agent API: the only routes an agent token opens, and the only ones it can use."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tagrun.server import events
from tagrun.server.agent_tokens import (
    FEATURES_HEADER,
    SESSION_HEADER,
    AgentIdentity,
    AgentTokens,
    holder_key,
)
from tagrun.server.config import ServerConfig
from tagrun.server.dispatcher import Dispatcher
from tagrun.server.errors import (
    AgentVersionRefused,
    InvalidInput,
    NotFound,
    TagrunError,
    Unauthorized,
)
from tagrun.server.fleet_controls import FleetControls
from tagrun.server.heartbeats import AgentRecord, Heartbeats
from tagrun.server.http import JSON, path_int, read_body, until_disconnect
from tagrun.server.services.broadcast import finish as finish_broadcasts
from tagrun.server.services.jobs import check_dict, claimed
from tagrun.server.services.quarantine import quarantine_if_failing
from tagrun.server.services.secrets import OLD_AGENT, Opened, SecretBox
from tagrun.server.store import ClaimedRow, ClaimFilter, Outcome, Store
from tagrun.server.token_budget import TokenBudget
from tagrun.shared.agent_wire import (
    INFO_HEADER,
    VERIFY_HEADER,
    Claimed,
    ClaimIn,
    Completed,
    CompletedItem,
    CompletedJob,
    CompletedMany,
    CompleteIn,
    CompleteManyIn,
    ErrorIn,
    Goodbye,
    GoodbyeIn,
    HeartbeatIn,
    HeartbeatOut,
    LogsAck,
    LogsIn,
    Refusal,
    Released,
    ReleaseIn,
    parse_info_header,
)
from tagrun.shared.loglines import moved
from tagrun.shared.redact import Redactor
from tagrun.shared.version import __version__

log = logging.getLogger("tagrun.agents")
# A claim whose wait was ended early, with this much of it left or more, asks again.
RECLAIM_MIN_S = 0.05


def _state(request: Request) -> Any:
    return request.app.state


def identify(request: Request) -> AgentIdentity:
    """The caller is its token (and its session), never the name its body gives."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <agent token>'")
    tokens: AgentTokens = _state(request).agent_tokens
    try:
        agent = tokens.verify(token.strip())
    except Unauthorized as exc:
        _refused(request, exc)
        raise
    return replace(agent, key=holder_key(agent.jti, request.headers.get(SESSION_HEADER)))


def _refused(request: Request, exc: Unauthorized) -> None:
    log.warning("agent.token_refused", extra={"reason": exc.message, "path": request.url.path,
                                              "ip": request.client.host if request.client
                                              else None})


async def _seen(request: Request, agent: AgentIdentity, name: str) -> dict[str, Any]:
    """Record the agent when this process first sees it; what it says of itself (version,
    os, arch, slots: its Tagrun-Agent-Info header, or its User-Agent if it is older)."""
    heartbeats: Heartbeats = _state(request).heartbeats
    ip = request.client.host if request.client else None
    info: dict[str, Any] = parse_info_header(request.headers.get(INFO_HEADER, ""))
    if "version" not in info:
        info["version"] = request.headers.get("user-agent", "").partition("/")[2][:40] \
            or "unknown"
    verify = request.headers.get(VERIFY_HEADER)  # parsed only when the agent is recorded
    if await heartbeats.seen(name, AgentRecord(agent.group, agent.tags, ip, info["version"],
                                               agent.jti, agent.key, verify=verify,
                                               info=info)):
        controls: FleetControls = _state(request).controls
        controls.undrain(name)  # at once here; every replica re-reads on the NOTIFY
    return info


async def _check_version(request: Request, agent: AgentIdentity, name: str,
                         info: dict[str, Any]) -> None:
    """Refuse the claim of an agent below min_agent_version (426): it finishes what it runs
    and exits 4. Its record shows `version_refused` and the refusal is logged once."""
    controls: FleetControls = _state(request).controls
    refusal = controls.version_refusal(info["version"], info.get("os"), info.get("arch"))
    if refusal is None:
        return
    store: Store = _state(request).store
    if await store.version_refused(name, agent.jti, controls.min_agent_version):
        log.warning("agent.version_refused", extra={
            "agent": name, "version": info["version"],
            "min_agent_version": controls.min_agent_version})
        await store.record_worker_event(
            name, "version_refused", f"version {info['version']} is below the minimum "
            f"{controls.min_agent_version}", "min_agent_version")
    raise AgentVersionRefused(refusal)


async def _tags_paused(controls: FleetControls, wait_s: float) -> bool:
    """Every tag of a claim is paused: wait out its wait, or until a tag pause ends or the
    controls change. True when the wait is over."""
    resume = controls.next_tag_resume_s()
    await controls.wait_change(min(wait_s, resume + 0.01) if resume else wait_s)
    return True


async def claim(request: Request) -> Response:
    agent = identify(request)
    body = await read_body(request, ClaimIn)
    info = await _seen(request, agent, body.name)
    if not body.completed:
        answer = await _serve_claim(request, agent, body, info)
        return answer if isinstance(answer, Response) else JSON(answer)
    # Outcomes that came with the claim are recorded alongside it, whatever its fate (a
    # version refusal included); such a claim does not wait for jobs.
    completed, answer = await asyncio.gather(
        _record_many(request, agent, body.name, body.completed),
        _serve_claim(request, agent, body, info))
    if isinstance(answer, Response):
        return answer
    return JSON(msgspec.structs.replace(answer, completed=completed))


async def _serve_claim(request: Request, agent: AgentIdentity, body: ClaimIn,
                       info: dict[str, Any]) -> Claimed | Response:
    await _check_version(request, agent, body.name, info)
    state = _state(request)
    # An agent that says it acknowledges jobs gets them on that condition: a claim answer lost
    # on the way puts its jobs back in the queue after claim_ack_s, not after the lease.
    features = request.headers.get(FEATURES_HEADER, "").replace(" ", "").split(",")
    acks = "ack" in features
    ack_s = state.config.claim_ack_s if acks and state.config.claim_ack_s else None
    controls: FleetControls = state.controls
    if controls.draining(body.name):
        return Claimed(jobs=[], drain=True, **_who(agent))
    # A claim that carries outcomes does not wait: the jobs they are of are held by the
    # agent until their answers come (a stop drains them).
    wait_s: float = 0.0 if body.completed else body.wait_s
    if controls.paused_for(body.name, agent.group) is not None:  # the common claim skips this
        left = await until_disconnect(request, _unpaused(controls, body.name, agent.group,
                                                         wait_s))
        if left is None:
            return Response(status_code=499)
        wait_s = left
        if wait_s <= 0 or controls.draining(body.name):  # paused all its wait, or drained
            return Claimed(jobs=[], paused=wait_s <= 0,
                           quarantined=controls.quarantined(body.name),
                           drain=controls.draining(body.name), **_who(agent))
    budget = TokenBudget(state.store, agent)  # a token with max_jobs claims within it
    jobs = await _claim_jobs(request, agent, body, info, wait_s, ack_s, budget)
    if jobs is None:  # the agent went away; the dispatcher gave back what it was leased
        return Response(status_code=499)
    if not jobs and (controls.paused_for(body.name, agent.group) is not None
                     or controls.draining(body.name)):  # paused or drained while it waited
        return Claimed(jobs=[], paused=not controls.draining(body.name),
                       quarantined=controls.quarantined(body.name),
                       drain=controls.draining(body.name), **_who(agent))
    config: ServerConfig = state.config
    heartbeats: Heartbeats = state.heartbeats
    heartbeats.ran(body.name, agent.key, len(jobs),
                   running=body.running if isinstance(body.running, int) else None)
    opened = await _secrets_for(state.secrets, jobs, "secrets" in features)
    return Claimed(jobs=[claimed(j, config.lease_s, config.heartbeat_s, ack_s,
                                 opened.get(j.id)) for j in jobs],
                   spent=budget.spent, **_who(agent))


async def _claim_jobs(request: Request, agent: AgentIdentity, body: ClaimIn,
                      info: dict[str, Any], wait_s: float, ack_s: float | None,
                      budget: TokenBudget) -> list[ClaimedRow] | None:
    """Jobs of the tags it may claim now (not paused; its pin tag while broadcast jobs wait
    for it), held up to `wait_s`; None if it went away. A wait ended early without jobs
    because the paused tags, the version window or its pinned jobs changed asks again with
    what is true now, within the same wait, rather than answering empty."""
    state = _state(request)
    controls: FleetControls = state.controls
    dispatcher: Dispatcher = state.dispatcher
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        await controls.settled()  # a pause just heard of holds for this claim
        generation = controls.generation
        tags = controls.with_pin(body.name, agent.jti, controls.unpaused(agent.tags))
        wait = deadline - loop.time()
        if not tags:  # every tag it serves is paused: it waits without jobs
            if await until_disconnect(request, _tags_paused(controls, wait)) is None:
                return None
            if deadline - loop.time() < RECLAIM_MIN_S:
                return []
            continue
        if controls.paused_tags() and (resume := controls.next_tag_resume_s()):
            wait = min(wait, resume + 0.01)  # asks again, for every tag, when one resumes
        async def lease(slots: int, w: float, tags: tuple[str, ...] = tags,
                        generation: int = generation) -> list[ClaimedRow]:
            return await dispatcher.claim(
                body.name, tags, slots, w, agent.jti, agent.key, ack_s, agent.group,
                _claim_filter(body), current=lambda: controls.generation == generation)

        try:
            jobs = await until_disconnect(request, budget.claim(body.slots, wait, lease))
        except Unauthorized as exc:  # its token was revoked while it waited
            _refused(request, exc)
            raise
        if jobs is None or jobs or budget.spent or dispatcher.closed \
                or deadline - loop.time() < RECLAIM_MIN_S \
                or controls.paused_for(body.name, agent.group) is not None \
                or controls.draining(body.name):
            return jobs
        await _check_version(request, agent, body.name, info)  # the window may have moved


def _claim_filter(body: ClaimIn) -> ClaimFilter | None:
    """The agent's local policy and refused jobs, as its claim states them."""
    policy = body.policy or None
    exclude = body.exclude or []
    if policy is None and not exclude:
        return None

    def listed(values: list[str] | None) -> tuple[str, ...] | None:
        return tuple(sorted(set(values))) if values is not None else None

    return ClaimFilter(
        languages=listed(policy.languages) if policy else None,
        workspaces=listed(policy.workspaces) if policy else None,
        scripts=listed(policy.scripts) if policy else None,
        inline=policy.inline if policy else True, exclude=tuple(sorted(set(exclude))))


async def _secrets_for(box: SecretBox, jobs: list[ClaimedRow], redacts: bool
                       ) -> dict[int, Opened]:
    """The claimed jobs' secrets, opened for this agent: none for an agent that does not
    say it redacts them (`Tagrun-Agent-Features: secrets`), which an older agent does not."""
    if not redacts:
        return {j.id: Opened({}, dict.fromkeys(j.secrets, OLD_AGENT)) for j in jobs
                if j.secrets}
    return await box.open_for(jobs)


def _who(agent: AgentIdentity) -> dict[str, Any]:
    return {"group": agent.group, "tags": list(agent.tags), "server_version": __version__,
            "accepts_completed": True}


async def _unpaused(controls: FleetControls, name: str, group: str, wait_s: float) -> float:
    """Wait while the agent (or its group) is paused, up to `wait_s`: what is left of the
    claim's wait once it is not (0: paused all along), or at once if it is not paused."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (paused := controls.paused_for(name, group)) is not None \
            and not controls.draining(name):
        left = deadline - loop.time()
        if left <= 0:
            return 0.0
        await controls.wait_change(min(left, paused))
    return max(deadline - loop.time(), 0.001)


async def heartbeat(request: Request) -> JSON:
    agent = identify(request)
    body = await read_body(request, HeartbeatIn)
    await _seen(request, agent, body.name)
    cancel, lost = await _state(request).heartbeats.beat(
        body.name, agent.key, [(h.id, h.attempt) for h in body.running])
    controls: FleetControls = _state(request).controls
    return JSON(HeartbeatOut(cancel=cancel, lost=lost, drain=controls.draining(body.name)))


async def release(request: Request) -> JSON:
    agent = identify(request)
    body = await read_body(request, ReleaseIn)
    store: Store = _state(request).store
    refusals = body.refusals or []
    held = [(h.id, h.attempt) for h in body.jobs] + [(r.id, r.attempt) for r in refusals]
    released = await store.release_jobs(body.name, held, agent.tags, key=agent.key)
    heartbeats: Heartbeats = _state(request).heartbeats
    heartbeats.ran(body.name, agent.key, -len(released))
    refused = [(r.id, r.kind, r.reason) for r in refusals if r.id in released]
    await store.record_refusals(body.name, refused)
    for job_id, kind, reason in refused:
        events.job_refused(job_id, body.name, kind, reason)
    return JSON(Released(released=released))


async def goodbye(request: Request) -> JSON:
    """An agent stopping cleanly says so last: its record shows `stopped` at once."""
    agent = identify(request)
    body = await read_body(request, GoodbyeIn)
    state = _state(request)
    if not await state.store.agent_goodbye(body.name, agent.jti, body.reason):
        raise NotFound(f"no agent named {body.name!r} has connected with this token")
    heartbeats: Heartbeats = state.heartbeats
    heartbeats.forget(body.name)
    log.info("agent.goodbye", extra={"agent": body.name, "reason": body.reason})
    return JSON(Goodbye(stopped=True))


async def _holder(request: Request, agent: AgentIdentity, name: str | None, job_id: int) -> str:
    if name is not None:
        return name
    store: Store = _state(request).store
    return await store.holder_for_key(job_id, agent.key)


async def append_logs(request: Request) -> JSON:
    agent = identify(request)
    job_id = path_int(request, "id")
    body = await read_body(request, LogsIn)
    store: Store = _state(request).store
    holder = await _holder(request, agent, body.name, job_id)
    max_chars = _state(request).config.max_log_bytes
    box: SecretBox = _state(request).secrets
    redactor = await box.redactor(job_id)
    marks = body.marks if isinstance(body.marks, list) else None  # None: an older agent
    stored = None
    if redactor:  # what the agent should have redacted; its lines' marks move with the text
        stored, positions = redactor.text_at(body.data, [m[0] for m in marks or ()])
        marks = moved(marks, positions) if marks is not None else None
    end = await store.append_logs(
        holder, job_id, body.attempt, body.offset, body.data, tags=agent.tags,
        workspace=request.path_params["ws"], max_chars=max_chars, key=agent.key,
        on_truncated=lambda: events.job_log_truncated(job_id, max_chars),
        stored=stored, marks=marks)
    return JSON(LogsAck(offset=end))


async def complete(request: Request) -> JSON:
    agent = identify(request)
    job_id = path_int(request, "id")
    body = await read_body(request, CompleteIn)
    outcome = _checked(CompletedJob(job_id, body.attempt, body.status, body.result, body.error,
                                    body.retryable, body.log_chunks_lost,
                                    body.signature_check, body.traceparent))
    holder = await _holder(request, agent, body.name, job_id)
    status = await _record(request, agent, holder, outcome, request.path_params["ws"])
    return JSON(Completed(status=status))


async def complete_many(request: Request) -> JSON:
    """Outcomes of several jobs; each is recorded (or refused) on its own, as if sent alone,
    all at once: the store writes them in one statement (store/completions.py)."""
    agent = identify(request)
    body = await read_body(request, CompleteManyIn)
    return JSON(CompletedMany(jobs=await _record_many(request, agent, body.name, body.jobs)))


async def _record_many(request: Request, agent: AgentIdentity, holder: str,
                       outcomes: list[CompletedJob]) -> list[CompletedItem]:
    """Each outcome recorded (or refused) on its own, as if sent alone, all written together
    (one wait for all of them, not a task each)."""
    state = _state(request)
    box: SecretBox = state.secrets
    redactors = await box.redactors([outcome.id for outcome in outcomes])
    items: list[CompletedItem] = []
    written: list[tuple[int, CompletedJob, Outcome, dict[str, str] | None]] = []
    for outcome in outcomes:
        try:
            made, error = _completion(state, agent, holder, _checked(outcome), None,
                                      redactors[outcome.id])
        except TagrunError as exc:
            items.append(_not_recorded(outcome, exc))
            continue
        written.append((len(items), outcome, made, error))
        items.append(CompletedItem(id=outcome.id))  # its answer follows
    answers = await state.store.complete_jobs([made for _, _, made, _ in written])
    for (n, outcome, _, error), answer in zip(written, answers, strict=True):
        try:
            if isinstance(answer, TagrunError):
                raise answer
            items[n] = CompletedItem(id=outcome.id, status=await _recorded(
                state, agent, holder, outcome, answer, error))
        except TagrunError as exc:
            items[n] = _not_recorded(outcome, exc)
    return items


def _not_recorded(outcome: CompletedJob, exc: TagrunError) -> CompletedItem:
    return CompletedItem(id=outcome.id, error=Refusal(code=exc.code, message=exc.message))


def _checked(outcome: CompletedJob) -> CompletedJob:
    if outcome.status != "succeeded" and outcome.error is None:
        raise InvalidInput("a failed or cancelled job needs an 'error' {kind, message}")
    return outcome


async def _record(request: Request, agent: AgentIdentity, holder: str, outcome: CompletedJob,
                  workspace: str | None) -> str:
    state = _state(request)
    box: SecretBox = state.secrets
    made, error = _completion(state, agent, holder, outcome, workspace,
                              await box.redactor(outcome.id))
    [answer] = await state.store.complete_jobs([made])
    if isinstance(answer, TagrunError):
        raise answer
    return await _recorded(state, agent, holder, outcome, answer, error)


def _completion(state: Any, agent: AgentIdentity, holder: str, outcome: CompletedJob,
                workspace: str | None, redactor: Redactor | None
                ) -> tuple[Outcome, dict[str, str] | None]:
    """The outcome as the store writes it, with what the agent should have redacted of the
    job's secrets (`redactor`, SecretBox.redactor) redacted again; and its error, for the
    event."""
    result, error = outcome.result, _error_dict(outcome.error)
    if redactor:  # what the agent should have redacted
        result = redactor.value(result)
        error = {k: redactor.text(v) for k, v in error.items()} if error else None
    made = state.store.completion(
        holder, outcome.id, outcome.attempt, outcome.status, result, error,
        state.config.retry_backoff_s, tags=agent.tags, workspace=workspace, key=agent.key,
        retryable=outcome.retryable, log_chunks_lost=outcome.log_chunks_lost,
        signature_check=check_dict(outcome.signature_check))
    return made, error


async def _recorded(state: Any, agent: AgentIdentity, holder: str, outcome: CompletedJob,
                    recorded: dict[str, Any], error: dict[str, str] | None) -> str:
    """What follows a recorded outcome (an event, the agent's count, quarantine, the end of
    a broadcast); its job's new status."""
    if not recorded["repeat"]:
        events.job_finished(recorded, error, outcome.traceparent)
        heartbeats: Heartbeats = state.heartbeats
        heartbeats.ran(holder, agent.key, -1)
        if recorded.get("may_quarantine") and outcome.status == "failed":
            await quarantine_if_failing(state.store, state.config, holder, agent.tags, recorded)
        if recorded.get("parent_id") is not None:  # a broadcast ends with its last child
            await finish_broadcasts(state.store, [recorded["parent_id"]])
    return str(recorded["status"])


def _error_dict(error: ErrorIn | None) -> dict[str, str] | None:
    return {"kind": error.kind, "message": error.message} if error else None


routes = [
    Route("/api/agent_workers/claim", claim, methods=["POST"]),
    Route("/api/agent_workers/heartbeat", heartbeat, methods=["POST"]),
    Route("/api/agent_workers/release", release, methods=["POST"]),
    Route("/api/agent_workers/complete", complete_many, methods=["POST"]),
    Route("/api/agent_workers/goodbye", goodbye, methods=["POST"]),
    Route("/api/w/{ws}/agent_workers/jobs/{id}/logs", append_logs, methods=["POST"]),
    Route("/api/w/{ws}/agent_workers/jobs/{id}/complete", complete, methods=["POST"]),
]
