"""One agent (or worker) as its page and `GET /api/workers/{name}` show it: its record as the
fleet view has it, its token, the jobs it runs now and ran last, and its state history."""

from __future__ import annotations

from typing import Any

from tagrun.server.services import settings
from tagrun.server.services.fleet import worker_view
from tagrun.server.store import RECOMMENDED_AGENT_VERSION, Store

MAX_NAME_LENGTH = 200  # longer than any agent or worker name


async def agent_detail(store: Store, name: str, stale_after_s: float, *,
                       workspace: str | None = None) -> dict[str, Any] | None:
    """None if there is no record of `name`. `workspace`: count and list only that
    workspace's jobs (a workspace token's view)."""
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        return None
    record = await store.worker_record(name, stale_after_s)
    if record is None:
        return None
    # The same view as the list's.
    recommended = str((await settings.current(store))[RECOMMENDED_AGENT_VERSION])
    agent = worker_view(record, recommended=recommended)
    label = await store.worker_token_label(name)
    running, recent = await store.worker_jobs(name, workspace)
    return {**agent, "jti": record.jti, "token_label": label,
            "token_problem": record.token_problem,
            "current_jobs": running, "recent_jobs": recent,
            "history": await store.worker_history(name, record.grp)}


def busy_slots(agent: dict[str, Any]) -> str:
    """How much of it is in use, as people read it: "2 of 8 busy" (or "2 busy" when the agent
    does not say how many slots it has)."""
    slots = agent.get("slots")
    busy = agent["active_count"]
    return f"{busy} of {slots} busy" if slots is not None else f"{busy} busy"


def platform(agent: dict[str, Any]) -> str | None:
    """"linux/x86_64", or what part of it the agent said; None if it said neither."""
    parts = [agent.get("os"), agent.get("arch")]
    if not any(parts):
        return None
    return "/".join(p or "?" for p in parts)
