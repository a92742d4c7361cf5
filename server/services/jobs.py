"""Jobs as submitted: a body (from the API, a batch or a schedule) resolved against its
script into the row to insert, or a copy of an earlier job; and a job as the API and the UI
show it (job_view, the one place a job record becomes that dict)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from tagrun.server.config import LeaseBounds
from tagrun.server.errors import InvalidInput
from tagrun.server.models import JobIn
from tagrun.server.services.secrets import Opened, check_use
from tagrun.server.store import ClaimedRow, NewJob, Store
from tagrun.server.store._base import iso
from tagrun.server.store.broadcasts import ChildRecord
from tagrun.server.store.jobs import JobRecord
from tagrun.server.tags import TagError, resolve_tag
from tagrun.shared.agent_wire import AgentJob, JobSignature, SignatureCheck
from tagrun.shared.executors import LANGUAGES

MAX_WAIT_S = 60.0  # the longest a GET of a job waits for it to finish (wait_s)


def job_view(job: JobRecord, *, with_content: bool = True) -> dict[str, Any]:
    """A job as the API answers it (responses.Job) and the UI shows it; lists leave its
    content out (`with_content`), which can be large."""
    view = {
        "id": job.id,
        "workspace": job.workspace,
        "script": job.script_path,
        "script_version": job.script_version,
        "language": job.language,
        "tag": job.tag,
        "args": job.args,
        "priority": job.priority,
        "run_at": iso(job.run_at),
        "timeout_s": job.timeout_s,
        "max_attempts": job.max_attempts,
        "lease_s": job.lease_s,
        "secrets": job.secrets or [],
        "signature": signature_view(job.signature),
        "signature_check": job.signature_check,
        "refusals": job.refusals or [],
        "concurrency_limit": job.concurrency_limit,
        "concurrency_key": job.concurrency_key,
        "status": job.status,
        "attempt": job.attempt,
        "worker": job.worker,
        "cancel_requested": job.cancel_requested,
        "result": job.result,
        "error": job.error,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "attempts": [_attempt_view(a) for a in job.attempts or []],
        "log_truncated": job.log_truncated,
        "log_chunks_lost": job.log_chunks_lost,
        "content": job.content,
        # A broadcast's parent, or one of its children (pinned to an agent).
        "broadcast": job.broadcast,
        "parent_id": job.parent_id,
        "pinned_to": job.pin_tag.partition("/")[2] if job.pin_tag else None,
    }
    if not with_content:
        del view["content"]
    return view


def signature_view(signature: dict[str, Any] | None) -> dict[str, Any] | None:
    """Who signed a job (or a schedule): its key id, whether the args were left out, and
    where the signature came from (job, script, schedule); the signature itself is for
    holders."""
    if signature is None:
        return None
    return {k: signature[k] for k in ("key_id", "unsigned_args", "source") if k in signature}


def _attempt_view(attempt: dict[str, Any]) -> dict[str, Any]:
    # jsonb keeps PostgreSQL's text for timestamps; show them like every other time (…Z).
    view = dict(attempt)
    for key in ("started_at", "finished_at"):
        if isinstance(view.get(key), str):
            view[key] = iso(datetime.fromisoformat(view[key]))
    return view


def child_view(child: ChildRecord) -> dict[str, Any]:
    """A broadcast's child as its parent's view lists it (responses.BroadcastChild)."""
    return {"id": child.id, "agent": child.agent, "status": child.status,
            "worker": child.worker, "result": child.result, "error": child.error,
            "started_at": iso(child.started_at), "finished_at": iso(child.finished_at)}


def claimed(row: ClaimedRow, lease_s: float, heartbeat_s: float,
            ack_s: float | None = None, secrets: Opened | None = None) -> AgentJob:
    """A claimed row as its holder (agent or direct worker) runs it: its own lease, else the
    server's `lease_s`, and a heartbeat interval that renews that lease three times over."""
    lease_s = row.lease_s or lease_s
    return AgentJob(
        id=row.id, workspace=row.workspace, language=row.language, content=row.content or "",
        args=row.args or {}, tag=row.tag, attempt=row.attempt, timeout_s=row.timeout_s,
        lease_s=lease_s, heartbeat_s=min(heartbeat_s, lease_s / 3), log_offset=row.log_offset,
        log_marks=True, ack_s=ack_s, secrets=secrets.values if secrets else {},
        withheld=secrets.withheld if secrets else {}, script=row.script_path,
        script_version=row.script_version, signature=_signature(row.signature),
        traceparent=row.traceparent)


def check_dict(check: SignatureCheck | None) -> dict[str, Any] | None:
    """What a verifying holder found, as stored in jobs.signature_check."""
    if check is None:
        return None
    return {"verdict": check.verdict, "key_id": check.key_id, "message": check.message}


def _signature(stored: dict[str, Any] | None) -> JobSignature | None:
    if not stored:
        return None
    return JobSignature(key_id=str(stored.get("key_id", "")), sig=str(stored.get("sig", "")),
                        unsigned_args=stored.get("unsigned_args") is True)


