"""Ephemeral agents and job-limited tokens, as an operator runs them for throwaway VMs and
pods: real `tagrun-agent` processes against a real server. An agent told to exit after N jobs
or S idle seconds, or whose token's max_jobs are all claimed, finishes what it runs, says
goodbye (its state is `stopped`, with the reason) and exits 0."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_cli import failed, ok, run_cli
from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    api_client,
    finished,
)
from tests.ui.test_session import browser_like, sign_in


@pytest.fixture
def server(start_process: Any, database_url: str) -> TagrunProcess:
    # Server mode: no in-process worker, so every job here runs on the agents under test.
    return start_process("server", database_url).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(server: TagrunProcess) -> Any:
    with api_client(server.url) as client:
        yield client


def mint(api: httpx.Client, tag: str, **extra: object) -> dict[str, Any]:
    response = api.post("/api/agent_tokens", json={"group": "pods", "tags": [tag], **extra})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def queue(api: httpx.Client, tag: str, count: int, content: str = "echo done") -> list[int]:
    return [api.post("/api/w/default/jobs", json={"language": "bash", "tag": tag,
                                                  "content": content}).json()["id"]
            for _ in range(count)]


def jobs_of(api: httpx.Client, tag: str) -> list[dict[str, Any]]:
    return api.get("/api/w/default/jobs", params={"tag": tag}).json()["jobs"]  # type: ignore[no-any-return]


def agent_record(api: httpx.Client, name: str) -> dict[str, Any] | None:
    return next((a for a in api.get("/api/workers").json()["agents"] if a["name"] == name),
                None)


def events(agent: AgentProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in agent.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def assert_stopped(api: httpx.Client, agent: AgentProcess, reason: str) -> None:
    """Exited 0, shown `stopped` with `reason` at once, and said why in its own log."""
    assert agent.wait_exit(30) == 0, agent.log_text()[-2000:]
    record = agent_record(api, agent.name)
    assert record is not None
    assert (record["state"], record["stop_reason"]) == ("stopped", reason)
    assert [e["reason"] for e in events(agent, "agent.stopping")] == [reason]


def test_an_agent_exits_after_its_n_jobs_and_leaves_the_rest_queued(
        server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> None:
    tag = f"eph-{uuid.uuid4().hex[:6]}"
    ids = queue(api, tag, 5, "sleep 0.2; echo ran")
    agent = AgentProcess(server.url, mint(api, tag)["token"], tmp_path, name="one-shot",
                         env={"AGENT_EXIT_AFTER_JOBS": "2", "AGENT_SLOTS": "2"})
    try:
        assert_stopped(api, agent, "exit_after_jobs")
        ran = [finished(api, job_id) for job_id in ids[:2]]
        assert [(j["status"], j["worker"]) for j in ran] == [("succeeded", "one-shot")] * 2
        states = sorted(j["status"] for j in jobs_of(api, tag))
        assert states == ["queued"] * 3 + ["succeeded"] * 2
    finally:
        agent.kill()


def test_an_idle_agent_exits_after_its_idle_seconds(
        server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> None:
    tag = f"idle-{uuid.uuid4().hex[:6]}"
    [job_id] = queue(api, tag, 1, "sleep 3; echo ran")  # longer than the idle time
    agent = AgentProcess(server.url, mint(api, tag)["token"], tmp_path, name="scale-to-zero",
                         env={"AGENT_EXIT_AFTER_IDLE_S": "2"})
    try:
        assert_stopped(api, agent, "idle")
        # A running job is not idle time: it ran to its end before the agent left.
        job = finished(api, job_id)
        assert (job["status"], job["worker"]) == ("succeeded", "scale-to-zero")
        [stopping] = events(agent, "agent.stopping")
        assert stopping["running"] == 0
    finally:
        agent.kill()


def test_a_token_with_max_jobs_shared_by_two_agents_runs_that_many_jobs_in_all(
        server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> None:
    tag = f"budget-{uuid.uuid4().hex[:6]}"
    queue(api, tag, 6, "sleep 0.5; echo ran")
    minted = mint(api, tag, max_jobs=3, label="throwaway pods")
    agents = [AgentProcess(server.url, minted["token"], tmp_path, name=f"pod-{n}",
                           env={"AGENT_SLOTS": "2"}) for n in range(2)]
    try:
        for agent in agents:
            assert_stopped(api, agent, "token_spent")
        jobs = jobs_of(api, tag)
        assert sorted(j["status"] for j in jobs) == ["queued"] * 3 + ["succeeded"] * 3
        assert {j["worker"] for j in jobs if j["status"] == "succeeded"} <= {"pod-0", "pod-1"}
        [token] = [t for t in api.get("/api/agent_tokens").json()["agent_tokens"]
                   if t["jti"] == minted["jti"]]
        assert (token["max_jobs"], token["jobs_claimed"]) == (3, 3)
        # Every place that lists tokens says how much of the budget is used.
        listing = ok(run_cli("token", "list", url=server.url)).stdout
        [row] = [line for line in listing.splitlines() if "throwaway pods" in line]
        assert "3 of 3 used" in row
        with browser_like(server) as browser:
            assert sign_in(browser).status_code == 303
            assert "3 of 3 jobs used" in browser.get("/workers").text
        # Another pod started with the spent token says goodbye at its first claim.
        late = AgentProcess(server.url, minted["token"], tmp_path, name="pod-late")
        try:
            assert_stopped(api, late, "token_spent")
        finally:
            late.kill()
        assert sorted(j["status"] for j in jobs_of(api, tag)).count("queued") == 3
    finally:
        for agent in agents:
            agent.kill()


def test_the_cli_mints_a_job_limited_token(server: TagrunProcess, api: httpx.Client) -> None:
    token = ok(run_cli("token", "create", "--tags", "cli-pods", "--group", "pods",
                       "--max-jobs", "1", "--label", "one job", url=server.url)).stdout.strip()
    assert token.count(".") == 2  # a JWT, and nothing else
    [minted] = [t for t in api.get("/api/agent_tokens").json()["agent_tokens"]
                if t["label"] == "one job"]
    assert (minted["max_jobs"], minted["jobs_claimed"]) == (1, 0)
    listing = ok(run_cli("token", "list", url=server.url)).stdout
    assert "0 of 1 used" in next(line for line in listing.splitlines() if "one job" in line)
    for bad in ("0", "-1", "x"):
        message = failed(run_cli("token", "create", "--tags", "a", "--group", "pods",
                                 "--max-jobs", bad, url=server.url))
        assert "--max-jobs" in message, message


@pytest.mark.parametrize(("variable", "value"), [
    ("AGENT_EXIT_AFTER_JOBS", "0"), ("AGENT_EXIT_AFTER_JOBS", "-1"),
    ("AGENT_EXIT_AFTER_JOBS", "x"), ("AGENT_EXIT_AFTER_IDLE_S", "0"),
    ("AGENT_EXIT_AFTER_IDLE_S", "soon"),
])
def test_bad_ephemeral_settings_stop_the_agent_naming_the_variable(
        server: TagrunProcess, api: httpx.Client, tmp_path: Path, variable: str, value: str
) -> None:
    agent = AgentProcess(server.url, mint(api, "bad-settings")["token"], tmp_path,
                         name=f"bad-{uuid.uuid4().hex[:6]}", env={variable: value})
    try:
        assert agent.wait_exit() == 1
        assert f"{variable}={value!r}" in agent.log_text(), agent.log_text()[-2000:]
        assert agent_record(api, agent.name) is None  # it never claimed
    finally:
        agent.kill()
