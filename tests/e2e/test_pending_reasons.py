"""Why is my job waiting? Tried as a user would, with a real server and real agents: a job of
a tag nobody serves, one behind a paused agent, one behind a busy agent, one held by a cap,
one delayed, one backing off after a failure; each says why in the API (one job and lists),
`tagrun job run --wait` warns at submit and says why while it waits, and the Jobs page shows
it on queued rows."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_cli import TAGRUN, cli_env
from tests.e2e.test_job_secrets import signed_in
from tests.support.processes import (
    SUPERADMIN,
    AgentProcess,
    agent_token,
    api_client,
    finished,
    wait_until,
)


def reason(api: httpx.Client, job_id: int) -> dict[str, Any]:
    view: dict[str, Any] = api.get(f"/api/w/default/jobs/{job_id}").json()
    assert view["status"] == "queued", view
    return dict(view["pending_reason"])


def submit(api: httpx.Client, **body: Any) -> int:
    answer = api.post("/api/w/default/jobs", json={"language": "bash", **body})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_every_queued_job_says_why_it_waits(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    # A failed attempt's retry is due 5 to 10 minutes later: it is backing off when looked at.
    server = start_process("server", database_url, env={
        "TAGRUN_RETRY_BACKOFF_S": "600"}).wait_healthy()
    with api_client(server.url) as api:
        nobody = submit(api, content="echo", tag="nobody")
        assert reason(api, nobody)["code"] == "no_live_worker"
        assert "no live worker serves tag nobody" in reason(api, nobody)["message"]
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        delayed = submit(api, content="echo", tag="nobody", run_at=later)
        assert reason(api, delayed)["code"] == "delayed"

        token = agent_token(api, ["work"])
        agent = AgentProcess(server.url, token, tmp_path, name="worker-1")
        try:
            agent.wait_logged("agent.started")
            wait_until(lambda: any(w["name"] == "worker-1" for w in
                                   api.get("/api/workers").json()["agents"]), 15,
                       message="the agent recorded")
            # A job that fails backs off before its retry.
            failing = submit(api, content="exit 1", tag="work", max_attempts=3)
            wait_until(lambda: api.get(f"/api/w/default/jobs/{failing}").json()["attempts"],
                       20, message="a failed attempt")
            assert reason(api, failing)["code"] == "retry_backoff"
            assert "attempt 1 failed (script_error)" in reason(api, failing)["message"]
            assert api.post(f"/api/w/default/jobs/{failing}/cancel").status_code == 200

            # Busy: its one slot runs a long job.
            long = submit(api, content="sleep 60", tag="work")
            wait_until(lambda: api.get(f"/api/w/default/jobs/{long}").json()["status"]
                       == "running", 20, message="the long job running")
            waiting = submit(api, content="echo next", tag="work")
            wait_until(lambda: reason(api, waiting)["code"] == "all_busy", 20,
                       message=f"all_busy ({reason(api, waiting)})")
            assert "all 1 live workers of tag work are running jobs (worker-1)" in \
                reason(api, waiting)["message"]
            # A cap: task_max_concurrent reached.
            assert api.put("/api/settings", json={"key": "task_max_concurrent",
                                                  "value": 1}).status_code == 200
            assert reason(api, waiting) == {
                "code": "cap", "cap": "task_max_concurrent", "value": 1,
                "message": "task_max_concurrent=1 is reached (1 running)"}
            assert api.put("/api/settings", json={"key": "task_max_concurrent",
                                                  "value": 0}).status_code == 200
            # Paused: by whom, and why.
            assert api.post("/api/workers/worker-1/pause",
                            json={"note": "disk swap"}).status_code == 200
            wait_until(lambda: reason(api, waiting)["code"] == "paused", 20,
                       message="paused")
            assert "worker-1 paused by superadmin: disk swap" in reason(api, waiting)["message"]
            # Lists carry the reasons too, for their queued jobs.
            listed = {j["id"]: j for j in api.get("/api/w/default/jobs",
                                                  params={"status": "queued"}).json()["jobs"]}
            assert listed[nobody]["pending_reason"]["code"] == "no_live_worker"
            assert listed[waiting]["pending_reason"]["code"] == "paused"
            with contextlib.closing(signed_in(server.url, SUPERADMIN)) as ui:
                page = ui.get("/w/default/jobs", params={"status": "queued"}).text
                assert 'data-pending-code="paused"' in page and "disk swap" in page
                assert 'data-pending-code="no_live_worker"' in page
                workers = ui.get("/workers").text
                row = workers.split('data-tag="nobody"', 1)[1].split("</tr>", 1)[0]
                oldest = row.split("data-oldest>", 1)[1].split("<", 1)[0]
                assert oldest.endswith((" s", " min")), row  # it has waited a while
            assert api.post("/api/workers/worker-1/resume").status_code == 200
            assert api.post(f"/api/w/default/jobs/{long}/cancel").status_code == 200
            assert finished(api, waiting)["status"] == "succeeded"
        finally:
            agent.kill()


def test_job_run_wait_warns_when_nobody_serves_the_tag(
    start_process, database_url: str,  # type: ignore[no-untyped-def]
) -> None:
    server = start_process("server", database_url).wait_healthy()
    proc = subprocess.Popen(
        [str(TAGRUN), "job", "run", "--tag", "nobody", "--language", "bash", "--content",
         "echo hi", "--wait"], env=cli_env(server.url), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if line.startswith("warning:"):
                break
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C stops the waiting, not the job
        _, rest = proc.communicate(timeout=30)
    assert lines[0].startswith("job 1 queued (tag nobody)"), lines
    assert lines[-1].startswith("warning: no live worker serves tag nobody: it waits until "
                                "an agent or worker of that tag connects"), lines
    assert proc.returncode == 130 and "job 1 carries on" in rest
    with api_client(server.url) as api:
        assert reason(api, 1)["code"] == "no_live_worker"
