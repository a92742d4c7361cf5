"""An agent's state is true at once: an agent that stops cleanly says so as its last act and
shows `stopped` by the time its process has exited; a revoked token shows `token_revoked` the
moment the revocation returns; the same word in the API, the CLI and the metrics."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_cli import ok, run_cli
from tests.support.database import query
from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    agent_token,
    api_client,
    wait_until,
)


def listed(api: httpx.Client, name: str) -> dict[str, Any] | None:
    return next((a for a in api.get("/api/workers").json()["agents"] if a["name"] == name),
                None)


def metric(url: str, state: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^tagrun_agents{{state="{state}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else -1.0


def test_an_agent_stopped_cleanly_shows_stopped_as_it_exits_and_live_when_back(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        token = agent_token(api, ["calm"])
        agent = AgentProcess(server.url, token, tmp_path, name="calm-1")
        try:
            wait_until(lambda: (a := listed(api, "calm-1")) is not None
                       and a["state"] == "live", message="the agent to show live")
            agent.proc.send_signal(signal.SIGTERM)
            assert agent.wait_exit() == 0
            # No waiting: its goodbye was answered before it exited.
            gone = listed(api, "calm-1")
            assert gone is not None
            assert (gone["state"], gone["stop_reason"], gone["stale"]) == (
                "stopped", "stopped", False)
            assert gone["stopped_at"] is not None
            fleet = api.get("/api/workers").json()
            assert not any(p["live_agents"] for p in fleet["pools"] if p["group"] == "edge")
            table = ok(run_cli("workers", url=server.url)).stdout
            [row] = [line for line in table.splitlines() if line.startswith("calm-1")]
            assert "stopped" in row.split()
            wait_until(lambda: metric(server.url, "stopped") == 1.0,
                       message="tagrun_agents{state=\"stopped\"} 1 (the metrics cache 1 s)")
        finally:
            agent.kill()

        back = AgentProcess(server.url, token, tmp_path, name="calm-1")
        try:
            wait_until(lambda: (a := listed(api, "calm-1")) is not None
                       and a["state"] == "live", message="the restarted agent to show live")
            assert listed(api, "calm-1")["stopped_at"] is None  # type: ignore[index]
        finally:
            back.kill()


def test_a_revoked_token_shows_token_revoked_the_moment_it_is_revoked(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        token = agent_token(api, ["doomed"])
        [jti] = [t["jti"] for t in api.get("/api/agent_tokens").json()["agent_tokens"]]
        agent = AgentProcess(server.url, token, tmp_path, name="doomed-1")
        try:
            wait_until(lambda: (a := listed(api, "doomed-1")) is not None
                       and a["state"] == "live", message="the agent to show live")
            assert api.delete(f"/api/agent_tokens/{jti}").status_code == 200
            assert listed(api, "doomed-1")["state"] == "token_revoked"  # type: ignore[index]
            fleet = api.get("/api/workers").json()
            assert not any(t["live_workers"] for t in fleet["tags"] if t["tag"] == "doomed")
            assert agent.wait_exit() == 3  # it learns on its next request, and exits
            assert listed(api, "doomed-1")["state"] == "token_revoked"  # type: ignore[index]
        finally:
            agent.kill()


def test_an_agent_cannot_say_goodbye_for_another(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        victim = AgentProcess(server.url, agent_token(api, ["v"]), tmp_path, name="victim-1")
        try:
            wait_until(lambda: (a := listed(api, "victim-1")) is not None
                       and a["state"] == "live", message="the victim to show live")
            with api_client(server.url, agent_token(api, ["a"])) as attacker:
                forged = attacker.post("/api/agent_workers/goodbye", json={"name": "victim-1"})
                assert forged.status_code == 404, forged.text
                assert forged.json()["error"]["code"] == "not_found"
                bad = attacker.post("/api/agent_workers/goodbye",
                                    json={"name": "victim-1", "reason": "Bye Now"})
                assert bad.status_code == 400 and "reason" in bad.json()["error"]["message"]
            with api_client(server.url, "not-a-token") as nobody:
                assert nobody.post("/api/agent_workers/goodbye",
                                   json={"name": "victim-1"}).status_code == 401
            assert listed(api, "victim-1")["state"] == "live"  # type: ignore[index]
            assert victim.proc.poll() is None
        finally:
            victim.kill()


def test_a_direct_worker_stopped_cleanly_shows_stopped(
        start_process: Any, database_url: str) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    worker: TagrunProcess = start_process("worker", database_url,
                                          env={"WORKER_NAME": "direct-1"})
    with api_client(server.url) as api:
        wait_until(lambda: (a := listed(api, "direct-1")) is not None
                   and a["state"] == "live", message="the direct worker to show live")
        assert worker.stop() == 0
        gone = listed(api, "direct-1")
        assert gone is not None and gone["state"] == "stopped", gone


def test_every_agent_is_listed_page_by_page_with_filters_and_totals(
        start_process: Any, database_url: str) -> None:
    # 250 records of agents seen now (live) or 10 minutes ago (stale), in three groups, as a
    # fleet leaves them; the pages must list each exactly once, in name order.
    query(database_url, """
        INSERT INTO workers (name, kind, grp, tags, last_seen)
        SELECT 'sim-' || lpad(n::text, 4, '0'), 'agent', 'g' || (n % 3), ARRAY['t' || (n % 5)],
               now() - CASE WHEN n % 10 = 0 THEN interval '10 minutes' ELSE interval '0' END
        FROM generate_series(1, 250) n""")
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        names: list[str] = []
        cursor = ""
        while True:
            page = api.get("/api/workers", params={"limit": 100, "cursor": cursor}).json()
            names += [a["name"] for a in page["agents"]]
            assert len(page["agents"]) <= 100
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        assert names == [f"sim-{n:04d}" for n in range(1, 251)]
        totals = page["totals"]
        assert (totals["all"], totals["live"], totals["stale"], totals["matched"]) == (
            250, 225, 25, 250)
        assert sum(p["live_agents"] for p in page["pools"]) == 225  # every agent, every page

        g1 = api.get("/api/workers", params={"group": "g1", "state": "stale"}).json()
        assert {a["name"] for a in g1["agents"]} == {
            f"sim-{n:04d}" for n in range(1, 251) if n % 3 == 1 and n % 10 == 0}
        assert g1["totals"]["matched"] == len(g1["agents"]) and g1["totals"]["all"] == 250
        tagged = api.get("/api/workers", params={"tag": "t2", "name": "sim-00"}).json()
        assert {a["name"] for a in tagged["agents"]} == {
            f"sim-{n:04d}" for n in range(1, 100) if n % 5 == 2}

        for bad in ({"state": "sleepy"}, {"limit": 0}, {"limit": 5001}):
            refused = api.get("/api/workers", params=bad)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "invalid_input"

        table = ok(run_cli("workers", "--group", "g2", url=server.url)).stdout
        listed_rows = [line.split()[0] for line in table.splitlines()
                       if line.startswith("sim-")]
        assert listed_rows == [f"sim-{n:04d}" for n in range(1, 251) if n % 3 == 2]
        assert ("250 agents and workers: 225 live, 0 busy, 0 paused, 0 draining, "
                "0 quarantined, 0 stopped, 25 stale, 0 token_revoked, 0 version_refused"
                ) in table


def test_a_paused_agent_claims_nothing_until_resumed_and_a_pause_can_end_by_itself(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        agent = AgentProcess(server.url, agent_token(api, ["paws"]), tmp_path, name="paws-1")
        try:
            wait_until(lambda: (a := listed(api, "paws-1")) is not None
                       and a["state"] == "live", message="the agent to show live")
            ok(run_cli("workers", "pause", "paws-1", "--note", "disk swap", url=server.url))
            paused = listed(api, "paws-1")
            assert paused is not None
            assert (paused["state"], paused["pause_note"], paused["paused_by"],
                    paused["paused_as"], paused["paused_until"]) == (
                "paused", "disk swap", "superadmin", "agent", None)
            # Its waiting claim was answered at once: the agent hears it is paused.
            agent.wait_logged("agent.paused")
            job = api.post("/api/w/default/jobs", json={
                "language": "bash", "tag": "paws", "content": "echo ran"}).json()
            # The agent keeps claiming (its claims wait out the pause without jobs): a while
            # later the job has still not been handed to it. (A slow machine cannot make this
            # fail: only a claim that ignored the pause could.)
            time.sleep(1.5)
            assert api.get(f"/api/w/default/jobs/{job['id']}").json()["status"] == "queued"
            ok(run_cli("workers", "resume", "paws-1", url=server.url))
            done = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 20}).json()
            assert (done["status"], done["worker"]) == ("succeeded", "paws-1")
            agent.wait_logged("agent.resumed")

            # A pause of the whole group, for 2 s: it ends by itself.
            ok(run_cli("workers", "pause", "edge", "--group", "--note", "window", "--for", "2",
                       url=server.url))
            by_group = listed(api, "paws-1")
            assert by_group is not None
            assert (by_group["state"], by_group["paused_as"]) == ("paused", "group")
            assert by_group["paused_until"] is not None
            second = api.post("/api/w/default/jobs", json={
                "language": "bash", "tag": "paws", "content": "echo again"}).json()
            after = api.get(f"/api/w/default/jobs/{second['id']}", params={"wait_s": 30}).json()
            assert after["status"] == "succeeded"
            # Busy while it ran the job, live again within a heartbeat flush (0.5 s) after.
            wait_until(lambda: listed(api, "paws-1")["state"] == "live",  # type: ignore[index]
                       10, message="the agent live again")
            started = datetime.fromisoformat(after["started_at"])
            assert started >= datetime.fromisoformat(by_group["paused_until"]), (
                "the job started while its agent's group was paused")
        finally:
            agent.kill()


def test_a_drained_agent_finishes_its_job_says_goodbye_and_exits_0(
        start_process: Any, database_url: str, tmp_path: Path) -> None:
    server: TagrunProcess = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        token = agent_token(api, ["drainme"])
        agent = AgentProcess(server.url, token, tmp_path, name="drain-1")
        try:
            marker = tmp_path / "started"
            job = api.post("/api/w/default/jobs", json={
                "language": "bash", "tag": "drainme",
                "content": f"touch {marker}; sleep 2; echo finished"}).json()
            wait_until(marker.exists, message="the job to start")
            answer = api.post("/api/workers/drain-1/drain", json={"note": "retire host"})
            assert answer.json() == {"name": "drain-1", "state": "draining"}
            assert listed(api, "drain-1")["state"] == "draining"  # type: ignore[index]
            assert agent.wait_exit(30) == 0
            done = api.get(f"/api/w/default/jobs/{job['id']}").json()
            assert (done["status"], done["result"]) == ("succeeded", "finished")
            gone = listed(api, "drain-1")
            assert gone is not None
            assert (gone["state"], gone["stop_reason"]) == ("stopped", "drained")
            agent.wait_logged("agent.drain_requested")
        finally:
            agent.kill()
        # Started again (as a service manager would), it is a new process: it claims as usual.
        again = AgentProcess(server.url, token, tmp_path / "again", name="drain-1")
        try:
            rerun = api.post("/api/w/default/jobs", json={
                "language": "bash", "tag": "drainme", "content": "echo back"}).json()
            done = api.get(f"/api/w/default/jobs/{rerun['id']}", params={"wait_s": 20}).json()
            assert (done["status"], done["worker"]) == ("succeeded", "drain-1")
            assert listed(api, "drain-1")["state"] in ("live", "busy")  # type: ignore[index]
            assert again.proc.poll() is None
        finally:
            again.kill()
        assert api.post("/api/workers/nobody/drain", json={}).status_code == 404
        assert api.post("/api/workers/drain-1/pause", json={}).status_code == 400  # no note
        assert api.post("/api/workers/drain-1/pause",
                        json={"note": "x", "for_s": -1}).status_code == 400
        with api_client(server.url, agent_token(api, ["x"])) as agent_api:
            # An agent token opens no steering route.
            assert agent_api.post("/api/workers/drain-1/resume").status_code in (401, 403)


def test_inline_workers_of_dead_standalone_servers_are_folded_away(
        start_process: Any, database_url: str) -> None:
    # Inline workers not seen for 3 leases (9 s) are folded; their heartbeat is 0.5 s.
    env = {"TAGRUN_STALE_AFTER_S": "6", "TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}
    first: TagrunProcess = start_process("standalone", database_url, env=env).wait_healthy()
    with api_client(first.url) as api:
        [stopped] = [a["name"] for a in api.get("/api/workers").json()["agents"]
                     if a["kind"] == "worker"]
    assert first.stop() == 0
    second: TagrunProcess = start_process("standalone", database_url, env=env).wait_healthy()
    with api_client(second.url) as api:
        def inline() -> list[str]:
            return [a["name"] for a in api.get("/api/workers").json()["agents"]
                    if a["kind"] == "worker"]
        wait_until(lambda: stopped not in inline(), message="the stopped one to be folded")
        [crashed] = inline()
    second.kill()  # kill -9: its inline worker just stops being seen
    third: TagrunProcess = start_process("standalone", database_url, env=env).wait_healthy()
    with api_client(third.url) as api:
        wait_until(lambda: crashed not in inline() and len(inline()) == 1, 30,
                   message="the dead process's inline worker to be folded once stale")
        assert inline() != [] and crashed not in inline()
        third.wait_logged("maintenance.inline_workers_folded")
