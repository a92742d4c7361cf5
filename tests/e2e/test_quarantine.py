"""Quarantine, tried as an operator would: of two agents of one tag, the one whose machine
lacks a tool fails every job, across scripts, while the other succeeds; it is taken out of
the rotation (state `quarantined` with the reason, everywhere), the other keeps working, and
an operator's resume brings it back. An outage every agent shares quarantines nobody."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_cli import ok, run_cli
from tests.e2e.test_fleet_states import listed
from tests.e2e.test_pending_reasons import submit
from tests.support.processes import (
    AgentProcess,
    agent_token,
    api_client,
    finished,
    wait_until,
)

JOBS_AT_MOST = 60  # a bound on the jobs the test submits before giving up


def tool_dir(tmp_path: Path) -> Path:
    """A directory holding `mytool`, which only the healthy agent has on its PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mytool"
    tool.write_text("#!/bin/sh\necho \"mytool $*\"\n")
    tool.chmod(0o755)
    return bin_dir


def state(api: httpx.Client, name: str) -> str:
    agent = listed(api, name)
    return str(agent["state"]) if agent else "absent"


def run_until(api: httpx.Client, done: Any, tag: str, message: str) -> list[int]:
    """Submit jobs of two scripts, two at a time, until `done()`; their ids. The order of
    the two turns each time: two idle agents can take turns at jobs in lockstep (each
    submit goes to the claim waiting idle), and in a fixed order each would only ever get
    one of the scripts, which the quarantine rule (two scripts or more) never counts."""
    ids: list[int] = []
    while not done():
        assert len(ids) < JOBS_AT_MOST, f"{message}: not after {len(ids)} jobs"
        scripts = ("build", "test") if len(ids) % 4 == 0 else ("test", "build")
        batch = [submit(api, tag=tag, content=f"mytool {script}", max_attempts=1)
                 for script in scripts]
        for job in batch:
            finished(api, job)
        ids += batch
    return ids


def test_an_agent_that_fails_everything_is_quarantined_while_others_work(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url, env={
        "TAGRUN_QUARANTINE_AFTER": "3", "TAGRUN_QUARANTINE_FOR_S": "0"}).wait_healthy()
    path = f"{tool_dir(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    with api_client(server.url) as api:
        token = agent_token(api, ["q"])
        good = AgentProcess(server.url, token, tmp_path, name="good-1", env={"PATH": path})
        bad = AgentProcess(server.url, agent_token(api, ["q"]), tmp_path, name="bad-1")
        try:
            wait_until(lambda: state(api, "good-1") == "live" and state(api, "bad-1") == "live",
                       message="both agents to connect")
            ids = run_until(api, lambda: state(api, "bad-1") == "quarantined", "q",
                            "bad-1 to be quarantined")
            outcomes = [finished(api, job) for job in ids]
            assert any(o["worker"] == "bad-1" and o["status"] == "failed" for o in outcomes)
            assert all(o["status"] == "succeeded" for o in outcomes if o["worker"] == "good-1")

            found = listed(api, "bad-1")
            assert found is not None
            # At least 3 (the rule's K), across two scripts: more when the first ones were of
            # one script alone.
            assert re.search(r"its last ([3-9]|\d\d+) attempts all failed, across 2 or more "
                             r"scripts, while other agents of its tags succeeded",
                             found["quarantine_reason"]), found
            assert found["quarantined_until"] is None  # until an operator resumes it
            assert api.get("/api/workers", params={"state": "quarantined"}).json()[
                "totals"]["quarantined"] == 1
            row = next(line for line in ok(run_cli("workers", url=server.url)).stdout
                       .splitlines() if line.startswith("bad-1"))
            assert "quarantined" in row.split()
            bad.wait_logged("agent.quarantined")
            history = api.get("/api/workers/bad-1").json()["history"]
            assert history[0]["what"] == "quarantined", history

            # The rest of the queue goes to the healthy agent only.
            after = [submit(api, tag="q", content="mytool deploy", max_attempts=1)
                     for _ in range(4)]
            assert {finished(api, job)["worker"] for job in after} == {"good-1"}
            assert {finished(api, job)["status"] for job in after} == {"succeeded"}

            ok(run_cli("workers", "resume", "bad-1", url=server.url))
            wait_until(lambda: state(api, "bad-1") == "live", message="bad-1 to be resumed")
            assert listed(api, "bad-1")["quarantine_reason"] is None  # type: ignore[index]
            bad.wait_logged("agent.resumed")
        finally:
            good.kill()
            bad.kill()


def test_a_quarantine_ends_by_itself_after_its_time(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url, env={
        "TAGRUN_QUARANTINE_AFTER": "2", "TAGRUN_QUARANTINE_FOR_S": "3"}).wait_healthy()
    path = f"{tool_dir(tmp_path)}{os.pathsep}{os.environ['PATH']}"
    with api_client(server.url) as api:
        good = AgentProcess(server.url, agent_token(api, ["q"]), tmp_path, name="good-1",
                            env={"PATH": path})
        bad = AgentProcess(server.url, agent_token(api, ["q"]), tmp_path, name="bad-1")
        try:
            wait_until(lambda: state(api, "good-1") == "live" and state(api, "bad-1") == "live",
                       message="both agents to connect")
            run_until(api, lambda: state(api, "bad-1") == "quarantined", "q",
                      "bad-1 to be quarantined")
            until = listed(api, "bad-1")["quarantined_until"]  # type: ignore[index]
            assert until is not None
            wait_until(lambda: state(api, "bad-1") == "live", timeout=30,
                       message="the quarantine to end by itself")
            # It gets leases again: a job any machine can run reaches it (good-1 takes some).
            def ran_on_bad() -> bool:
                job = submit(api, tag="q", content="echo ok", max_attempts=1)
                return bool(finished(api, job)["worker"] == "bad-1")
            wait_until(ran_on_bad, timeout=60, interval=0.2,
                       message="bad-1 to run a job again")
        finally:
            good.kill()
            bad.kill()


def test_an_outage_every_agent_shares_quarantines_nobody(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url, env={
        "TAGRUN_QUARANTINE_AFTER": "2"}).wait_healthy()
    with api_client(server.url) as api:
        agents = [AgentProcess(server.url, agent_token(api, ["down"]), tmp_path, name=name)
                  for name in ("down-1", "down-2")]
        try:
            wait_until(lambda: state(api, "down-1") == "live" and state(api, "down-2") == "live",
                       message="both agents to connect")
            jobs = [submit(api, tag="down", content=f"mytool {n}", max_attempts=1)
                    for n in range(8)]
            assert {finished(api, job)["status"] for job in jobs} == {"failed"}
            assert {state(api, "down-1"), state(api, "down-2")} <= {"live", "busy"}
        finally:
            for agent in agents:
                agent.kill()
