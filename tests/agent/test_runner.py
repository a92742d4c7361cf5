from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tenacity import stop_after_attempt, wait_none

from tagrun.agent.client import AgentClient, RetryPolicy
from tagrun.agent.config import AgentConfig, load_config
from tagrun.agent.errors import ConfigError
from tagrun.agent.runner import Agent
from tagrun.shared.loglines import split_lines
from tests.agent.conftest import CapturedLog
from tests.agent.fakes import TOKEN, FakeServer, error, job

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell and signals")
pytestmark = posix_only


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


FAST = RetryPolicy(wait=wait_none(), bounded_stop=stop_after_attempt(3), sleep=_no_sleep)


def make_agent(fake: FakeServer, tmp_path: Path, **overrides: Any) -> Agent:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    settings: dict[str, Any] = {
        "token": TOKEN, "base_url": "http://tagrun.test", "name": "agent-1", "work_dir": work,
        "drain_timeout_s": 10.0, **overrides}
    config = AgentConfig(**settings)
    client = AgentClient(config.base_url, config.token, config.name,
                         transport=fake.transport(), retry=FAST)
    return Agent(config, client)


def run(agent: Agent, **kwargs: Any) -> int:
    async def main() -> int:
        try:
            return await agent.run(handle_signals=kwargs.get("handle_signals", False))
        finally:
            await agent._client.aclose()
    return asyncio.run(main())


def stop_on_claim(agent: Agent, number: int) -> Callable[[int], None]:
    """Stop the agent when it comes back for claim `number` (i.e. it is idle again)."""
    def hook(claims: int) -> None:
        if claims == number:
            agent.request_stop()
    return hook


def when_logged(text: str, action: Callable[[], None]) -> Callable[[int, str], None]:
    seen = [""]

    def hook(job_id: int, data: str) -> None:
        before = text in seen[0]
        seen[0] += data
        if not before and text in seen[0]:
            action()
    return hook


def test_runs_a_bash_job_and_reports_its_result_and_logs(
    tmp_path: Path, agent_log: CapturedLog
) -> None:
    fake = FakeServer(jobs=[job(7, 'echo hello; echo "{\\"answer\\": 42}"', log_offset=5)])
    fake.logs[7] = "01234"  # an earlier attempt's output: this one's must follow it
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.completions[7] == {"name": "agent-1", "attempt": 1, "status": "succeeded",
                                   "result": {"answer": 42}}
    assert fake.logs[7] == '01234hello\n{"answer": 42}\n'
    log_posts = [b for p, b in fake.requests if p == "/api/w/default/agent_workers/jobs/7/logs"]
    assert log_posts[0]["offset"] == 5
    for earlier, later in zip(log_posts, log_posts[1:], strict=False):
        assert later["offset"] == earlier["offset"] + len(earlier["data"])
    assert all(b["name"] == "agent-1" and b["attempt"] == 1 for b in log_posts)
    assert fake.requests[0] == ("/api/agent_workers/claim",
                                {"name": "agent-1", "slots": 1, "wait_s": 25.0, "running": 0})
    assert fake.paths().index("/api/w/default/agent_workers/jobs/7/complete") > \
        max(i for i, p in enumerate(fake.paths()) if p.endswith("/logs"))
    names = agent_log.names()
    for event in ("agent.started", "job.started", "job.completed", "agent.stopped"):
        assert event in names
    assert TOKEN not in agent_log.getvalue()


def test_a_job_outside_the_local_policy_is_given_back_unrun(
    tmp_path: Path, agent_log: CapturedLog
) -> None:
    """A server that ignores the policy the claim states (an older one, or a tampered row)
    still gets nothing run: the job goes back, refused, and later claims exclude it."""
    marker = tmp_path / "ran"
    fake = FakeServer(jobs=[job(8, f"touch {marker}", language="bash", script="f/x/run"),
                            job(9, "echo allowed", language="bash", script="f/deploy/db_up")])
    policy = load_config({"AGENT_TOKEN": TOKEN, "BASE_INTERNAL_URL": "http://127.0.0.1:1",
                          "AGENT_ALLOW_SCRIPTS": "f/deploy/*"}).policy
    agent = make_agent(fake, tmp_path, policy=policy)
    agent._client.policy = policy.wire()
    fake.on_claim = stop_on_claim(agent, 3)

    assert run(agent) == 0

    assert [(r["id"], r["kind"]) for r in fake.refused] == [(8, "policy")]
    assert "matches no AGENT_ALLOW_SCRIPTS glob (f/deploy/*)" in fake.refused[0]["reason"]
    assert not marker.exists() and 8 not in fake.completions
    assert fake.completions[9]["status"] == "succeeded"
    claims = [b for p, b in fake.requests if p == "/api/agent_workers/claim"]
    assert claims[0]["policy"] == {"scripts": ["f/deploy/*"], "inline": False}
    assert "exclude" not in claims[0] and claims[-1]["exclude"] == [8]
    assert "job.policy_refused" in agent_log.names()
    assert "will not run this job (policy)" in fake.logs[8]


