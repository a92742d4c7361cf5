"""An agent's local policy and pre-job hook, with real agents: the server never leases an
agent a job outside its AGENT_ALLOW_* policy (another agent runs it); a hook that says no
gives the job back without using an attempt, the server leases it to that agent no more, the
job says who refused it and why, and another agent runs it. The hook reads the job's
metadata, never a secret's value."""

from __future__ import annotations

import contextlib
import json
import stat
from pathlib import Path
from typing import Any

import httpx

from tagrun.server.vault import new_key
from tests.e2e.test_job_secrets import signed_in
from tests.support.processes import (
    SUPERADMIN,
    AgentProcess,
    agent_token,
    api_client,
    finished,
    wait_until,
)


def job(api: httpx.Client, job_id: int) -> dict[str, Any]:
    answer: dict[str, Any] = api.get(f"/api/w/default/jobs/{job_id}").json()
    return answer


def submit(api: httpx.Client, body: dict[str, Any]) -> int:
    answer = api.post("/api/w/default/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_the_server_leases_an_agent_only_what_its_policy_allows(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    server = start_process("server", database_url, env={
        "TAGRUN_LOG_FORMAT": "json"}).wait_healthy()
    with api_client(server.url) as api:
        for path in ("f/deploy/db_backup", "f/other/x"):
            assert api.post("/api/w/default/scripts", json={
                "path": path, "language": "bash", "content": "echo script"}).status_code == 201
        token = agent_token(api, ["mixed"])
        strict = AgentProcess(server.url, token, tmp_path, name="bash-only", env={
            "AGENT_ALLOW_LANGUAGES": "bash", "AGENT_ALLOW_SCRIPTS": "f/deploy/*",
            "AGENT_ALLOW_WORKSPACES": "default", "TAGRUN_LOG_FORMAT": "json"})
        try:
            strict.wait_logged("agent.started")
            allowed = submit(api, {"script": "f/deploy/db_backup", "tag": "mixed"})
            python = submit(api, {"language": "python", "tag": "mixed",
                                  "content": "def main():\n    return 'py'\n"})
            other_script = submit(api, {"script": "f/other/x", "tag": "mixed"})
            inline = submit(api, {"language": "bash", "content": "echo inline",
                                  "tag": "mixed"})
            assert finished(api, allowed)["worker"] == "bash-only"
            # The rest stay queued, never leased to it: no attempt, no refusal.
            strict.wait_logged("agent.claimed")
            for job_id in (python, other_script, inline):
                view = job(api, job_id)
                assert (view["status"], view["attempt"], view["refusals"]) == \
                    ("queued", 0, []), view
            assert '"job.policy_refused"' not in strict.log_text()
            free = AgentProcess(server.url, token, tmp_path, name="anything",
                                env={"TAGRUN_LOG_FORMAT": "json"})
            try:
                for job_id in (python, other_script, inline):
                    view = finished(api, job_id)
                    assert (view["status"], view["worker"], view["attempt"], view["refusals"]) \
                        == ("succeeded", "anything", 1, []), view
            finally:
                free.kill()
        finally:
            strict.kill()
    started = next(json.loads(line) for line in strict.log_text().splitlines()
                   if '"agent.started"' in line)
    assert started["allow_languages"] == ["bash"] and started["allow_inline"] is False


HOOK = """#!/bin/sh
# Refuses jobs whose args ask for it; keeps what it was given, for the test to read.
input=$(cat)
printf '%s\\n' "$input" >> "{seen}"
case "$input" in
  *'"deny": true'*) echo "change freeze until Monday"; echo "second line"; exit 3 ;;
esac
exit 0
"""


def test_a_refusing_hook_sends_the_job_to_another_agent_without_using_an_attempt(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    seen = tmp_path / "hook-input.jsonl"
    hook = tmp_path / "pre-job-hook.sh"
    hook.write_text(HOOK.format(seen=seen))
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    server = start_process("server", database_url, env={
        "TAGRUN_SECRETS_KEY": new_key(), "TAGRUN_LOG_FORMAT": "json"}).wait_healthy()
    with api_client(server.url) as api:
        assert api.put("/api/w/default/secrets/DB_PASSWORD",
                       json={"value": "hook-must-not-see-this"}).status_code == 201
        token = agent_token(api, ["hooked"])
        guarded = AgentProcess(server.url, token, tmp_path, name="guarded", env={
            "AGENT_PRE_JOB_HOOK": str(hook), "TAGRUN_LOG_FORMAT": "json"})
        other = None
        try:
            guarded.wait_logged("agent.started")
            passed = submit(api, {"language": "bash", "content": "echo fine", "tag": "hooked",
                                  "args": {"deny": False}, "secrets": ["DB_PASSWORD"]})
            assert finished(api, passed)["worker"] == "guarded"
            denied = submit(api, {"language": "bash", "content": "echo ran", "tag": "hooked",
                                  "args": {"deny": True}, "max_attempts": 1})
            wait_until(lambda: job(api, denied)["refusals"], 20, message="a refusal")
            view = job(api, denied)
            assert (view["status"], view["attempt"]) == ("queued", 0), view
            [refusal] = view["refusals"]
            assert (refusal["worker"], refusal["kind"], refusal["reason"]) == \
                ("guarded", "hook", "change freeze until Monday")
            # Every live worker of the tag refused it: the job says so while it waits, and
            # the refusing agent is not handed it again.
            assert "every live worker for tag hooked refused it: guarded (hook: change " \
                   "freeze until Monday)" in view["pending_reason"]["message"], view
            with contextlib.closing(signed_in(server.url, SUPERADMIN)) as ui:
                page = ui.get(f"/w/default/jobs/{denied}").text
                assert "every live worker for tag hooked refused it" in page
                assert "change freeze until Monday" in page and "data-refusals" in page
            guarded.wait_logged("job.hook_refused")
            # A later job of the tag goes to it, though the refused one is older and first in
            # line: its claims exclude what it refused.
            later = submit(api, {"language": "bash", "content": "echo later", "tag": "hooked",
                                 "args": {"deny": False}})
            assert finished(api, later)["worker"] == "guarded"
            assert job(api, denied)["status"] == "queued"
            assert guarded.log_text().count('"job.hook_refused"') == 1
            other = AgentProcess(server.url, token, tmp_path, name="unguarded")
            done = finished(api, denied)
            assert (done["status"], done["worker"], done["attempt"]) == \
                ("succeeded", "unguarded", 1), done
            assert "pending_reason" not in done
            logs = api.get(f"/api/w/default/jobs/{denied}/logs").json()["data"]
            assert "guarded will not run this job (hook): change freeze until Monday" in logs
        finally:
            guarded.kill()
            if other is not None:
                other.kill()
    inputs = [json.loads(line) for line in seen.read_text().splitlines()]
    assert inputs[0]["secrets"] == ["DB_PASSWORD"] and inputs[0]["args"] == {"deny": False}
    assert {"id", "workspace", "tag", "language", "content_sha256"} <= set(inputs[0])
    assert "hook-must-not-see-this" not in seen.read_text()
    assert '"event": "job.refused"' in server.log_text()
