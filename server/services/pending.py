"""Why a queued job waits (`pending_reason`: a code and a sentence), for a page of jobs at a
time: the workers of their tags and the caps are read once per page, never per job.

In the order checked, the first that applies:

| code | when |
|---|---|
| `delayed` | its run_at is ahead (submitted with run_at) |
| `retry_backoff` | its run_at is ahead after a failed attempt |
| `paused` (`scope` `tag`) | its tag is paused: by whom, the note, until when |
| `pinned` | a broadcast's child: only its own agent runs it (`agent`) |
| `agent_version_too_old` | no live worker serves its tag, and agents of the tag were |
| | refused for a version below min_agent_version |
| `no_live_worker` | no live agent or worker serves its tag |
| `paused` (`scope` `workers`) | every live worker of its tag is paused or draining |
| `refused_by_agents` | every live worker of its tag refused it (local policy, pre-job hook) |
| `cap` | a cap holds it: task_max_concurrent, its script's concurrency_limit, its |
| | schedule's one run at a time, task_inline_max_concurrent |
| `all_busy` | every live worker of its tag is running jobs |
| `claimable` | a live worker of its tag is free: it starts in a moment |
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tagrun.server.services.fleet import LIVE_STATES
from tagrun.server.store import Store
from tagrun.server.store.agents import WorkerRecord

STEERED = ("paused", "draining", "quarantined")  # alive, but claiming nothing new
ALIVE = (*LIVE_STATES, *STEERED)  # the rest (stale, stopped, token_revoked) are gone
SHOWN = 5  # workers named in a sentence before "and N more"
CLOCK_SLACK = timedelta(seconds=0.5)  # run_at is the database's clock, `now` this process's


def _names(workers: Sequence[WorkerRecord]) -> str:
    names = [w.name for w in workers[:SHOWN]]
    more = f" and {len(workers) - SHOWN} more" if len(workers) > SHOWN else ""
    return ", ".join(names) + more


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _reason(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


def reason_for(job: dict[str, Any], workers: Sequence[WorkerRecord],
               load: dict[str, Any], now: datetime,
               paused_tags: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Why `job` (queued) waits, from the workers of its tag, the caps' load and the paused
    tags (by tag)."""
    tag = job["tag"]
    paused = (paused_tags or {}).get(tag)
    if paused is not None:
        until = f" until {paused['paused_until']}" if paused["paused_until"] else \
            " until it is resumed"
        return _reason("paused", f"tag {tag} is paused by {paused['paused_by'] or 'someone'}"
                       f"{until}: {paused['note']}", scope="tag", by=paused["paused_by"],
                       note=paused["note"], until=paused["paused_until"])
    if job["run_at"] and _when(job["run_at"]) > now + CLOCK_SLACK:
        if job["attempts"]:
            last = job["attempts"][-1]
            kind = (last.get("error") or {}).get("kind", "failed")
            return _reason("retry_backoff", f"attempt {last.get('attempt')} failed ({kind}); "
                           f"the next one is due at {job['run_at']}", until=job["run_at"])
        return _reason("delayed", f"it was submitted to run at {job['run_at']}",
                       until=job["run_at"])
    if job.get("pinned_to"):
        return _pinned(job["pinned_to"], workers)
    mine = [w for w in workers if tag in w.tags]
    live = [w for w in mine if w.state in ALIVE]
    if not live:
        too_old = [w for w in mine if w.state == "version_refused"]
        if too_old:
            minimum = too_old[0].version_refused_min or "min_agent_version"
            return _reason("agent_version_too_old", f"no live worker serves tag {tag}: its "
                           f"agents ({_names(too_old)}) run a version below the server's "
                           f"minimum {minimum} and were refused; upgrade them",
                           workers=[w.name for w in too_old], minimum=minimum)
        gone = f" ({_names(mine)}: {', '.join(sorted({w.state for w in mine}))})" \
            if mine else ""
        return _reason("no_live_worker", f"no live worker serves tag {tag}{gone}: it waits "
                       "until an agent or worker of that tag connects")
    free = [w for w in live if w.state in LIVE_STATES]
    if not free:
        notes = "; ".join(f"{w.name} {w.state}" + (
            f" by {w.paused_by}: {w.pause_note}" if w.pause_note else "") + (
            f": {w.quarantine_reason}" if w.quarantine_reason else "")
            for w in live[:SHOWN])
        return _reason("paused", f"every live worker of tag {tag} is paused, draining or "
                       "quarantined "
                       f"({notes})", scope="workers", workers=[w.name for w in live])
    refused = {r["worker"]: f"{r['kind']}: {r['reason']}" for r in job.get("refusals") or []}
    if refused and all(w.name in refused for w in free):
        names = "; ".join(f"{w.name} ({refused[w.name]})" for w in free[:SHOWN])
        return _reason("refused_by_agents", f"every live worker for tag {tag} refused it: "
                       f"{names}. It waits for another worker of that tag.",
                       workers=[w.name for w in free])
    total = load["total_cap"]
    if total and load["running"] >= total:
        return _reason("cap", f"task_max_concurrent={total} is reached ({load['running']} "
                       "running)", cap="task_max_concurrent", value=total)
    key, limit = job.get("concurrency_key"), job.get("concurrency_limit")
    if key and limit and load["by_key"].get(key, 0) >= limit:
        running = load["by_key"][key]
        if key.startswith("schedule:"):
            return _reason("cap", "its schedule runs one at a time and a run is still going",
                           cap="schedule", value=limit)
        return _reason("cap", f"script {job['script']} runs at most {limit} at a time "
                       f"({running} running)", cap="concurrency_limit", value=limit)
    inline = load["inline_cap"]
    if inline and load["running_inline"] >= inline and all(w.kind == "inline"
                                                           for w in free):
        return _reason("cap", f"task_inline_max_concurrent={inline} is reached and only "
                       "server processes' own workers serve its tag",
                       cap="task_inline_max_concurrent", value=inline)
    if all(w.state == "busy" for w in free):
        return _reason("all_busy", f"all {len(free)} live workers of tag {tag} are running "
                       f"jobs ({_names(free)})", workers=[w.name for w in free])
    return _reason("claimable", f"a live worker of tag {tag} is free: it starts in a moment")