def test_runs_a_python_job_with_its_args(tmp_path: Path) -> None:
    content = "def main(x, y=2):\n    print('adding')\n    return {'sum': x + y}\n"
    fake = FakeServer(jobs=[job(1, content, language="python", args={"x": 40})])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.completions[1]["status"] == "succeeded"
    assert fake.completions[1]["result"] == {"sum": 42}
    assert fake.logs[1] == "adding\n"


def test_line_marks_go_only_to_a_server_that_asks_for_them(tmp_path: Path) -> None:
    script = "echo out; echo err >&2; echo again"
    fake = FakeServer(jobs=[job(4, script, log_marks=True), job(5, script)])
    agent = make_agent(fake, tmp_path, slots=2)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    posts = {n: [b for p, b in fake.requests if p.endswith(f"/jobs/{n}/logs")] for n in (4, 5)}
    assert all("marks" not in body for body in posts[5])  # an older server would refuse it
    starts = [(body["offset"] + pos, (ms, code)) for body in posts[4]
              for pos, ms, code in body["marks"]]
    lines, _ = split_lines(fake.logs[4], starts, 0, first=None, ended=True, full=False)
    assert sorted((line["text"], line["stream"]) for line in lines) == [
        ("again", "stdout"), ("err", "stderr"), ("out", "stdout")]
    assert all(ms > 1_600_000_000_000 for _, (ms, _) in starts)


def test_a_retried_attempt_marks_its_logs(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(3, "echo again", attempt=2, log_offset=6)])
    fake.logs[3] = "first\n"
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.logs[3] == "first\n\n--- attempt 2 ---\nagain\n"
    assert fake.completions[3]["attempt"] == 2


def test_a_failing_job_is_reported_failed(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(2, "echo oops; exit 3")])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.completions[2]["status"] == "failed"
    assert fake.completions[2]["error"] == {"kind": "script_error",
                                            "message": "exit code 3: oops"}


def test_slots_run_jobs_side_by_side(tmp_path: Path) -> None:
    # Each job waits for the other to have started: only concurrent runs can both finish.
    a, b = tmp_path / "a", tmp_path / "b"
    fake = FakeServer(jobs=[
        job(1, f"touch {a}; while [ ! -e {b} ]; do sleep 0.02; done; echo one"),
        job(2, f"touch {b}; while [ ! -e {a} ]; do sleep 0.02; done; echo two"),
    ])
    agent = make_agent(fake, tmp_path, slots=2)
    fake.on_complete = lambda job_id, body: agent.request_stop() if len(
        fake.completions) == 2 else None

    assert run(agent) == 0

    assert fake.requests[0][1]["slots"] == 2
    assert {fake.completions[1]["result"], fake.completions[2]["result"]} == {"one", "two"}


def test_a_cancel_from_the_heartbeat_kills_the_job(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(4, "echo started; sleep 60")])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)
    fake.on_logs = when_logged("started", lambda: fake.cancel.add(4))

    assert run(agent) == 0

    assert fake.completions[4]["status"] == "cancelled"
    assert fake.completions[4]["error"]["kind"] == "cancelled"
    beats = [b for p, b in fake.requests if p == "/api/agent_workers/heartbeat"]
    assert beats[0] == {"name": "agent-1", "running": [{"id": 4, "attempt": 1}]}


def test_a_lost_lease_kills_the_job_and_reports_nothing(
    tmp_path: Path, agent_log: CapturedLog
) -> None:
    fake = FakeServer(jobs=[job(5, "echo started; sleep 60")])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)  # back for more: the lost job is gone
    fake.on_logs = when_logged("started", lambda: fake.lost.add(5))

    assert run(agent) == 0

    assert 5 not in fake.completions
    assert not fake.released
    assert "job.abandoned" in agent_log.names()


def test_lease_lost_on_logs_stops_the_job_without_a_result(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(6, "echo started; sleep 60")])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)
    fake.override = lambda path, body: error(409, "lease_lost") if path.endswith("/logs") \
        else None

    assert run(agent) == 0

    assert 6 not in fake.completions


def _claims(fake: FakeServer) -> list[dict[str, Any]]:
    return [body for path, body in fake.requests if path.endswith("/claim")]


