"""Broadcast jobs: "run this on every machine with tag X" (docs/fleet.md#broadcast-jobs).

`POST /api/w/{ws}/jobs` with `"broadcast": true` makes a parent and one child per agent that
is live (live or busy) for the job's tag at that moment. Each child is pinned to its agent
by name and token (jti): its queue row's tag is the agent's pin tag, "@<jti>/<name>", which
no user tag can be and only that agent's claims ask for (and only while it has pinned jobs
waiting: FleetControls holds which agents do, so other claims are unchanged). A child keeps
the broadcast's tag, so its agent runs it (and checks its signature) as any job of the tag.
A child has one attempt; one queued for an agent that went away fails with `lost_worker`;
one whose agent dies while running it fails when its lease expires. The parent runs
nowhere: it ends when every child has, its result listing each child's agent, status and
result, succeeded if they all did.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tagrun.server import events
from tagrun.server.errors import Conflict, InvalidInput
from tagrun.server.services.fleet import LIVE_STATES
from tagrun.server.services.jobs import child_view
from tagrun.server.store import DATABASE_ERRORS, NewJob, Store
from tagrun.server.store.jobs import JobRecord

log = logging.getLogger("tagrun.events")
PIN = "@"  # a pin tag's first character: never a user tag's (those start with a letter or digit)


def pin_tag(jti: str, name: str) -> str:
    return f"{PIN}{jti}/{name}"


def pinned_name(tag: str) -> str | None:
    """The agent a pin tag names (None: not a pin tag)."""
    return tag.partition("/")[2] or None if tag.startswith(PIN) else None


async def submit_broadcast(store: Store, workspace: str, job: NewJob, stale_after_s: float,
                           admit: Callable[[int], Awaitable[None]],
                           ) -> tuple[int, list[int], list[str]]:
    """Create the broadcast of `job` (`admit(n)`: the queue's back-pressure for its n
    children): (parent id, child ids, their agents)."""
    if job.concurrency_key is not None:  # a script's limit would hold most children back
        job = NewJob(**{**job.__dict__, "concurrency_key": None, "concurrency_limit": None})
    workers = await store.workers_for_tags([job.tag], stale_after_s)
    # The live agents of the tag, each with its token: (name, jti), by name.
    agents = sorted((w.name, w.jti) for w in workers
                    if w.kind == "agent" and w.state in LIVE_STATES and w.jti)
    if not agents:
        raise Conflict(f"no agent is live for tag {job.tag}: a broadcast runs on the agents "
                       "live for its tag when it is submitted", code="no_live_agent")
    names = [name for name, _ in agents]
    await admit(len(agents))
    parent, children = await store.insert_broadcast(
        workspace, job, [pin_tag(jti, name) for name, jti in agents])
    log.info("job.broadcast", extra={"job_id": parent, "workspace": workspace,
                                     "tag": job.tag, "children": children, "agents": names})
    return parent, children, names


async def with_children(store: Store, view: dict[str, Any]) -> dict[str, Any]:
    """A job's view (services/jobs.py's job_view), a broadcast's parent's with its children
    (id, agent, status, worker, times); any other job's as it is."""
    if view["broadcast"]:
        view["children"] = [child_view(c) for c in await store.broadcast_children(view["id"])]
    return view


async def cancel_broadcast(store: Store, workspace: str, parent: JobRecord) -> JobRecord:
    """Cancel a broadcast's children still to end (queued ones at once, running ones through
    their agents); the parent ends when they have. The parent as it is then."""
    for child in await store.open_children(parent.id):
        try:
            cancelled = await store.cancel_job(workspace, child)
        except Conflict:  # it ended meanwhile
            continue
        events.job_cancelled(child, workspace, running=cancelled.status == "running")
    await finish(store, [parent.id])
    return await store.get_job(workspace, parent.id)


def refuse_in_batch(index: int) -> InvalidInput:
    return InvalidInput(f"jobs[{index}]: a broadcast is submitted on its own, not in a batch")


async def finish(store: Store, parent_ids: Sequence[int] | None = None) -> list[int]:
    """End the broadcasts (`parent_ids`, or every open one) whose children have all ended;
    their ids."""
    ended: list[dict[str, Any]] = await store.finish_broadcasts(parent_ids)
    for parent in ended:
        log.info("job.broadcast_finished", extra={
            "job_id": parent["id"], "workspace": parent["workspace"],
            "status": parent["status"], "children": parent["children"],
            "failed": parent["failed"]})
    return [p["id"] for p in ended]


async def sweep(store: Store, stale_after_s: float) -> None:
    """Fail children queued for agents that went away, and end the broadcasts that are
    done (a child may end without a completion: cancelled, its lease expired)."""
    try:
        lost = await store.fail_lost_children(stale_after_s)
        for child, parent in lost:
            log.warning("job.failed", extra={"job_id": child, "parent_id": parent,
                                             "error_kind": "lost_worker"})
        await finish(store)
    except DATABASE_ERRORS as exc:  # the next sweep tries again
        log.warning("maintenance.failed", extra={"error": str(exc)})