def _pinned(agent: str, workers: Sequence[WorkerRecord]) -> dict[str, Any]:
    found = next((w for w in workers if w.name == agent), None)
    state = found.state if found is not None else "gone"
    if state in LIVE_STATES:
        return _reason("pinned", f"it is part of a broadcast and runs only on agent {agent} "
                       f"({state}), which takes it when it has a free slot", agent=agent)
    if state in STEERED:
        return _reason("pinned", f"it is part of a broadcast and runs only on agent {agent}, "
                       f"which is {state}: it waits for it", agent=agent)
    return _reason("pinned", f"it is part of a broadcast and runs only on agent {agent}, "
                   f"which is {state}: it fails with lost_worker if that agent does not "
                   "come back", agent=agent)


async def with_pending_reasons(store: Store, jobs: list[dict[str, Any]],
                               stale_after_s: float) -> list[dict[str, Any]]:
    """`jobs` with a `pending_reason` on each queued one (four queries for the lot)."""
    queued = [j for j in jobs if j["status"] == "queued"]
    if not queued:
        return jobs
    tags = sorted({j["tag"] for j in queued})
    workers = await store.workers_for_tags(tags, stale_after_s)
    keys = sorted({j["concurrency_key"] for j in queued if j.get("concurrency_key")})
    load = await store.caps_and_load(keys)
    paused = {p["tag"]: p for p in await store.paused_tags()}
    now = datetime.now(UTC)
    for job in queued:
        job["pending_reason"] = reason_for(job, workers, load, now, paused)
    return jobs


async def with_pending_reason(store: Store, job: dict[str, Any], stale_after_s: float
                              ) -> dict[str, Any]:
    return (await with_pending_reasons(store, [job], stale_after_s))[0]