def test_outcomes_ride_on_the_claim_their_jobs_free_slots_for(tmp_path: Path) -> None:
    # Jobs with no output: their outcome is ready as their slot frees, so the next claim
    # carries it (one request per job instead of two); it is answered at once.
    fake = FakeServer(jobs=[job(1, "exit 0"), job(2, "exit 3")], accepts_completed=True)
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 4)

    assert run(agent) == 0

    assert not [path for path in fake.paths() if path.endswith("/complete")]
    carried = [[c["id"] for c in body.get("completed", [])] for body in _claims(fake)]
    assert carried == [[], [1], [2], []]
    assert [body["wait_s"] for body in _claims(fake)][1:3] == [0, 0]
    assert fake.completions[1]["status"] == "succeeded"
    assert fake.completions[2]["status"] == "failed"
    assert fake.completions[2]["error"]["message"].startswith("exit code 3")


def test_an_outcome_that_comes_after_the_claim_left_goes_on_its_own(tmp_path: Path) -> None:
    # Job 1's last output is still being sent when its slot frees, so the claim leaves
    # without its outcome and brings job 2, which runs on. Job 1's outcome must go at once on
    # its own, not wait for a claim that comes only when job 2 ends: job 2 ends "early" only
    # if job 1 was reported while it ran (it then finds the file the report makes).
    go = tmp_path / "go"
    logs_of_1 = asyncio.Event()
    fake = FakeServer(jobs=[
        job(1, "echo one"),
        job(2, f"echo started; for i in $(seq 200); do [ -e {go} ] && break; sleep 0.05; done;"
               f" if [ -e {go} ]; then echo early; else echo late; fi"),
    ], accepts_completed=True, hold_logs={1: logs_of_1})
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 3)
    fake.on_logs = lambda job_id, data: logs_of_1.set() if job_id == 2 else None
    fake.on_complete = lambda job_id, body: go.touch() if job_id == 1 else None

    assert run(agent) == 0

    assert fake.completions[1]["result"] == "one"
    assert fake.completions[2]["result"] == "early"


def test_outcomes_go_on_their_own_to_a_server_that_does_not_take_them(
    tmp_path: Path,
) -> None:
    fake = FakeServer(jobs=[job(1, "exit 0"), job(2, "exit 0")])  # an older server
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 3)

    assert run(agent) == 0

    assert all("completed" not in body for body in _claims(fake))
    assert sorted(fake.completions) == [1, 2]


def test_a_refusal_carried_by_a_claim_reaches_only_its_job(
    tmp_path: Path, agent_log: CapturedLog,
) -> None:
    fake = FakeServer(jobs=[job(8, "exit 0")], accepts_completed=True)
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 3)
    fake.override = lambda path, body: error(409, "lease_lost") if path.endswith(
        "/jobs/8/complete") else None

    assert run(agent) == 0

    assert [c["id"] for c in _claims(fake)[1]["completed"]] == [8]
    assert "job.lease_lost" in agent_log.names()
    assert 8 not in fake.completions


def test_a_claim_refused_for_the_outcomes_it_carries_is_sent_again_without_them(
    tmp_path: Path, agent_log: CapturedLog,
) -> None:
    fake = FakeServer(jobs=[job(1, "exit 0"), job(2, "exit 0")], accepts_completed=True)
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 3)  # the refused claims never reach the fake's count
    fake.override = lambda path, body: error(413, "too_large", "over the body limit") if (
        path.endswith("/claim") and body.get("completed")) else None

    assert run(agent) == 0  # the refused claim does not stop the agent

    assert sorted(fake.completions) == [1, 2]  # each outcome sent on its own
    assert "/api/w/default/agent_workers/jobs/1/complete" in fake.paths()
    assert "agent.claim_refused_outcomes" in agent_log.names()


def test_lease_lost_on_completion_is_dropped(tmp_path: Path, agent_log: CapturedLog) -> None:
    fake = FakeServer(jobs=[job(8, "echo done")])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)
    fake.override = lambda path, body: error(409, "lease_lost") if path.endswith("/complete") \
        else None

    assert run(agent) == 0

    assert "job.lease_lost" in agent_log.names()


def test_a_refused_result_is_reported_as_a_failure(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(9, "echo done")])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)

    def too_large(path: str, body: dict[str, Any]) -> httpx.Response | None:
        if path.endswith("/complete") and body["status"] == "succeeded":
            return error(413, "too_large", "body over 1048576 bytes")
        return None
    fake.override = too_large

    assert run(agent) == 0

    assert fake.completions[9]["status"] == "failed"
    assert fake.completions[9]["error"]["kind"] == "internal"
    assert "too_large" in fake.completions[9]["error"]["message"]


