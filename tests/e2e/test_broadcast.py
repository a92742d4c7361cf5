"""Broadcast jobs, tried as an operator would: `uname -a` on every agent live for a tag, each
child pinned to its agent (never run by another), the parent ending with every agent's
outcome; a child whose agent goes away fails with lost_worker; the CLI shows the parent
with its children."""

from __future__ import annotations

import contextlib
import re
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_cli import ok, run_cli
from tests.e2e.test_fleet_states import listed
from tests.e2e.test_job_secrets import signed_in
from tests.e2e.test_pending_reasons import reason
from tests.support.processes import (
    SUPERADMIN,
    AgentProcess,
    agent_token,
    api_client,
    finished,
    wait_until,
)

AGENTS = 4


def broadcast(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/api/w/default/jobs", json={"language": "bash", "broadcast": True, **body})


def test_a_broadcast_runs_once_on_every_live_agent_of_its_tag(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        assert broadcast(api, content="uname -a", tag="fleet").json()["error"]["code"] \
            == "no_live_agent"
        names = [f"node-{n}" for n in range(AGENTS)]
        agents = [AgentProcess(server.url, agent_token(api, ["fleet"]), tmp_path, name=name,
                               env={"AGENT_SLOTS": "2"}) for name in names]
        other = AgentProcess(server.url, agent_token(api, ["other"]), tmp_path, name="other-1")
        try:
            wait_until(lambda: all((a := listed(api, n)) and a["state"] == "live"
                                   for n in names), message="every agent to connect")
            made = broadcast(api, content='echo "$(uname -s) on $TAGRUN_WORKER"', tag="fleet")
            assert made.status_code == 201, made.text
            parent = made.json()
            assert parent["broadcast"] is True and parent["status"] == "running"
            assert sorted(c["agent"] for c in parent["children"]) == names

            done = finished(api, parent["id"])
            assert done["status"] == "succeeded", done
            children = done["result"]["children"]
            assert sorted(c["agent"] for c in children) == names
            for child in children:
                view = api.get(f"/api/w/default/jobs/{child['job_id']}").json()
                # Each ran on its own agent, once, as a job of the broadcast's tag.
                assert (view["worker"], view["pinned_to"], view["tag"], view["attempt"],
                        view["parent_id"]) == (child["agent"], child["agent"], "fleet", 1,
                                               parent["id"])
                assert child["status"] == "succeeded"
            shown = ok(run_cli("job", "get", str(parent["id"]), url=server.url)).stdout
            assert f"AGENTS ({AGENTS})" in shown, shown
            for name in names:  # a row per agent: its job, its name, how it went
                assert re.search(rf"^\d+ +{name} +succeeded .*on {name}", shown, re.M), shown
            child = ok(run_cli("job", "get", str(children[0]["job_id"]), url=server.url)).stdout
            assert f"one of job {parent['id']}'s, pinned to agent {children[0]['agent']}" \
                in child
            with contextlib.closing(signed_in(server.url, SUPERADMIN)) as ui:
                page = ui.get(f"/w/default/jobs/{parent['id']}").text
                rows = re.findall(r'data-child="(\d+)"', page)
                assert sorted(map(int, rows)) == sorted(c["job_id"] for c in children)
                for name in names:
                    assert f'/workers/{name}"' in page
                child_page = ui.get(f"/w/default/jobs/{children[0]['job_id']}").text
                assert f'href="/w/default/jobs/{parent["id"]}"' in child_page

            # A batch cannot hold one; a workspace's batch of normal jobs still goes.
            batch = api.post("/api/w/default/jobs/batch", json={"jobs": [
                {"language": "bash", "content": "echo", "tag": "fleet", "broadcast": True}]})
            assert batch.status_code == 400 and "broadcast" in batch.json()["error"]["message"]
        finally:
            for agent in [*agents, other]:
                agent.kill()


def test_a_child_whose_agent_goes_away_fails_with_lost_worker(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url, env={
        "TAGRUN_STALE_AFTER_S": "6"}).wait_healthy()
    with api_client(server.url) as api:
        steady = AgentProcess(server.url, agent_token(api, ["fleet"]), tmp_path, name="steady")
        doomed = AgentProcess(server.url, agent_token(api, ["fleet", "hold"]), tmp_path,
                              name="doomed")
        try:
            wait_until(lambda: all((a := listed(api, n)) and a["state"] == "live"
                                   for n in ("steady", "doomed")), message="both to connect")
            # doomed's one slot is taken: its broadcast job waits for it (it is busy, so live).
            held = api.post("/api/w/default/jobs", json={
                "language": "bash", "content": "sleep 300", "tag": "hold"}).json()["id"]
            wait_until(lambda: listed(api, "doomed")["state"] == "busy",  # type: ignore[index]
                       message="doomed to be busy")
            parent = broadcast(api, content="echo hi", tag="fleet").json()
            assert sorted(c["agent"] for c in parent["children"]) == ["doomed", "steady"]
            [waiting] = [c["id"] for c in parent["children"] if c["agent"] == "doomed"]
            why = reason(api, waiting)
            assert (why["code"], why["agent"]) == ("pinned", "doomed"), why
            assert "runs only on agent doomed (busy)" in why["message"], why
            # steady does not take doomed's job, however free it is.
            [mine] = [c["id"] for c in parent["children"] if c["agent"] == "steady"]
            assert finished(api, mine)["status"] == "succeeded"
            assert api.get(f"/api/w/default/jobs/{waiting}").json()["status"] == "queued"

            doomed.proc.send_signal(signal.SIGKILL)
            doomed.proc.wait()
            lost = finished(api, waiting, timeout=60)
            assert (lost["status"], lost["error"]["kind"]) == ("failed", "lost_worker"), lost
            assert lost["worker"] is None and lost["attempt"] == 0  # nobody ran it
            assert api.get(f"/api/w/default/jobs/{held}").json()["status"] == "running"
            done = finished(api, parent["id"])
            assert done["status"] == "failed"
            assert done["error"]["kind"] == "broadcast_failed"
            assert "1 of 2 agents' jobs did not succeed: doomed" in done["error"]["message"]
            assert {c["agent"]: c["status"] for c in done["result"]["children"]} == {
                "steady": "succeeded", "doomed": "failed"}
        finally:
            steady.kill()
            doomed.kill()


def test_cancelling_a_broadcast_cancels_its_children(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        agent = AgentProcess(server.url, agent_token(api, ["fleet"]), tmp_path, name="busy-1")
        try:
            wait_until(lambda: (a := listed(api, "busy-1")) and a["state"] == "live",
                       message="the agent to connect")
            parent = broadcast(api, content="sleep 300", tag="fleet").json()
            [child] = [c["id"] for c in parent["children"]]
            wait_until(lambda: api.get(f"/api/w/default/jobs/{child}").json()["status"]
                       == "running", message="the child to start")
            assert api.post(f"/api/w/default/jobs/{parent['id']}/cancel").status_code == 200
            done = finished(api, parent["id"], timeout=60)
            assert done["status"] == "cancelled", done
            assert finished(api, child)["status"] == "cancelled"
        finally:
            agent.kill()