def checked_lease_s(lease_s: float | None, leases: LeaseBounds) -> float | None:
    """`lease_s` if this server grants it; None (the server's lease) stays None."""
    if lease_s is not None and not leases.min_s <= lease_s <= leases.max_s:
        raise InvalidInput(
            f"lease_s={lease_s:g} is out of range: this server grants leases of "
            f"{leases.min_s:g} to {leases.max_s:g} seconds (three TAGRUN_HEARTBEAT_S, or "
            f"TAGRUN_LEASE_S if less, to TAGRUN_MAX_LEASE_S)", code="invalid_lease")
    return lease_s


class ScriptCache:
    """Scripts looked up once per request, however many jobs of a batch name them."""

    def __init__(self, store: Store, workspace: str) -> None:
        self.store, self.workspace = store, workspace
        self._scripts: dict[tuple[str, int | None], dict[str, Any]] = {}
        self._scopes: dict[str, list[str] | None] = {}

    async def get(self, path: str, version: int | None = None) -> dict[str, Any]:
        """The script at `path`: its latest version, or `version`."""
        if (path, version) not in self._scripts:
            self._scripts[path, version] = (
                await self.store.latest_script(self.workspace, path) if version is None
                else await self.store.script_at(self.workspace, path, version))
        return self._scripts[path, version]

    async def check_secrets(self, names: Sequence[str], tag: str | None) -> None:
        """The secrets `names` exist and a job of `tag` may use them (None: any tag may,
        checked at deploy); their scopes are looked up once per request."""
        unknown = [n for n in names if n not in self._scopes]
        if unknown:
            self._scopes.update(await self.store.secret_scopes(self.workspace, unknown))
        check_use(names, self._scopes, self.workspace, tag)


async def new_job(
    body: JobIn, workspace: str, scripts: ScriptCache, leases: LeaseBounds,
    *, source: str = "job",
) -> NewJob:
    """The job `body` asks for, resolved against its script: InvalidInput (400) or
    NotFound (404) when it cannot be made. Its signature is the body's (made by `source`:
    the submitter, or a schedule), else its script version's, if signed at deploy."""
    signature = script_signature = None
    if body.script is not None:
        if body.language is not None or body.content is not None:
            raise InvalidInput("give either 'script' or 'language' and 'content', not both")
        script = await scripts.get(body.script, body.script_version)
        language, content, version = script["language"], script["content"], script["version"]
        default_tag, timeout_s = script["tag"], script["timeout_s"]
        max_attempts, limit = script["max_attempts"], script["concurrency_limit"]
        lease_s, secrets = script["lease_s"], script["secrets"]
        script_signature = script["signature"]
    elif body.script_version is not None:
        raise InvalidInput("'script_version' applies to a job of a script ('script')")
    elif body.language is not None and (body.content is not None or body.language == "identity"):
        language, content, version = body.language, body.content or "", None
        default_tag, timeout_s, max_attempts, limit, lease_s = None, None, 3, None, None
        secrets = []
        if language not in LANGUAGES:
            raise InvalidInput(
                f"unknown language {language!r}; one of {', '.join(LANGUAGES)}",
                code="unknown_language",
            )
    else:
        raise InvalidInput("give 'script', or both 'language' and 'content' "
                           "('identity' needs no content)")
    try:
        tag = resolve_tag(body.tag or default_tag or language, workspace, body.args)
    except TagError as exc:
        raise InvalidInput(str(exc), code="invalid_tag") from None
    names = tuple(dict.fromkeys([*secrets, *body.secrets]))
    if names:
        await scripts.check_secrets(names, tag)
    if body.signature is not None:
        signature = body.signature.stored(source)
    elif script_signature is not None:  # signed at deploy, args left out
        signature = {**script_signature, "source": "script"}
    return NewJob(
        script_path=body.script, script_version=version, language=language, content=content,
        args=body.args, tag=tag, priority=body.priority, run_at=body.run_at,
        timeout_s=body.timeout_s if body.timeout_s is not None else timeout_s,
        max_attempts=body.max_attempts or max_attempts,
        concurrency_key=f"{workspace}/{body.script}" if limit else None,
        concurrency_limit=limit,
        lease_s=checked_lease_s(body.lease_s if body.lease_s is not None else lease_s, leases),
        secrets=names, signature=signature,
    )


async def copied_job(store: Store, workspace: str, job_id: int, leases: LeaseBounds) -> NewJob:
    """A new job like job `job_id` ("Run again"): the same script version or content, args,
    tag, priority, limits and secrets, to run now. Its signature is copied as it is: it
    still holds, since what it signs is the same. Refused as a submit of it would be now (a
    secret it may no longer use, a lease this server no longer grants); a built-in job
    runs on its schedule only."""
    job = await store.job_to_copy(workspace, job_id)
    if job.language not in LANGUAGES:
        raise InvalidInput(f"job {job_id} is a built-in {job.language} job: it runs on its "
                           "schedule, not again on demand", code="job_not_copyable")
    if job.secrets:
        await ScriptCache(store, workspace).check_secrets(job.secrets, job.tag)
    return replace(job, lease_s=checked_lease_s(job.lease_s, leases))