def test_token_refused_on_claim_exits_3(tmp_path: Path, agent_log: CapturedLog) -> None:
    fake = FakeServer(jobs=[job(1, "echo hi")])
    fake.override = lambda path, body: error(401, "unauthorized", "token revoked")
    agent = make_agent(fake, tmp_path)

    assert run(agent) == 3

    assert fake.paths() == ["/api/agent_workers/claim"]  # not retried
    refused = [e for e in agent_log.events() if e["event"] == "agent.token_refused"]
    assert refused and refused[0]["detail"] == "the server refused the agent token: token revoked"
    assert TOKEN not in agent_log.getvalue()


def test_token_refused_while_a_job_runs_kills_it_and_exits_3(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(1, "echo started; sleep 60")])
    refuse = [False]
    fake.on_logs = when_logged("started", lambda: refuse.__setitem__(0, True))
    fake.override = lambda path, body: error(401, "unauthorized") if refuse[0] and \
        path.endswith("/heartbeat") else None
    agent = make_agent(fake, tmp_path)

    assert run(agent) == 3

    assert 1 not in fake.completions


def test_stop_lets_a_running_job_finish_then_claims_no_more(
    tmp_path: Path, agent_log: CapturedLog
) -> None:
    go = tmp_path / "go"
    fake = FakeServer(jobs=[job(1, f"echo started; while [ ! -e {go} ]; do sleep 0.02; done; "
                                   "echo finished")])
    agent = make_agent(fake, tmp_path)

    def stop_then_let_it_finish() -> None:
        agent.request_stop()
        go.touch()
    fake.on_logs = when_logged("started", stop_then_let_it_finish)

    assert run(agent) == 0

    assert fake.completions[1]["status"] == "succeeded"
    assert fake.completions[1]["result"] == "finished"
    assert fake.claims == 1
    assert not fake.released
    assert "agent.draining" in agent_log.names()


def test_drain_timeout_kills_and_releases_the_job(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(1, "echo started; sleep 60", attempt=2)])
    agent = make_agent(fake, tmp_path, drain_timeout_s=0.2)
    fake.on_logs = when_logged("started", agent.request_stop)

    assert run(agent) == 0

    assert 1 not in fake.completions
    assert fake.released == [{"id": 1, "attempt": 2}]
    assert fake.requests[-2:] == [
        ("/api/agent_workers/release", {"name": "agent-1", "jobs": [{"id": 1, "attempt": 2}]}),
        ("/api/agent_workers/goodbye", {"name": "agent-1", "reason": "stopped"}),  # its last
    ]
    assert fake.claims == 1


def test_a_second_stop_exits_at_once(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(1, "echo started; sleep 60")])
    agent = make_agent(fake, tmp_path, drain_timeout_s=60.0)

    def twice() -> None:
        agent.request_stop()
        agent.request_stop()
    fake.on_logs = when_logged("started", twice)

    assert run(agent) == 130

    assert 1 not in fake.completions
    assert "/api/agent_workers/goodbye" not in fake.paths()  # not a clean stop


def test_sigterm_stops_the_agent(tmp_path: Path) -> None:
    fake = FakeServer()
    agent = make_agent(fake, tmp_path)
    fake.on_claim = lambda n: os.kill(os.getpid(), signal.SIGTERM)

    assert run(agent, handle_signals=True) == 0

    assert fake.claims == 1


def test_a_failing_init_script_exits_1_with_its_output(
    tmp_path: Path, agent_log: CapturedLog
) -> None:
    fake = FakeServer(jobs=[job(1, "echo hi")])
    agent = make_agent(fake, tmp_path, init_script="echo preparing; echo broken >&2; exit 4")

    assert run(agent) == 1

    assert fake.requests == []
    failed = [e for e in agent_log.events() if e["event"] == "agent.init_script_failed"]
    assert failed[0]["output"] == "preparing\nbroken\n"
    assert "exit code 4" in failed[0]["error"]


def test_the_init_script_runs_before_the_first_claim(tmp_path: Path) -> None:
    marker = tmp_path / "initialised"
    fake = FakeServer(jobs=[job(1, f"cat {marker}")])
    agent = make_agent(fake, tmp_path, init_script=f"echo ready > {marker}")
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.completions[1]["result"] == "ready"


