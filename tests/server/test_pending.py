"""Why a queued job waits, decided from the workers of its tag and the caps' load: every code,
in the order it is checked (server/services/pending.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tagrun.server.services.pending import reason_for
from tagrun.server.store.agents import WorkerRecord

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
IDLE = {"total_cap": 0, "inline_cap": 0, "running": 0, "running_inline": 0, "by_key": {}}


def job(**fields: Any) -> dict[str, Any]:
    return {"tag": "t", "run_at": "2026-12-06T11:59:00Z", "attempts": [], "refusals": [],
            "script": None, "concurrency_key": None, "concurrency_limit": None, **fields}


def worker(name: str, state: str = "live", **fields: Any) -> WorkerRecord:
    """An agent of tag t, unless `fields` say otherwise; what none of them says is None."""
    blank = dict.fromkeys(WorkerRecord.__struct_fields__)
    given = {"name": name, "state": state, "tags": ["t"], "kind": "agent", **fields}
    return WorkerRecord(**{**blank, **given, "tags": tuple(given["tags"])})


def code(j: dict[str, Any], workers: list[WorkerRecord], load: dict[str, Any] = IDLE
         ) -> tuple[str, str]:
    found = reason_for(j, workers, load, NOW)
    return found["code"], found["message"]


def test_each_reason() -> None:
    later = (NOW + timedelta(minutes=5)).isoformat()
    assert code(job(run_at=later), [worker("a")])[0] == "delayed"
    failed = job(run_at=later, attempts=[{"attempt": 2, "error": {"kind": "timeout"}}])
    assert code(failed, [worker("a")]) == (
        "retry_backoff", f"attempt 2 failed (timeout); the next one is due at {later}")
    assert code(job(), []) == ("no_live_worker", "no live worker serves tag t: it waits "
                               "until an agent or worker of that tag connects")
    gone = [worker("a", "stale"), worker("b", "token_revoked"), worker("x", tags=["other"])]
    assert "(a, b: stale, token_revoked)" in code(job(), gone)[1]
    paused = [worker("a", "paused", paused_by="ops", pause_note="disk swap"),
              worker("b", "draining")]
    assert code(job(), paused) == ("paused", "every live worker of tag t is paused, draining "
                                   "or quarantined (a paused by ops: disk swap; b draining)")
    sick = [worker("a", "quarantined", quarantine_reason="its last 5 attempts all failed")]
    assert code(job(), sick)[1].endswith("(a quarantined: its last 5 attempts all failed)")
    old = [worker("a", "version_refused", version_refused_min="2.0")]
    assert code(job(), old) == ("agent_version_too_old", "no live worker serves tag t: its "
                                "agents (a) run a version below the server's minimum 2.0 and "
                                "were refused; upgrade them")
    held = {"t": {"tag": "t", "paused_by": "ops", "note": "migration", "paused_until": None}}
    found = reason_for(job(), [worker("a")], IDLE, NOW, held)
    assert (found["code"], found["scope"], found["message"]) == (
        "paused", "tag", "tag t is paused by ops until it is resumed: migration")
    pinned = reason_for(job(pinned_to="a"), [worker("a", "busy"), worker("b")], IDLE, NOW)
    assert (pinned["code"], pinned["agent"]) == ("pinned", "a")
    assert "runs only on agent a (busy)" in pinned["message"]
    gone = reason_for(job(pinned_to="z"), [worker("a")], IDLE, NOW)
    assert "which is gone: it fails with lost_worker" in gone["message"]
    refused = job(refusals=[{"worker": "a", "kind": "hook", "reason": "freeze"}])
    assert code(refused, [worker("a"), worker("b", "stale")])[0] == "refused_by_agents"
    assert code(refused, [worker("a"), worker("b")])[0] == "claimable"  # b may take it
    capped = {**IDLE, "total_cap": 2, "running": 2}
    assert code(job(), [worker("a")], capped) == (
        "cap", "task_max_concurrent=2 is reached (2 running)")
    keyed = {**IDLE, "by_key": {"default/f/x": 1, "schedule:default/n": 1}}
    script = job(script="f/x", concurrency_key="default/f/x", concurrency_limit=1)
    assert code(script, [worker("a")], keyed) == (
        "cap", "script f/x runs at most 1 at a time (1 running)")
    scheduled = job(concurrency_key="schedule:default/n", concurrency_limit=1)
    assert code(scheduled, [worker("a")], keyed)[0] == "cap"
    inline = {**IDLE, "inline_cap": 1, "running_inline": 1}
    assert code(job(), [worker("s", kind="inline")], inline)[0] == "cap"
    assert code(job(), [worker("a")], inline)[0] == "claimable"  # an agent is not capped so
    busy = [worker(f"w{i}", "busy") for i in range(7)]
    assert code(job(), busy) == ("all_busy", "all 7 live workers of tag t are running jobs "
                                 "(w0, w1, w2, w3, w4 and 2 more)")
    assert code(job(), [worker("a", "busy"), worker("b")]) == (
        "claimable", "a live worker of tag t is free: it starts in a moment")
