"""The fleet as the API, the CLI and the Workers page show it: agents and workers, pools
(agents by group) and tags with their queued, running and live-worker counts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tagrun.server.store._base import iso
from tagrun.server.store.agents import RunningCount, WorkerRecord, WorkersOverview
from tagrun.shared.version import older_than

# What an agent or worker is, the same word in the API, the CLI, the UI and the metrics
# (computed by the store's LIST_WORKERS): live (connected, running nothing), busy (running
# jobs), paused (it, or its group, claims nothing new until resumed), draining (asked to
# finish its jobs and stop), stopped (it stopped cleanly and said so), stale (no contact for
# TAGRUN_STALE_AFTER_S), token_revoked (its token was revoked or expired: it can do nothing),
# version_refused (its version is below min_agent_version: it finishes its jobs and exits),
# quarantined (its recent attempts all failed while others' succeeded: services/quarantine.py).
STATES = ("live", "busy", "paused", "draining", "quarantined", "stopped", "stale",
          "token_revoked", "version_refused")
LIVE_STATES = ("live", "busy")  # those that can take jobs


def is_live(agent: dict[str, Any]) -> bool:
    return agent["state"] in LIVE_STATES


def worker_view(w: WorkerRecord, *, recommended: str = "") -> dict[str, Any]:
    """One agent or worker as the API, the CLI and the UI show it (the list and its own
    page alike). `recommended`: the recommended agent version; an agent below it is
    `outdated`."""
    return {
        "name": w.name, "kind": "agent" if w.kind == "agent" else "worker",
        "group": w.grp, "tags": list(w.tags), "active_count": w.active_count,
        "jobs_executed": w.jobs_executed, "connected_at": iso(w.connected_at),
        "last_seen": iso(w.last_seen), "ip": w.ip, "version": w.version,
        "state": w.state, "stale": w.state == "stale",
        "stopped_at": iso(w.stopped_at),
        "stop_reason": w.stop_reason,
        "pause_note": w.pause_note, "paused_by": w.paused_by,
        "paused_until": iso(w.paused_until), "paused_as": w.paused_as,
        "drain_note": w.drain_note,
        "verify": w.verify,
        "os": w.os, "arch": w.arch, "slots": w.slots,
        "outdated": w.kind == "agent" and bool(recommended)
        and older_than(w.version or "", recommended),
        "version_refused_min": w.version_refused_min,
        "quarantine_reason": w.quarantine_reason,
        "quarantined_until": iso(w.quarantined_until),
    }


def running_counts(running: list[RunningCount]) -> tuple[dict[str, int], dict[str, int]]:
    """Jobs running by holder, and by tag."""
    by_holder: dict[str, int] = defaultdict(int)
    by_tag: dict[str, int] = defaultdict(int)
    for row in running:
        by_holder[row.worker] += row.n
        by_tag[row.tag] += row.n
    return by_holder, by_tag


def fleet_view(overview: WorkersOverview, *, waits: dict[str, dict[str, float]] | None = None,
               recommended: str = "") -> dict[str, Any]:
    """`waits`: per tag, the p50 and p95 of recent queue waits (store.recent_waits);
    `recommended`: the recommended agent version; agents below it are `outdated`."""
    running_by_holder, running_by_tag = running_counts(overview.running)
    queued = overview.queued
    agents = [worker_view(w, recommended=recommended) for w in overview.workers]
    pools: dict[str, dict[str, Any]] = {}
    for a in agents:
        if a["kind"] != "agent":
            continue
        pool = pools.setdefault(a["group"], {"group": a["group"], "tags": set(),
                                             "live_agents": 0, "running_now": 0})
        pool["tags"].update(a["tags"])
        pool["live_agents"] += 1 if is_live(a) else 0
        pool["running_now"] += running_by_holder.get(a["name"], 0)
    for pool in pools.values():
        pool["pending_now"] = sum(queued.get(t, 0) for t in pool["tags"])
        pool["tags"] = sorted(pool["tags"])
    live_tags: dict[str, int] = defaultdict(int)
    for a in agents:
        if is_live(a):
            for tag in a["tags"]:
                live_tags[tag] += 1
    oldest = overview.oldest
    waits = waits or {}
    tags = [{"tag": t, "queued": queued.get(t, 0), "running": running_by_tag.get(t, 0),
             "live_workers": live_tags.get(t, 0),
             "oldest_queued_s": _rounded(oldest.get(t)),
             "wait_p50_s": _rounded(waits.get(t, {}).get("p50")),
             "wait_p95_s": _rounded(waits.get(t, {}).get("p95"))}
            for t in sorted(set(queued) | set(running_by_tag) | set(waits))]
    return {"agents": agents, "pools": sorted(pools.values(), key=lambda p: p["group"]),
            "tags": tags}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def agents_page(agents: list[dict[str, Any]], *, state: str | None = None,
                group: str | None = None, tag: str | None = None, name: str | None = None,
                after: str = "", limit: int = 1000,
                ) -> tuple[list[dict[str, Any]], str | None, int]:
    """One page of `agents` by name, after the name `after`, of those matching every filter
    given (`name`: a part of the name). Returns the page, the cursor of the next page (None:
    this is the last) and how many match in all."""
    matched = sorted((a for a in agents
                      if (state is None or a["state"] == state)
                      and (group is None or a["group"] == group)
                      and (tag is None or tag in a["tags"])
                      and (name is None or name in a["name"])), key=lambda a: a["name"])
    rest = [a for a in matched if a["name"] > after] if after else matched
    page = rest[:limit]
    return page, page[-1]["name"] if len(rest) > limit else None, len(matched)


def totals(agents: list[dict[str, Any]]) -> dict[str, int]:
    """How many agents and workers are in each state, and in all."""
    counted = dict.fromkeys(STATES, 0)
    for agent in agents:
        counted[agent["state"]] = counted.get(agent["state"], 0) + 1
    return {"all": len(agents), **counted}
