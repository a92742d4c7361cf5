"""The autoscale view (GET /api/autoscale, `tagrun autoscale`): per tag and per agent group,
the jobs that want a slot and the agents there are, and how many agents it should have,
`desired_agents`, by the formula of docs/autoscaling.md:

    slots wanted    = (queued_due + running) x target_slots_per_job
    desired_agents  = ceil(slots wanted / slots per agent)
    and, when the oldest due job has waited over max_queue_age_s:
    desired_agents  >= agents that can take jobs now + 1

It is never negative, and 0 when nothing is queued or running: a pool may scale to zero. A
paused tag's jobs are no demand (no agent could run them): its `queued_due` reads 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

from tagrun.server.services.fleet import LIVE_STATES, running_counts
from tagrun.server.store.agents import WorkerRecord
from tagrun.server.store.autoscale import AutoscaleOverview

# The bounds of the inputs (query parameters; the OpenAPI document states the same).
MAX_TARGET_SLOTS_PER_JOB = 1000.0
MAX_QUEUE_AGE_S = 30 * 86400.0
MAX_SLOTS_PER_AGENT = 1000
# Agents that still exist as far as scaling goes; stopped, stale, revoked or refused ones are
# gone (or going) and count nowhere.
PRESENT_STATES = (*LIVE_STATES, "paused", "draining")
# (0.1 + 0.2) x 10 is 3.0000000000000004: a wanted 3 must not become 4 agents.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Inputs:
    """The formula's inputs, as the query parameters give them."""

    target_slots_per_job: float = 1.0  # slots wanted per due or running job
    max_queue_age_s: float | None = None  # None: no queue-age rule
    slots_per_agent: int = 1  # assumed of an agent that does not say (and of agents to come)

    def as_dict(self) -> dict[str, Any]:
        return {"target_slots_per_job": self.target_slots_per_job,
                "max_queue_age_s": self.max_queue_age_s,
                "slots_per_agent": self.slots_per_agent}


def desired_agents(inputs: Inputs, *, due: int, running: int, oldest_s: float | None,
                   can_claim: int, slots_per_agent: float) -> int:
    wanted = (due + running) * inputs.target_slots_per_job
    desired = math.ceil(wanted / slots_per_agent - _EPSILON) if wanted > 0 else 0
    if (inputs.max_queue_age_s is not None and due > 0 and oldest_s is not None
            and oldest_s > inputs.max_queue_age_s):
        desired = max(desired, can_claim + 1)
    return max(desired, 0)


def agent_slots(agent: WorkerRecord, inputs: Inputs) -> int:
    """Its AGENT_SLOTS when it said, else the assumed figure (at least what it runs now)."""
    if agent.slots is not None:
        return agent.slots
    return max(inputs.slots_per_agent, agent.active_count)


def pool_figures(agents: Sequence[WorkerRecord], inputs: Inputs) -> dict[str, Any]:
    """Agents by state, and the slots of those that can take jobs (live or busy)."""
    can = [a for a in agents if a.state in LIVE_STATES]
    slots = [agent_slots(a, inputs) for a in can]
    busy = sum(min(a.active_count, s) for a, s in zip(can, slots, strict=True))
    counted = {state: sum(1 for a in agents if a.state == state) for state in PRESENT_STATES}
    return {
        "agents_live": counted["live"], "agents_busy": counted["busy"],
        "agents_paused": counted["paused"], "agents_draining": counted["draining"],
        "slots_live": sum(slots), "slots_busy": busy, "slots_idle": sum(slots) - busy,
    }


