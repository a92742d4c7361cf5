"""The server's job events, with stable names (docs/events.md): one place decides which
event a state change is, so direct workers and agents report alike."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

from tagrun.server import metrics
from tagrun.shared import tracing
from tagrun.shared.logfmt import event
from tagrun.shared.signing import SIGNATURE_INVALID

if TYPE_CHECKING:  # no import at run time: the store logs through this module's callers
    from tagrun.server.store.leases import ClaimedRow

log = logging.getLogger("tagrun.events")


def job_submitted(workspace: str, ids: Sequence[int], tags: Sequence[str]) -> None:
    metrics.JOBS_SUBMITTED.inc(len(ids))
    if len(ids) == 1:
        event(log, INFO, "job.submitted", {"workspace": workspace, "job_id": ids[0],
                                           "tag": tags[0]})
    elif ids:
        event(log, INFO, "job.submitted", {"workspace": workspace, "count": len(ids),
                                           "first_job_id": ids[0], "last_job_id": ids[-1],
                                           "tags": sorted(set(tags))[:20]})


def claim_unacknowledged(job_id: int, status: str) -> None:
    """An agent did not acknowledge a job it was handed (the answer was lost on the way):
    requeued (`queued`; without using an attempt unless it happened max_attempts times
    already), or ended (`cancelled`, or `failed` once it happened too often)."""
    metrics.CLAIMS_UNACKNOWLEDGED.inc()
    event(log, WARNING, "job.claim_unacknowledged", {"job_id": job_id, "status": status})
    if status == "failed":
        metrics.DEAD_LETTERED.inc()
        event(log, WARNING, "job.dead_lettered", {"job_id": job_id, "error_kind": "lost_worker"})


def job_log_truncated(job_id: int, max_chars: int) -> None:
    metrics.LOGS_TRUNCATED.inc()
    event(log, WARNING, "job.log_truncated", {"job_id": job_id, "max_chars": max_chars})


def job_claimed(job: ClaimedRow) -> None:
    if job.waited_s is not None:
        metrics.DISPATCH_LATENCY.observe(max(job.waited_s, 0.0))
        metrics.observe_queue_wait(job.tag, job.waited_s)
        if job.traceparent is not None and (tracer := tracing.tracer()) is not None:
            tracer.record("tagrun.queue_wait", job.traceparent, {
                **tracing.job_attributes(job.id, job.workspace, job.tag, job.attempt),
                "tagrun.worker": job.worker}, began_s_ago=job.waited_s)
    event(log, INFO, "job.claimed", {"job_id": job.id, "tag": job.tag,
                                     "attempt": job.attempt, "worker": job.worker})


def job_finished(outcome: dict[str, Any], error: dict[str, Any] | None,
                 traceparent: str | None = None) -> None:
    """After a completion: `outcome` is what the store recorded (see Leases.complete_job);
    `traceparent`: the holder's run span, when it sent one."""
    _trace_completion(outcome, error, traceparent)
    fields = {"job_id": outcome["id"], "tag": outcome["tag"], "attempt": outcome["attempt"],
              "worker": outcome["worker"], "duration_ms": outcome["duration_ms"]}
    status = outcome["status"]
    finished = "failed" if status == "queued" else status
    metrics.job_finished(finished)
    if outcome["duration_ms"] is not None:
        metrics.RUN_DURATION.observe(float(outcome["duration_ms"]) / 1000)
    if status == "succeeded":
        event(log, INFO, "job.succeeded", fields)
    elif status == "cancelled":
        event(log, INFO, "job.cancelled", fields)
    else:
        kind = (error or {}).get("kind", "internal")
        event(log, WARNING, "job.failed", {**fields, "error_kind": kind})
        if kind == SIGNATURE_INVALID:  # refused unrun by a holder that verifies signatures
            event(log, WARNING, "job.signature_refused", {
                **fields, "reason": (error or {}).get("message", "")})
        if status == "queued":
            metrics.RETRIES.inc()
            event(log, INFO, "job.retry_scheduled", {**fields, "run_at": outcome["run_at"]})
        else:
            metrics.DEAD_LETTERED.inc()
            event(log, WARNING, "job.dead_lettered", fields)


def _trace_completion(outcome: dict[str, Any], error: dict[str, Any] | None,
                      traceparent: str | None) -> None:
    """The completion span: a child of the run span (else of the job's submit span)."""
    tracer = tracing.tracer()
    parent = traceparent or outcome.get("traceparent")
    if tracer is None or parent is None:
        return
    span = tracer.start("tagrun.complete", parent, {
        **tracing.job_attributes(outcome["id"], outcome.get("workspace") or "",
                                 outcome["tag"], outcome["attempt"]),
        "tagrun.job.status": outcome["status"], "tagrun.worker": outcome["worker"] or ""},
        kind="server")
    if error is not None:
        span.fail(f"{error.get('kind', 'internal')}: {error.get('message', '')}"[:500])
    span.end()


def job_refused(job_id: int, worker: str, kind: str, reason: str) -> None:
    """An agent would not run a job (its local policy, its pre-job hook): back in the queue
    without using an attempt, and not leased to that agent again."""
    event(log, INFO, "job.refused", {"job_id": job_id, "worker": worker, "kind": kind,
                                     "reason": reason})


def job_cancelled(job_id: int, workspace: str, running: bool) -> None:
    if not running:
        metrics.job_finished("cancelled")
    event(log, INFO, "job.cancel_requested" if running else "job.cancelled",
          {"job_id": job_id, "workspace": workspace})


def lease_expired(job_id: int, status: str) -> None:
    """The maintenance loop requeued (`queued`) or failed a job whose holder went silent."""
    metrics.LEASE_EXPIRIES.inc()
    event(log, WARNING, "job.lease_expired", {"job_id": job_id, "status": status})
    if status == "failed":
        metrics.DEAD_LETTERED.inc()
        event(log, WARNING, "job.dead_lettered", {"job_id": job_id, "error_kind": "lease_expired"})
