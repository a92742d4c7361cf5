"""GET /api/autoscale, autoscale tokens and `tagrun autoscale`, against a real server with
agents simulated over the HTTP agent API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tagrun.server import responses as out
from tests.support.processes import SUPERADMIN, TagrunProcess, api_client, wait_until

CLAIM = "/api/agent_workers/claim"
HEARTBEAT = "/api/agent_workers/heartbeat"
TAGRUN = Path(sys.executable).parent / "tagrun"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mint(api: httpx.Client, group: str, tags: list[str]) -> str:
    response = api.post("/api/agent_tokens", json={"group": group, "tags": tags})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def submit(api: httpx.Client, tag: str, count: int, **extra: Any) -> list[int]:
    ids = []
    for _ in range(count):
        response = api.post("/api/w/default/jobs",
                            json={"language": "bash", "content": "echo hi", "tag": tag, **extra})
        assert response.status_code == 201, response.text
        ids.append(int(response.json()["id"]))
    return ids


def autoscale(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/api/autoscale", params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    msgspec.convert(answer, out.Autoscale)  # exactly what the OpenAPI document says
    return answer


def group_row(client: httpx.Client, group: str, **params: Any) -> dict[str, Any]:
    [row] = autoscale(client, group=group, **params)["groups"]
    assert row["group"] == group
    return row


def tag_row(client: httpx.Client, tag: str, **params: Any) -> dict[str, Any]:
    [row] = autoscale(client, tag=tag, **params)["tags"]
    assert row["tag"] == tag
    return row


@pytest.fixture
def autoscale_token(api: httpx.Client) -> Iterator[dict[str, Any]]:
    response = api.post("/api/tokens", json={"kind": "autoscale", "label": "keda"})
    assert response.status_code == 201, response.text
    yield response.json()
    api.delete(f"/api/tokens/{response.json()['id']}")


def test_a_queue_with_no_agent_asks_for_agents_and_a_group_scaled_to_zero_is_listed(
    api: httpx.Client,
) -> None:
    group, tag = unique("pool"), unique("t")
    mint(api, group, [tag])  # no agent has connected: the token alone says what it serves
    submit(api, tag, 5)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    submit(api, tag, 1, run_at=later)  # delayed: wants no agent yet
    row = group_row(api, group)
    assert row["tags"] == [tag]
    assert (row["queued"], row["queued_due"], row["running"]) == (6, 5, 0)
    assert row["oldest_queued_s"] is not None and row["oldest_queued_s"] >= 0
    assert (row["agents_live"], row["agents_busy"], row["slots_live"]) == (0, 0, 0)
    assert row["desired_agents"] == 5  # one slot per due job, one slot per agent
    assert group_row(api, group, slots_per_agent=2)["desired_agents"] == 3  # ceil(5 / 2)
    assert group_row(api, group, target_slots_per_job=0.5)["desired_agents"] == 3
    assert group_row(api, group, target_slots_per_job=0.5,
                     slots_per_agent=4)["desired_agents"] == 1
    # However small the target, a due job brings a pool at zero up to one agent.
    assert group_row(api, group, target_slots_per_job=0.0001)["desired_agents"] == 1
    tag_figures = tag_row(api, tag)
    assert (tag_figures["queued"], tag_figures["queued_due"], tag_figures["desired_agents"]) \
        == (6, 5, 5)
    # Every tag and group is in the full answer too, with the inputs used.
    full = autoscale(api)
    assert full["inputs"] == {"target_slots_per_job": 1.0, "max_queue_age_s": None,
                              "slots_per_agent": 1}
    assert group in [g["group"] for g in full["groups"]]
    assert tag in [t["tag"] for t in full["tags"]]
    for job_id in _queued_ids(api, tag):
        api.post(f"/api/w/default/jobs/{job_id}/cancel")
    row = group_row(api, group)
    assert (row["queued"], row["desired_agents"]) == (0, 0)  # nothing to do: scale to zero


def _queued_ids(api: httpx.Client, tag: str) -> list[int]:
    jobs = api.get("/api/w/default/jobs", params={"tag": tag, "status": "queued"}).json()
    return [int(j["id"]) for j in jobs["jobs"]]


def test_figures_follow_agents_running_jobs_and_fall_to_zero_when_idle(
    server: TagrunProcess, api: httpx.Client,
) -> None:
    group, tag = unique("pool"), unique("t")
    token = mint(api, group, [tag])
    ids = submit(api, tag, 5)
    names = [unique("sim"), unique("sim")]
    held: dict[str, list[dict[str, Any]]] = {}
    with api_client(server.url, token) as agent:
        for name in names:
            claimed = agent.post(CLAIM, json={"name": name, "slots": 2, "wait_s": 5}).json()
            held[name] = claimed["jobs"]
        assert sorted(len(jobs) for jobs in held.values()) == [2, 2]

        def busy() -> dict[str, Any] | None:
            row = group_row(api, group, slots_per_agent=2)
            return row if row["agents_busy"] == 2 and row["slots_busy"] == 4 else None

        row = wait_until(busy, message="both agents to show busy")
        assert (row["queued_due"], row["running"], row["agents_live"]) == (1, 4, 0)
        assert (row["slots_live"], row["slots_idle"]) == (4, 0)
        assert row["desired_agents"] == 3  # ceil((1 due + 4 running) / 2 slots)
        assert tag_row(api, tag, slots_per_agent=2)["desired_agents"] == 3
        # Fewer slots per job wanted: one agent would do...
        assert group_row(api, group, slots_per_agent=2,
                         target_slots_per_job=0.25)["desired_agents"] == 1
        # ...unless the oldest due job has waited longer than allowed: one more than now.
        assert group_row(api, group, slots_per_agent=2, target_slots_per_job=0.25,
                         max_queue_age_s=0)["desired_agents"] == 3
        assert group_row(api, group, slots_per_agent=2, target_slots_per_job=0.25,
                         max_queue_age_s=3600)["desired_agents"] == 1
        # The jobs end, the last queued one is cancelled: idle agents, nothing wanted.
        for name, jobs in held.items():
            for job in jobs:
                done = agent.post(f"/api/w/default/agent_workers/jobs/{job['id']}/complete",
                                  json={"name": name, "attempt": job["attempt"],
                                        "status": "succeeded"})
                assert done.status_code == 200, done.text
        [left] = set(ids) - {j["id"] for jobs in held.values() for j in jobs}
        assert api.post(f"/api/w/default/jobs/{left}/cancel").status_code == 200
        for name in names:
            agent.post(HEARTBEAT, json={"name": name, "running": []})

        def idle() -> dict[str, Any] | None:
            row = group_row(api, group, slots_per_agent=2, max_queue_age_s=0)
            return row if row["agents_live"] == 2 else None

        row = wait_until(idle, message="both agents to show live and idle")
        assert (row["queued"], row["running"], row["slots_busy"], row["slots_idle"]) == \
            (0, 0, 0, 4)
        assert row["desired_agents"] == 0


def test_a_paused_agent_counts_apart_and_not_as_a_slot(
    server: TagrunProcess, api: httpx.Client,
) -> None:
    group, tag = unique("pool"), unique("t")
    token = mint(api, group, [tag])
    name = unique("sim")
    with api_client(server.url, token) as agent:
        agent.post(CLAIM, json={"name": name, "wait_s": 0})
        assert api.post(f"/api/workers/{name}/pause", json={"note": "disk swap"}).status_code \
            == 200
        submit(api, tag, 2)
        row = group_row(api, group)
        assert (row["agents_paused"], row["agents_live"], row["slots_live"]) == (1, 0, 0)
        assert row["desired_agents"] == 2
        assert group_row(api, group, max_queue_age_s=0,
                         target_slots_per_job=0.1)["desired_agents"] == 1
    for job_id in _queued_ids(api, tag):
        api.post(f"/api/w/default/jobs/{job_id}/cancel")


@pytest.mark.parametrize(("params", "named"), [
    ({"target_slots_per_job": "0"}, "target_slots_per_job"),
    ({"target_slots_per_job": "-1"}, "target_slots_per_job"),
    ({"target_slots_per_job": "lots"}, "target_slots_per_job"),
    ({"target_slots_per_job": "nan"}, "target_slots_per_job"),
    ({"target_slots_per_job": "inf"}, "target_slots_per_job"),
    ({"target_slots_per_job": "5000"}, "target_slots_per_job"),
    ({"max_queue_age_s": "-5"}, "max_queue_age_s"),
    ({"max_queue_age_s": "5m"}, "max_queue_age_s"),
    ({"max_queue_age_s": "1e12"}, "max_queue_age_s"),
    ({"slots_per_agent": "0"}, "slots_per_agent"),
    ({"slots_per_agent": "1.5"}, "slots_per_agent"),
    ({"slots_per_agent": "100000"}, "slots_per_agent"),
    ({"group": "no spaces"}, "group"),
    ({"tag": "-leading-dash"}, "tag"),
    ({"tag": "x" * 300}, "tag"),
])
def test_bad_query_parameters_are_400_naming_the_parameter(
    api: httpx.Client, params: dict[str, str], named: str,
) -> None:
    response = api.get("/api/autoscale", params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert named in error["message"]


def test_an_autoscale_token_reads_autoscale_and_nothing_else(
    server: TagrunProcess, api: httpx.Client, autoscale_token: dict[str, Any],
) -> None:
    secret = autoscale_token["token"]
    assert (autoscale_token["kind"], autoscale_token["workspace"], autoscale_token["label"]) \
        == ("autoscale", None, "keda")
    with api_client(server.url, secret) as scaler:
        assert "groups" in autoscale(scaler)
        refused = {
            ("GET", "/api/w/default/jobs"), ("POST", "/api/w/default/jobs"),
            ("GET", "/api/w/default/scripts"), ("GET", "/api/w/default/schedules"),
            ("GET", "/api/w/default/secrets"), ("GET", "/api/workers"),
            ("POST", "/api/workers/anyone/drain"), ("POST", "/api/pools/any/pause"),
            ("GET", "/api/tokens"), ("POST", "/api/tokens"), ("DELETE", "/api/tokens/1"),
            ("GET", "/api/agent_tokens"), ("POST", "/api/agent_tokens"),
            ("GET", "/api/settings"), ("GET", "/api/workspaces"),
        }
        for method, path in sorted(refused):
            body = {"language": "bash", "content": "echo"} if method == "POST" else None
            answer = scaler.request(method, path, json=body)
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "forbidden"
        claim = scaler.post(CLAIM, json={"name": "scaler", "wait_s": 0})
        assert claim.status_code == 401  # not an agent token: the agent API refuses it
        assert secret not in claim.text
    # The other tokens still work as before; a workspace token cannot read the fleet's figures.
    workspace = api.post("/api/tokens", json={"workspace": "default", "label": "ci"}).json()
    with api_client(server.url, workspace["token"]) as user:
        assert user.get("/api/w/default/jobs").status_code == 200
        assert user.get("/api/autoscale").status_code == 403
    api.delete(f"/api/tokens/{workspace['id']}")
    assert api.get("/api/autoscale").status_code == 200
    assert httpx.get(f"{server.url}/api/autoscale").status_code == 401


def test_autoscale_tokens_are_listed_apart_and_revocable(
    server: TagrunProcess, api: httpx.Client, autoscale_token: dict[str, Any],
) -> None:
    listed = api.get("/api/tokens", params={"kind": "autoscale"}).json()["tokens"]
    mine = [t for t in listed if t["id"] == autoscale_token["id"]]
    assert mine and mine[0]["kind"] == "autoscale" and "token" not in mine[0]
    assert autoscale_token["token"] not in json.dumps(listed)
    workspace_tokens = api.get("/api/tokens").json()["tokens"]
    assert autoscale_token["id"] not in [t["id"] for t in workspace_tokens]
    for bad in ({"kind": "autoscale", "workspace": "default"}, {"kind": "root"},
                {"kind": "autoscale", "expires_in_s": 0}):
        response = api.post("/api/tokens", json=bad)
        assert response.status_code == 400, (bad, response.text)
    assert api.get("/api/tokens", params={"kind": "root"}).status_code == 400
    assert api.delete(f"/api/tokens/{autoscale_token['id']}").status_code == 200
    with api_client(server.url, autoscale_token["token"]) as scaler:
        answer = scaler.get("/api/autoscale")
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "unauthorized"


def test_an_autoscale_token_cannot_sign_in_to_the_web_ui(
    server: TagrunProcess, autoscale_token: dict[str, Any],
) -> None:
    with httpx.Client(base_url=server.url) as browser:
        form = browser.get("/signin")
        found = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert found is not None
        answer = browser.post("/signin", data={"csrf": found[1],
                                               "token": autoscale_token["token"]})
        assert answer.status_code == 403
        assert "cannot sign in" in answer.text
        assert "tagrun_session" not in answer.headers.get("set-cookie", "")


def cli(server: TagrunProcess, *args: str, token: str = SUPERADMIN
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGRUN_")}
    env.update(TAGRUN_URL=server.url, TAGRUN_TOKEN=token, NO_COLOR="1")
    result = subprocess.run([str(TAGRUN), *args], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert "Traceback" not in result.stderr
    return result


def test_the_cli_mints_an_autoscale_token_and_reads_autoscale_with_it(
    server: TagrunProcess, api: httpx.Client,
) -> None:
    group, tag = unique("pool"), unique("t")
    mint(api, group, [tag])
    submit(api, tag, 3)
    created = cli(server, "token", "create", "--autoscale", "--label", "cron-loop")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("tr_") and "\n" not in token
    table = cli(server, "autoscale", "--group", group, "--slots-per-agent", "2", token=token)
    assert table.returncode == 0, table.stderr
    assert "Desired agents" in table.stdout and group in table.stdout
    [line] = [ln for ln in table.stdout.splitlines() if ln.startswith(group)]
    assert line.split()[-1] == "2"  # ceil(3 due / 2 slots per agent)
    assert "slots_per_agent=2" in table.stdout
    as_json = cli(server, "autoscale", "--tag", tag, "-o", "json", token=token)
    assert as_json.returncode == 0, as_json.stderr
    [row] = json.loads(as_json.stdout)["tags"]
    assert (row["tag"], row["queued_due"], row["desired_agents"]) == (tag, 3, 3)
    bad = cli(server, "autoscale", "--target-slots-per-job", "0", token=token)
    assert bad.returncode == 1 and "target_slots_per_job" in bad.stderr
    listed = cli(server, "token", "list", "--autoscale")
    assert listed.returncode == 0 and "cron-loop" in listed.stdout and token not in listed.stdout
    [token_id] = [t["id"] for t in api.get("/api/tokens", params={"kind": "autoscale"}).json()[
        "tokens"] if t["label"] == "cron-loop" and not t["revoked"]]
    refused = cli(server, "workers", token=token)
    assert refused.returncode == 1 and "403" in refused.stderr
    revoked = cli(server, "token", "revoke", "--autoscale", str(token_id))
    assert revoked.returncode == 0, revoked.stderr
    after = cli(server, "autoscale", token=token)
    assert after.returncode == 1 and "401" in after.stderr
    for job_id in _queued_ids(api, tag):
        api.post(f"/api/w/default/jobs/{job_id}/cancel")


def test_a_paused_tag_is_no_demand_until_it_is_resumed(api: httpx.Client) -> None:
    group, tag = unique("pool"), unique("t")
    mint(api, group, [tag])
    jobs = submit(api, tag, 3)
    assert tag_row(api, tag)["desired_agents"] == 3
    assert api.post(f"/api/tags/{tag}/pause", json={"note": "migration"}).status_code == 200
    try:
        row = tag_row(api, tag)
        assert (row["paused"], row["queued"], row["queued_due"], row["desired_agents"]) == (
            True, 3, 0, 0)
        assert group_row(api, group)["desired_agents"] == 0
    finally:
        assert api.post(f"/api/tags/{tag}/resume").status_code == 200
    assert (tag_row(api, tag)["paused"], tag_row(api, tag)["desired_agents"]) == (False, 3)
    for job in jobs:
        api.post(f"/api/w/default/jobs/{job}/cancel")