def _with_desire(row: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    can_claim = row["agents_live"] + row["agents_busy"]
    per_agent = row["slots_live"] / can_claim if row["slots_live"] else inputs.slots_per_agent
    row["desired_agents"] = desired_agents(
        inputs, due=row["queued_due"], running=row["running"], oldest_s=row["oldest_queued_s"],
        can_claim=can_claim, slots_per_agent=per_agent)
    return row


def autoscale_view(overview: AutoscaleOverview, inputs: Inputs, *,
                   paused_tags: Set[str] = frozenset(), group: str | None = None,
                   tag: str | None = None) -> dict[str, Any]:
    """`overview` as the store's autoscale_overview gives it; `paused_tags`: the tags paused
    now. `group`, `tag`: only that group (and its tags), only that tag (and the groups
    serving it); a group or tag named is listed even when nothing is known of it, with zeros,
    so that a scaler reading it finds it."""
    agents = [w for w in overview.workers if w.kind == "agent" and w.state in PRESENT_STATES]
    by_tag: dict[str, list[WorkerRecord]] = defaultdict(list)
    by_group: dict[str, list[WorkerRecord]] = defaultdict(list)
    group_tags: dict[str, set[str]] = defaultdict(set)
    for name, tags in overview.group_tags.items():
        group_tags[name].update(tags)
    for a in agents:
        by_group[a.grp].append(a)
        group_tags[a.grp].update(a.tags)
        for t in a.tags:
            by_tag[t].append(a)
    running_by_holder, running_by_tag = running_counts(overview.running)
    tag_names = set(overview.queued) | set(running_by_tag) | set(by_tag)
    tag_names.update(*group_tags.values())
    group_tags, tag_names = _only(group_tags, tag_names, group, tag)
    return {
        "inputs": inputs.as_dict(),
        "groups": [_group_row(g, sorted(ts), overview, paused_tags, running_by_holder,
                              by_group[g], inputs)
                   for g, ts in sorted(group_tags.items())],
        "tags": [_tag_row(t, overview, paused_tags, running_by_tag, by_tag[t], inputs)
                 for t in sorted(tag_names)],
    }


def _only(group_tags: dict[str, set[str]], tag_names: set[str], group: str | None,
          tag: str | None) -> tuple[dict[str, set[str]], set[str]]:
    if group is not None:
        group_tags = {group: group_tags.get(group, set())}
        tag_names = tag_names & group_tags[group]
    if tag is not None:
        tag_names = {tag}
        group_tags = {g: ts for g, ts in group_tags.items() if tag in ts or g == group}
    return group_tags, tag_names


def _tag_row(tag: str, overview: AutoscaleOverview, paused: Set[str],
             running: dict[str, int], agents: Sequence[WorkerRecord], inputs: Inputs
             ) -> dict[str, Any]:
    oldest = None if tag in paused else overview.oldest.get(tag)
    return _with_desire({
        "tag": tag, "queued": overview.queued.get(tag, 0),
        "queued_due": _due(overview, paused, tag), "running": running.get(tag, 0),
        "oldest_queued_s": None if oldest is None else round(oldest, 3),
        "paused": tag in paused,
        **pool_figures(agents, inputs),
    }, inputs)


def _due(overview: AutoscaleOverview, paused: Set[str], tag: str) -> int:
    """Its due jobs, as demand: none while the tag is paused (no agent could run them)."""
    return 0 if tag in paused else int(overview.due.get(tag, 0))


def _group_row(group: str, tags: list[str], overview: AutoscaleOverview, paused: Set[str],
               running_by_holder: dict[str, int], members: Sequence[WorkerRecord],
               inputs: Inputs) -> dict[str, Any]:
    """Its tags' queues (a tag served by several groups counts in each), and the jobs its own
    agents (`members`) run."""
    ages = [overview.oldest[t] for t in tags if t in overview.oldest and t not in paused]
    return _with_desire({
        "group": group, "tags": tags,
        "queued": sum(overview.queued.get(t, 0) for t in tags),
        "queued_due": sum(_due(overview, paused, t) for t in tags),
        "running": sum(running_by_holder.get(a.name, 0) for a in members),
        "oldest_queued_s": round(max(ages), 3) if ages else None,
        **pool_figures(members, inputs),
    }, inputs)
