"""Steering the fleet from the server, tried as an operator would with real agents and
workers: retire an agent version (its agents finish their jobs, are refused new ones, say
why and exit 4; their jobs say why they wait), flag agents below the recommended version,
and pause a tag (its jobs stay queued, saying by whom and why, on agents and direct workers
alike, until resumed by hand or by its timeout)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tagrun.shared.version import __version__
from tests.e2e.test_cli import failed, ok, run_cli
from tests.e2e.test_fleet_states import listed
from tests.e2e.test_pending_reasons import reason, submit
from tests.support.processes import (
    AgentProcess,
    agent_token,
    api_client,
    finished,
    wait_until,
)

SLACK = timedelta(seconds=0.5)  # the database's clock against the server process's


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def held_until(path: Path) -> str:
    """A bash job that runs until `path` exists."""
    return f'while [ ! -f "{path}" ]; do sleep 0.05; done; echo released'


def status(api: httpx.Client, job_id: int) -> str:
    return str(api.get(f"/api/w/default/jobs/{job_id}").json()["status"])


def setting(api: httpx.Client, key: str, value: Any) -> httpx.Response:
    return api.put("/api/settings", json={"key": key, "value": value})


def test_an_agent_below_the_minimum_version_finishes_its_job_and_exits_4(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        token = agent_token(api, ["old"])
        agent = AgentProcess(server.url, token, tmp_path, name="old-1",
                             env={"AGENT_SLOTS": "2"})
        try:
            release = tmp_path / "release"
            running = submit(api, content=held_until(release), tag="old")
            wait_until(lambda: status(api, running) == "running", message="the job to start")
            assert listed(api, "old-1")["os"] == "linux"  # type: ignore[index]
            assert listed(api, "old-1")["slots"] == 2  # type: ignore[index]

            bad = setting(api, "min_agent_version", "banana")
            assert bad.status_code == 400
            assert "min_agent_version" in bad.json()["error"]["message"]
            assert setting(api, "agent_download_url", "https://get.example/agents"
                           ).status_code == 200
            assert setting(api, "min_agent_version", "99.0").status_code == 200

            # Its waiting claim is answered at once and its next one refused: it says so.
            wait_until(lambda: listed(api, "old-1")["state"] == "version_refused",  # type: ignore[index]
                       message="the agent to show version_refused")
            agent.wait_logged("agent.version_refused")
            said = agent.log_text()
            for words in (f"version {__version__}", "minimum 99.0", "https://get.example/agents"):
                assert words in said, words
            table = ok(run_cli("workers", url=server.url)).stdout
            assert "version_refused" in next(line for line in table.splitlines()
                                             if line.startswith("old-1"))

            # Its running job goes on; a new one of its tag says why it waits.
            waiting = submit(api, content="echo", tag="old")
            why = reason(api, waiting)
            assert why["code"] == "agent_version_too_old", why
            assert "old-1" in why["message"] and "99.0" in why["message"]
            assert agent.proc.poll() is None and status(api, running) == "running"

            release.touch()
            assert finished(api, running)["status"] == "succeeded"
            assert agent.wait_exit() == 4
            assert listed(api, "old-1")["state"] == "version_refused"  # type: ignore[index]
            assert status(api, waiting) == "queued"
        finally:
            agent.kill()

        # The minimum lifted, the same agent started again runs the waiting job.
        assert setting(api, "min_agent_version", "").status_code == 200
        again = AgentProcess(server.url, token, tmp_path, name="old-1")
        try:
            assert finished(api, waiting)["status"] == "succeeded"
            assert listed(api, "old-1")["state"] in ("live", "busy")  # type: ignore[index]
        finally:
            again.kill()


def test_agents_below_the_recommended_version_run_and_are_flagged(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        settings = api.get("/api/settings").json()["settings"]
        assert settings["recommended_agent_version"] == __version__
        assert settings["min_agent_version"] == ""
        agent = AgentProcess(server.url, agent_token(api, ["new"]), tmp_path, name="new-1")
        try:
            wait_until(lambda: listed(api, "new-1") is not None, message="the agent to connect")
            assert listed(api, "new-1")["outdated"] is False  # type: ignore[index]
            ok(run_cli("settings", "set", "recommended_agent_version", '"99.1"',
                       url=server.url))
            assert listed(api, "new-1")["outdated"] is True  # type: ignore[index]
            job = submit(api, content="echo still runs", tag="new")
            assert finished(api, job)["status"] == "succeeded"
            shown = ok(run_cli("workers", url=server.url))
            assert "below the recommended version 99.1: new-1" in shown.stderr
        finally:
            agent.kill()


def test_a_paused_tag_keeps_its_jobs_queued_and_says_why_until_resumed(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url).wait_healthy()
    worker = start_process("worker", database_url, env={
        "WORKER_NAME": "direct-1", "WORKER_TAGS": "db"})
    with api_client(server.url) as api:
        wait_until(lambda: listed(api, "direct-1") is not None, message="the worker to start")
        agent = AgentProcess(server.url, agent_token(api, ["db", "web"]), tmp_path,
                             name="both-1")
        try:
            ok(run_cli("workers", "pause", "db", "--tag", "--note", "schema migration",
                       url=server.url))
            assert "--group or --tag" in failed(run_cli(
                "workers", "pause", "db", "--tag", "--group", "--note", "x", url=server.url))
            held = [submit(api, content="echo db", tag="db") for _ in range(3)]
            # Its other tag is served as usual, by the same agent.
            assert finished(api, submit(api, content="echo web", tag="web"))["status"] \
                == "succeeded"
            for job in held:
                why = reason(api, job)
                assert (why["code"], why["scope"], why["by"], why["note"]) == (
                    "paused", "tag", "superadmin", "schema migration"), why
                assert "tag db is paused by superadmin until it is resumed: schema migration" \
                    in why["message"]
            fleet = api.get("/api/workers").json()
            assert [p["tag"] for p in fleet["paused_tags"]] == ["db"]
            assert "tag db paused by superadmin" in ok(run_cli("workers", url=server.url)).stdout
            assert all(status(api, job) == "queued" for job in held)

            ok(run_cli("workers", "resume", "db", "--tag", url=server.url))
            ran_by = {finished(api, job)["worker"] for job in held}
            assert ran_by <= {"both-1", "direct-1"}, ran_by
            assert api.post("/api/tags/db/resume").status_code == 404  # not paused any more
            assert api.post("/api/tags/Not%20A%20Tag/pause",
                            json={"note": "x"}).status_code == 400
            assert api.post("/api/tags/db/pause", json={}).status_code == 400  # a note is required

            # A pause with a timeout ends by itself.
            timed = api.post("/api/tags/db/pause", json={"note": "a short job", "for_s": 2})
            assert timed.status_code == 200, timed.text
            [paused] = api.get("/api/workers").json()["paused_tags"]
            later = submit(api, content="echo later", tag="db")
            done = finished(api, later, timeout=60)
            assert done["status"] == "succeeded"
            assert when(done["started_at"]) >= when(paused["paused_until"]) - SLACK, (
                done, paused)
        finally:
            agent.kill()
    worker.stop()
