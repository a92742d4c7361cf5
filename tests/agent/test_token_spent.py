"""A claim answer that says the token's max_jobs are all claimed (`spent`): the agent runs
the jobs it holds to their end, claims nothing more, says goodbye and exits 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.agent.conftest import CapturedLog
from tests.agent.fakes import FakeServer, job
from tests.agent.test_runner import make_agent, run


def test_an_agent_whose_token_is_spent_finishes_its_jobs_and_says_goodbye(
        tmp_path: Path, agent_log: CapturedLog) -> None:
    fake = FakeServer()
    last = [job(1, "sleep 0.3; echo one"), job(2, "echo two")]

    def spent(path: str, body: dict[str, Any]) -> httpx.Response | None:
        if not path.endswith("/claim"):
            return None
        handed, last[:] = last[:], []
        return httpx.Response(200, json={"jobs": handed, "spent": True})

    fake.override = spent
    agent = make_agent(fake, tmp_path, slots=4, drain_timeout_s=0.05)

    assert run(agent) == 0

    assert sorted(fake.completions) == [1, 2]  # both ran to their end (no drain kill)
    assert fake.released == []
    assert [p for p in fake.paths() if p.endswith("/claim")] == ["/api/agent_workers/claim"]
    assert fake.requests[-1] == ("/api/agent_workers/goodbye",
                                 {"name": "agent-1", "reason": "token_spent"})
    [stopping] = [e for e in agent_log.events() if e["event"] == "agent.stopping"]
    assert stopping["reason"] == "token_spent"


def test_an_answer_without_spent_from_an_older_server_changes_nothing(
        tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(1, "echo one")])
    agent = make_agent(fake, tmp_path, exit_after_jobs=1)

    assert run(agent) == 0

    assert fake.requests[-1] == ("/api/agent_workers/goodbye",
                                 {"name": "agent-1", "reason": "exit_after_jobs"})
