"""User routes for jobs: submit (one or a batch), read, wait, list, logs, cancel, retry, run
again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server import events
from tagrun.server.auth import authenticator
from tagrun.server.errors import InvalidInput, NotFound
from tagrun.server.http import JSON, path_int, query_float, query_int, read_body
from tagrun.server.models import BatchIn, JobIn
from tagrun.server.services.broadcast import (
    cancel_broadcast,
    refuse_in_batch,
    submit_broadcast,
    with_children,
)
from tagrun.server.services.jobs import (
    MAX_WAIT_S,
    ScriptCache,
    copied_job,
    job_view,
    new_job,
)
from tagrun.server.services.pending import with_pending_reason, with_pending_reasons
from tagrun.server.store import FINAL_STATES, STATES, NewJob, Store
from tagrun.server.store.jobs import JobRecord
from tagrun.shared import tracing


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidInput("Idempotency-Key must be 1 to 255 printable characters")
    return key


@contextlib.contextmanager
def _submit_span(request: Request, workspace: str) -> Iterator[tracing.Span | None]:
    """The submit span (docs/tracing.md), a child of the submitter's `traceparent`; None
    when this server does not trace."""
    tracer = tracing.tracer()
    if tracer is None:
        yield None
        return
    parent = tracing.valid_traceparent(request.headers.get("traceparent"))
    span = tracer.start("tagrun.submit", parent, {"tagrun.workspace": workspace},
                        kind="server")
    try:
        yield span
    except Exception as exc:
        span.fail(str(exc)[:500])
        raise
    finally:
        span.end()


def _traced(jobs: list[NewJob], request: Request, span: tracing.Span | None) -> list[NewJob]:
    """The jobs, each carrying the trace its spans join: the submit span's, else (this
    server does not trace) the submitter's own, passed on to holders that do."""
    traceparent = span.traceparent if span is not None \
        else tracing.valid_traceparent(request.headers.get("traceparent"))
    if traceparent is None:
        return jobs
    return [replace(job, traceparent=traceparent) for job in jobs]


