"""Quarantine: an agent that fails everything stops getting leases (docs/fleet.md).

The rule, checked when an agent reports a failed attempt: its last K attempts
(TAGRUN_QUARANTINE_AFTER, default 5; 0 turns the rule off) all failed, across at least two
different scripts (so one broken script does not take out the agents that run it), while
other agents of its tags succeeded since the first of those failures (so an outage of
something every agent needs does not take out the whole fleet). Then the agent is
quarantined: its claims wait without jobs, as if paused, its state is `quarantined` with the
reason, and `agent.quarantined` is logged. It ends when an operator resumes the agent
(`tagrun workers resume NAME`) or after TAGRUN_QUARANTINE_FOR_S (default 3600; 0: until
resumed). An agent whose quarantine timed out and fails again is quarantined again at once.

The run of failures is kept on the agent's record by the statement that records each
outcome (store/completions.py COMPLETE_JOBS), so the rule costs no query until a run is long
enough; then one indexed query asks whether others succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tagrun.server.config import ServerConfig
from tagrun.server.store import DATABASE_ERRORS, Store
from tagrun.server.store._base import iso

log = logging.getLogger("tagrun.fleet")
RULE = "quarantine rule"  # who quarantined it, in its history


async def quarantine_if_failing(store: Store, config: ServerConfig, name: str,
                                tags: Sequence[str], recorded: dict[str, Any]) -> bool:
    """After agent `name` (serving `tags`) reported a failed attempt (`recorded`: what the
    store returned): quarantine it if the rule says so. True if it did."""
    after = config.quarantine_after
    streak, scripts, since = (recorded.get("fail_streak") or 0, recorded.get("fail_scripts")
                              or 0, recorded.get("fail_since"))
    if not after or streak < after or scripts < 2 or since is None:
        return False
    try:
        if not await store.others_succeeded(name, tags, since):
            return False
        reason = (f"its last {streak} attempts all failed, across {scripts} or more scripts, "
                  "while other agents of its tags succeeded")
        done, until = await store.quarantine_agent(name, config.quarantine_for_s or None,
                                                   reason)
        if not done:
            return False
        await store.record_worker_event(name, "quarantined", reason, RULE, until)
    except DATABASE_ERRORS as exc:  # the next failure looks again
        log.warning("fleet.quarantine_failed", extra={"agent": name, "error": str(exc)})
        return False
    log.warning("agent.quarantined", extra={"agent": name, "failed_attempts": streak,
                                            "since": iso(since), "until": iso(until),
                                            "reason": reason})
    return True