def test_jobs_cannot_read_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent_log: CapturedLog
) -> None:
    monkeypatch.setenv("AGENT_TOKEN", TOKEN)
    fake = FakeServer(jobs=[job(1, 'echo "token=${AGENT_TOKEN:-unset}"')])
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.completions[1]["result"] == "token=unset"
    assert TOKEN not in fake.logs[1] and TOKEN not in agent_log.getvalue()


def test_claims_keep_retrying_through_server_errors(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(1, "echo ok")])
    failures = iter([httpx.ConnectError("refused"), error(503, "unavailable"), None])

    def flaky(path: str, body: dict[str, Any]) -> httpx.Response | None:
        if path.endswith("/claim") and fake.claims == 0:
            failure = next(failures)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return None
    fake.override = flaky
    agent = make_agent(fake, tmp_path)
    fake.on_claim = stop_on_claim(agent, 2)

    assert run(agent) == 0

    assert fake.completions[1]["result"] == "ok"


def test_a_server_refusing_claims_exits_1(tmp_path: Path, agent_log: CapturedLog) -> None:
    fake = FakeServer()
    fake.override = lambda path, body: error(404, "not_found", "no such route")
    agent = make_agent(fake, tmp_path)

    assert run(agent) == 1

    failed = [e for e in agent_log.events() if e["event"] == "agent.failed"]
    assert "404 not_found" in failed[0]["error"]


def test_a_stop_during_the_init_script_ends_it(tmp_path: Path) -> None:
    fake = FakeServer()
    # The script signals the agent (its parent: this test process) and then takes its time.
    agent = make_agent(fake, tmp_path, init_script="kill -TERM $PPID; sleep 60")

    assert run(agent, handle_signals=True) == 0

    assert fake.requests == []


def test_an_ephemeral_agent_runs_n_jobs_to_their_end_then_says_goodbye(tmp_path: Path) -> None:
    fake = FakeServer(jobs=[job(1, "sleep 0.3; echo one"), job(2, "echo two"),
                            job(3, "echo three")])
    agent = make_agent(fake, tmp_path, slots=4, exit_after_jobs=2, drain_timeout_s=0.05)

    assert run(agent) == 0

    assert sorted(fake.completions) == [1, 2]  # both ran to the end (no drain kill)
    assert [j["id"] for j in fake.jobs] == [3]  # the third was never claimed
    claims = [body for path, body in fake.requests if path.endswith("/claim")]
    assert claims and all(c.get("slots", 1) <= 2 for c in claims)
    assert fake.requests[-1] == ("/api/agent_workers/goodbye",
                                 {"name": "agent-1", "reason": "exit_after_jobs"})
    assert fake.released == []


def test_an_idle_ephemeral_agent_exits_after_its_idle_time(tmp_path: Path) -> None:
    fake = FakeServer()
    agent = make_agent(fake, tmp_path, exit_after_idle_s=1.0, poll_wait_s=25.0)

    assert run(agent) == 0

    claims = [body for path, body in fake.requests if path.endswith("/claim")]
    assert claims and all(c["wait_s"] <= 1.0 for c in claims)  # it did not wait 25 s
    assert fake.requests[-1] == ("/api/agent_workers/goodbye",
                                 {"name": "agent-1", "reason": "idle"})


def test_ephemeral_settings_are_checked_and_named(tmp_path: Path) -> None:
    base = {"AGENT_TOKEN": TOKEN, "BASE_INTERNAL_URL": "http://127.0.0.1:1"}
    config = load_config({**base, "AGENT_EXIT_AFTER_JOBS": "1", "AGENT_EXIT_AFTER_IDLE_S": "30"})
    assert (config.exit_after_jobs, config.exit_after_idle_s) == (1, 30.0)
    assert (load_config(base).exit_after_jobs, load_config(base).exit_after_idle_s) == (None,
                                                                                       None)
    for name, bad in (("AGENT_EXIT_AFTER_JOBS", "0"), ("AGENT_EXIT_AFTER_JOBS", "two"),
                      ("AGENT_EXIT_AFTER_IDLE_S", "0.5")):
        with pytest.raises(ConfigError, match=name):
            load_config({**base, name: bad})


def test_the_agent_says_once_who_the_server_takes_it_for(
        tmp_path: Path, agent_log: CapturedLog) -> None:
    fake = FakeServer(jobs=[job(1, "echo one"), job(2, "echo two")])
    agent = make_agent(fake, tmp_path, exit_after_jobs=2)

    assert run(agent) == 0

    [connected] = [e for e in agent_log.events() if e["event"] == "agent.connected"]
    assert (connected["agent"], connected["group"], connected["tags"],
            connected["server_version"]) == ("agent-1", "edge", ["bash"], "9.9.9")
    assert fake.claims >= 1