async def submit_job(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    body = await read_body(request, JobIn)
    key = _idempotency_key(request)
    with _submit_span(request, workspace) as span:
        job = await new_job(body, workspace, ScriptCache(_store(request), workspace),
                            request.app.state.config.lease_bounds)
        [job] = _traced([job], request, span)
        if body.broadcast:
            return await _broadcast(request, workspace, job, key, span)
        await request.app.state.backpressure.admit(1)
        made: JobRecord | None = None
        if key is None:
            made = await request.app.state.dispatcher.insert_job(workspace, job)
            job_id, created = made.id, True
        else:
            job_id, created = await _store(request).insert_job_once(workspace, job, key)
        if span is not None:
            span.set("tagrun.job.id", job_id)
            span.set("tagrun.job.tag", job.tag)
    if created:
        events.job_submitted(workspace, [job_id], [job.tag])
    if made is None:  # the first job of its Idempotency-Key, as it is now
        made = await _store(request).get_job(workspace, job_id)
    return JSON(job_view(made), status_code=201 if created else 200)


async def _broadcast(request: Request, workspace: str, job: NewJob, key: str | None,
                     span: tracing.Span | None) -> JSON:
    """One child per agent live for the job's tag, and their parent (the answer)."""
    if key is not None:
        raise InvalidInput("Idempotency-Key does not apply to broadcast jobs")
    store = _store(request)
    parent, children, _ = await submit_broadcast(
        store, workspace, job, request.app.state.config.stale_after_s,
        request.app.state.backpressure.admit)
    if span is not None:
        span.set("tagrun.job.id", parent)
        span.set("tagrun.job.tag", job.tag)
    events.job_submitted(workspace, [parent, *children], [job.tag] * (len(children) + 1))
    return JSON(await with_children(store, job_view(await store.get_job(workspace, parent))),
                status_code=201)


async def submit_batch(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    body = await read_body(request, BatchIn)
    if _idempotency_key(request) is not None:
        raise InvalidInput("Idempotency-Key applies to single submits, not to batches")
    scripts = ScriptCache(_store(request), workspace)
    leases = request.app.state.config.lease_bounds
    jobs = []
    for index, item in enumerate(body.jobs):
        if item.broadcast:
            raise refuse_in_batch(index)
        try:
            jobs.append(await new_job(item, workspace, scripts, leases))
        except (InvalidInput, NotFound) as exc:
            exc.message = f"jobs[{index}]: {exc.message}"
            raise
    with _submit_span(request, workspace) as span:
        await request.app.state.backpressure.admit(len(jobs))
        ids = await _store(request).insert_jobs(workspace, _traced(jobs, request, span))
        if span is not None:
            span.set("tagrun.job.count", len(ids))
            span.set("tagrun.job.ids", ids[:100])
    events.job_submitted(workspace, ids, [j.tag for j in jobs])
    return JSON({"ids": ids}, status_code=201)


async def get_job(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    job_id = path_int(request, "id")
    wait_s = query_float(request, "wait_s", 0.0, maximum=MAX_WAIT_S)
    store = _store(request)
    stale_after_s = request.app.state.config.stale_after_s
    if wait_s <= 0:
        job = await store.get_job(workspace, job_id)
    else:
        job = await _finished_or_late(request, workspace, job_id, wait_s)
    return JSON(await with_children(store, await with_pending_reason(store, job_view(job),
                                                                     stale_after_s)))


async def _finished_or_late(request: Request, workspace: str, job_id: int, wait_s: float
                            ) -> JobRecord:
    """Job `job_id` once it has ended, or as it is after `wait_s` seconds."""
    store = _store(request)
    deadline = time.monotonic() + wait_s
    with request.app.state.listener.watching_done(job_id) as done:
        job = await store.get_job(workspace, job_id)  # watched first: no finish missed
        while job.status not in FINAL_STATES and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), left)
            done.clear()
            job = await store.get_job(workspace, job_id)
    return job


async def list_jobs(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    status = request.query_params.get("status") or None
    if status is not None and status not in STATES:
        raise InvalidInput(f"status {status!r} is not one of {', '.join(STATES)}")
    limit = query_int(request, "limit", 50, minimum=1, maximum=1000)
    before = query_int(request, "cursor", 2**62, minimum=1, maximum=2**62)
    jobs = await _store(request).list_jobs(
        workspace, before=before, status=status, tag=request.query_params.get("tag") or None,
        script=request.query_params.get("script") or None, limit=limit,
    )
    views = [job_view(job, with_content=False) for job in jobs]
    await with_pending_reasons(_store(request), views, request.app.state.config.stale_after_s)
    next_cursor = str(jobs[-1].id) if len(jobs) == limit else None
    return JSON({"jobs": views, "next_cursor": next_cursor})


async def job_logs(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    offset = query_int(request, "offset", 0, minimum=0, maximum=2**62)
    return JSON(await _store(request).read_logs(workspace, path_int(request, "id"), offset))


async def cancel_job(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    job_id = path_int(request, "id")
    store = _store(request)
    job = await store.cancel_job(workspace, job_id)
    if job.broadcast:  # its children are cancelled; it ends with them
        job = await cancel_broadcast(store, workspace, job)
    else:
        events.job_cancelled(job_id, workspace, running=job.status == "running")
    return JSON(await with_children(store, job_view(job)))


async def retry_job(request: Request) -> JSON:
    workspace = await authenticator(request).workspace(request)
    return JSON(job_view(await _store(request).retry_job(workspace, path_int(request, "id"))))


async def rerun_job(request: Request) -> JSON:
    """A new job like this one, whatever its state ("Run again")."""
    workspace = await authenticator(request).workspace(request)
    with _submit_span(request, workspace) as span:
        job = await copied_job(_store(request), workspace, path_int(request, "id"),
                               request.app.state.config.lease_bounds)
        [job] = _traced([job], request, span)
        if (await _store(request).get_job(workspace, path_int(request, "id"))).broadcast:
            return await _broadcast(request, workspace, job, None, span)  # to today's agents
        await request.app.state.backpressure.admit(1)
        [job_id] = await _store(request).insert_jobs(workspace, [job])
        if span is not None:
            span.set("tagrun.job.id", job_id)
            span.set("tagrun.job.tag", job.tag)
    events.job_submitted(workspace, [job_id], [job.tag])
    return JSON(job_view(await _store(request).get_job(workspace, job_id)), status_code=201)


routes = [
    Route("/api/w/{ws}/jobs", submit_job, methods=["POST"]),
    Route("/api/w/{ws}/jobs", list_jobs, methods=["GET"]),
    Route("/api/w/{ws}/jobs/batch", submit_batch, methods=["POST"]),
    Route("/api/w/{ws}/jobs/{id}", get_job, methods=["GET"]),
    Route("/api/w/{ws}/jobs/{id}/logs", job_logs, methods=["GET"]),
    Route("/api/w/{ws}/jobs/{id}/cancel", cancel_job, methods=["POST"]),
    Route("/api/w/{ws}/jobs/{id}/retry", retry_job, methods=["POST"]),
    Route("/api/w/{ws}/jobs/{id}/rerun", rerun_job, methods=["POST"]),
]
