"""The agent pull API and agent tokens, over HTTP against a real server."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import jwt
import pytest

from tagrun.shared.version import __version__
from tests.support.database import query
from tests.support.processes import SUPERADMIN, TagrunProcess, api_client, wait_until

CLAIM = "/api/agent_workers/claim"
HEARTBEAT = "/api/agent_workers/heartbeat"


def unique_tag() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def mint(api: httpx.Client, tags: list[str], **extra: object) -> dict[str, object]:
    response = api.post("/api/agent_tokens", json={"group": "edge", "tags": tags, **extra})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def tag() -> str:
    return unique_tag()


@pytest.fixture
def agent(server: TagrunProcess, api: httpx.Client, tag: str) -> Iterator[httpx.Client]:
    token = mint(api, [tag])["token"]
    with api_client(server.url, str(token)) as client:
        yield client


def submit(api: httpx.Client, tag: str, content: str = "echo hi") -> int:
    response = api.post("/api/w/default/jobs",
                        json={"language": "bash", "content": content, "tag": tag})
    assert response.status_code == 201
    return int(response.json()["id"])


def test_minted_token_carries_the_contract_claims(api: httpx.Client, tag: str) -> None:
    minted = mint(api, [tag, "gpu"], expires_in_s=3600)
    claims = jwt.decode(str(minted["token"]), options={"verify_signature": False},
                        audience="tagrun-agent")
    assert {"iss", "aud", "sub", "jti", "iat", "exp", "group", "tags"} <= set(claims)
    assert claims["tags"] == sorted([tag, "gpu"]) and claims["group"] == "edge"
    assert 3590 <= claims["exp"] - claims["iat"] <= 3600
    listed = api.get("/api/agent_tokens").json()["agent_tokens"]
    mine = [t for t in listed if t["jti"] == minted["jti"]]
    assert mine and "token" not in mine[0]
    assert str(minted["token"]) not in json.dumps(listed)


def test_claim_gets_a_job_with_everything_needed_to_run_it(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    job_id = submit(api, tag)
    [job] = agent.post(CLAIM, json={"name": "a1", "slots": 1, "wait_s": 5}).json()["jobs"]
    assert job["id"] == job_id
    assert {"id", "workspace", "language", "content", "args", "tag", "attempt", "timeout_s",
            "lease_s", "heartbeat_s"} <= set(job)
    assert (job["tag"], job["attempt"], job["content"]) == (tag, 1, "echo hi")
    state = api.get(f"/api/w/default/jobs/{job_id}").json()
    assert (state["status"], state["worker"]) == ("running", "a1")


def test_long_poll_returns_as_soon_as_a_job_is_queued(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    import threading

    result: dict[str, object] = {}

    def poll() -> None:
        started = time.monotonic()
        result["jobs"] = agent.post(CLAIM, json={"name": "a2", "wait_s": 20}).json()["jobs"]
        result["took"] = time.monotonic() - started

    thread = threading.Thread(target=poll)
    thread.start()
    wait_until(lambda: _waiting(api, "a2"), message="the agent's poll to be waiting")
    submitted = time.monotonic()
    job_id = submit(api, tag)
    thread.join(20)
    assert [j["id"] for j in result["jobs"]] == [job_id]  # type: ignore[union-attr]
    assert time.monotonic() - submitted < 2.0


def _waiting(api: httpx.Client, name: str) -> bool:
    agents = api.get("/api/workers").json()["agents"]
    return any(a["name"] == name for a in agents)


def test_an_agent_never_receives_jobs_of_other_tags(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    other = submit(api, unique_tag())
    claimed = agent.post(CLAIM, json={"name": "a3", "wait_s": 0.5}).json()
    assert claimed == {"jobs": [], "paused": False, "drain": False, "spent": False,
                       "quarantined": False, "group": "edge", "tags": [tag],
                       "server_version": __version__, "accepts_completed": True}
    assert api.get(f"/api/w/default/jobs/{other}").json()["status"] == "queued"
    api.post(f"/api/w/default/jobs/{other}/cancel")


def test_full_cycle_logs_heartbeat_complete(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    job_id = submit(api, tag)
    [job] = agent.post(CLAIM, json={"name": "a4", "wait_s": 5}).json()["jobs"]
    logs = f"/api/w/default/agent_workers/jobs/{job_id}/logs"
    for offset, data in ((0, "héllo "), (0, "héllo "), (6, "world\n")):
        response = agent.post(logs, json={"name": "a4", "attempt": 1, "offset": offset,
                                           "data": data})
        assert response.status_code == 200, response.text
    beat = agent.post(HEARTBEAT, json={"name": "a4", "running": [{"id": job_id, "attempt": 1}]})
    assert beat.json() == {"cancel": [], "lost": [], "drain": False}
    done = f"/api/w/default/agent_workers/jobs/{job_id}/complete"
    body = {"attempt": job["attempt"], "status": "succeeded", "result": {"n": 1}}
    assert agent.post(done, json=body).json() == {"status": "succeeded"}
    assert agent.post(done, json=body).status_code == 200  # a repeat is fine
    final = api.get(f"/api/w/default/jobs/{job_id}").json()
    assert (final["status"], final["result"]) == ("succeeded", {"n": 1})
    assert api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"] == "héllo world\n"
    stale = agent.post(done, json={**body, "attempt": 2})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "lease_lost"


def test_lines_carry_the_marks_an_agent_sends_and_an_older_agent_sends_none(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    old, new = submit(api, tag), submit(api, tag)
    jobs = agent.post(CLAIM, json={"name": "a-marks", "slots": 2, "wait_s": 5}).json()["jobs"]
    assert {j["id"] for j in jobs} == {old, new}
    assert all(j["log_marks"] is True for j in jobs)  # this server keeps them: send them

    def post(job_id: int, **body: object) -> httpx.Response:
        return agent.post(f"/api/w/default/agent_workers/jobs/{job_id}/logs",
                          json={"name": "a-marks", "attempt": 1, **body})

    assert post(old, offset=0, data="one\ntwo\n").status_code == 200  # no marks: as before
    t = 1_700_000_000_000
    assert post(new, offset=0, data="out\nerr\n[tagrun: own]\n",
                marks=[[0, t, 0], [4, t + 5, 1], [8, t + 6, 2]]).status_code == 200
    for bad in ([[9, t, 0]], [[4, t, 0], [0, t, 0]], [[0, t, 3]], [[0, -1, 0]]):
        refused = post(new, offset=21, data="more\n", marks=bad)
        assert refused.status_code == 400, (bad, refused.text)
    lines = api.get(f"/api/w/default/jobs/{old}/logs").json()["lines"]
    assert lines == [{"offset": 0, "at": None, "stream": None, "text": "one"},
                     {"offset": 4, "at": None, "stream": None, "text": "two"}]
    logs = api.get(f"/api/w/default/jobs/{new}/logs").json()
    assert logs["data"] == "out\nerr\n[tagrun: own]\n"  # nothing of the refused chunks
    assert [(x["at"], x["stream"], x["text"]) for x in logs["lines"]] == [
        ("2023-11-14T22:13:20.000Z", "stdout", "out"),
        ("2023-11-14T22:13:20.005Z", "stderr", "err"),
        ("2023-11-14T22:13:20.006Z", "tagrun", "[tagrun: own]")]
    for job_id in (old, new):
        done = agent.post(f"/api/w/default/agent_workers/jobs/{job_id}/complete",
                          json={"name": "a-marks", "attempt": 1, "status": "succeeded"})
        assert done.status_code == 200, done.text


def test_cancel_reaches_the_agent_at_its_heartbeat(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    job_id = submit(api, tag)
    agent.post(CLAIM, json={"name": "a5", "wait_s": 5})
    api.post(f"/api/w/default/jobs/{job_id}/cancel")
    beat = agent.post(HEARTBEAT, json={"name": "a5", "running": [{"id": job_id, "attempt": 1},
                                                                   {"id": 999999, "attempt": 1}]})
    assert beat.json() == {"cancel": [job_id], "lost": [999999], "drain": False}


def test_release_gives_the_job_back_without_using_an_attempt(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    job_id = submit(api, tag)
    agent.post(CLAIM, json={"name": "a6", "wait_s": 5})
    released = agent.post("/api/agent_workers/release",
                          json={"name": "a6", "jobs": [{"id": job_id, "attempt": 1}]})
    assert released.json() == {"released": [job_id]}
    [again] = agent.post(CLAIM, json={"name": "a7", "wait_s": 5}).json()["jobs"]
    assert (again["id"], again["attempt"]) == (job_id, 1)


def test_agent_cannot_act_on_jobs_of_other_tags(
    server: TagrunProcess, api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    job_id = submit(api, tag)
    agent.post(CLAIM, json={"name": "a8", "wait_s": 5})
    intruder_token = mint(api, [unique_tag()])["token"]
    with api_client(server.url, str(intruder_token)) as intruder:
        done = intruder.post(f"/api/w/default/agent_workers/jobs/{job_id}/complete",
                             json={"name": "a8", "attempt": 1, "status": "succeeded"})
        assert done.status_code == 409
    assert api.get(f"/api/w/default/jobs/{job_id}").json()["status"] == "running"


def _forge(claims: dict[str, object], header: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part(claims)}."


def test_forged_expired_and_foreign_tokens_are_refused(
    server: TagrunProcess, api: httpx.Client, tag: str
) -> None:
    real = str(mint(api, [tag])["token"])
    claims = jwt.decode(real, options={"verify_signature": False})
    now = int(time.time())
    forged = [
        _forge(claims, {"alg": "none", "typ": "JWT"}),
        jwt.encode(claims, "a-guessed-secret-of-32-bytes-or-more", algorithm="HS256"),
        real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"),
        "not-a-jwt",
        SUPERADMIN,
    ]
    for token in forged:
        with api_client(server.url, token) as client:
            response = client.post(CLAIM, json={"name": "x", "wait_s": 0})
            assert response.status_code == 401, token[:20]
            assert response.json()["error"]["code"] == "unauthorized"
    # Agent tokens open agent routes only.
    with api_client(server.url, real) as client:
        assert client.get("/api/w/default/jobs").status_code == 401
        assert client.get("/api/workers").status_code == 401
    del now


def test_a_token_that_worked_stops_working_when_it_expires(
    server: TagrunProcess, api: httpx.Client, tag: str
) -> None:
    """The server remembers tokens it has verified (it decodes each once); a remembered
    token still expires on time. Tokens are minted for a minute at least: this one, for
    two seconds, is signed here with the server's key (read from its database)."""
    minted = mint(api, [tag])
    claims = jwt.decode(str(minted["token"]), options={"verify_signature": False})
    claims["exp"] = int(time.time()) + 2
    [key] = query(str(server.database_url),
                  "SELECT value FROM server_secrets WHERE name = 'agent_jwt_hs256'")
    short = jwt.encode(claims, bytes(key["value"]), algorithm="HS256")
    with api_client(server.url, short) as client:
        assert client.post(CLAIM, json={"name": "e1", "wait_s": 0}).status_code == 200
        wait_until(lambda: client.post(CLAIM, json={"name": "e1", "wait_s": 0}).status_code
                   == 401, 15, message="the expired token to be refused")
        refused = client.post(CLAIM, json={"name": "e1", "wait_s": 0}).json()["error"]
        assert refused == {"code": "unauthorized", "message": "agent token expired"}


def test_revoked_token_stops_working_within_five_seconds(
    server: TagrunProcess, api: httpx.Client, tag: str
) -> None:
    minted = mint(api, [tag])
    with api_client(server.url, str(minted["token"])) as client:
        assert client.post(CLAIM, json={"name": "r1", "wait_s": 0}).status_code == 200
        assert api.delete(f"/api/agent_tokens/{minted['jti']}").status_code == 200
        revoked_at = time.monotonic()
        wait_until(lambda: client.post(CLAIM, json={"name": "r1", "wait_s": 0}).status_code
                   == 401, 5, message="the revoked token to be refused")
        assert time.monotonic() - revoked_at < 5


def test_workers_page_shows_agents_pools_and_tags_without_workers(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    orphan = unique_tag()
    orphan_job = submit(api, orphan)
    agent.post(CLAIM, json={"name": "w1", "wait_s": 0})
    fleet = api.get("/api/workers").json()
    assert {"version", "task_max_concurrent", "task_inline_max_concurrent", "agents", "pools",
            "tags"} <= set(fleet)
    [me] = [a for a in fleet["agents"] if a["name"] == "w1"]
    assert (me["kind"], me["group"], me["tags"], me["stale"]) == ("agent", "edge", [tag], False)
    assert {"active_count", "jobs_executed", "connected_at", "last_seen", "ip", "version"} \
        <= set(me)
    [pool] = [p for p in fleet["pools"] if p["group"] == "edge"]
    assert pool["live_agents"] >= 1 and tag in pool["tags"]
    [orphan_row] = [t for t in fleet["tags"] if t["tag"] == orphan]
    oldest = orphan_row.pop("oldest_queued_s")
    assert orphan_row == {"tag": orphan, "queued": 1, "running": 0, "live_workers": 0,
                          "wait_p50_s": None, "wait_p95_s": None}
    assert oldest is not None and oldest >= 0
    api.post(f"/api/w/default/jobs/{orphan_job}/cancel")


def test_bad_agent_requests_get_clear_4xx(agent: httpx.Client) -> None:
    cases = [
        (CLAIM, {"name": "", "wait_s": 1}),
        (CLAIM, {"name": "a", "slots": 0}),
        (CLAIM, {"name": "a", "wait_s": 61}),
        (CLAIM, {"name": "a", "extra": 1}),
        (HEARTBEAT, {"name": "a", "running": [{"id": "x", "attempt": 1}]}),
        ("/api/w/default/agent_workers/jobs/1/complete", {"attempt": 1, "status": "done"}),
        ("/api/w/default/agent_workers/jobs/abc/logs", {"attempt": 1, "offset": 0, "data": ""}),
    ]
    for path, body in cases:
        response = agent.post(path, json=body)
        assert response.status_code == 400, (path, body, response.text)
        assert set(response.json()["error"]) == {"code", "message"}


def test_a_long_poll_abandoned_by_its_agent_is_handed_no_job(
    server: TagrunProcess, api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    # A killed agent's claim stays open on the server until wait_s; jobs leased to it would sit
    # unrun until their lease expired. The server must notice the closed connection instead.
    token = agent.headers["authorization"]
    before = waiters(api)
    with httpx.Client(base_url=server.url, headers={"authorization": token},
                      timeout=httpx.Timeout(0.5)) as ghost:
        with pytest.raises(httpx.ReadTimeout):
            ghost.post(CLAIM, json={"name": "ghost", "slots": 4, "wait_s": 30})
    wait_until(lambda: waiters(api) <= before, timeout=5)
    job_id = submit(api, tag)
    [job] = agent.post(CLAIM, json={"name": "alive", "slots": 1, "wait_s": 5}).json()["jobs"]
    assert job["id"] == job_id
    assert api.get(f"/api/w/default/jobs/{job_id}").json()["worker"] == "alive"


def waiters(api: httpx.Client) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("tagrun_long_poll_waiters "):
            return float(line.split()[1])
    raise AssertionError("no tagrun_long_poll_waiters in /metrics")


def test_batch_complete_records_each_job_or_refuses_it_alone(
    server: TagrunProcess, api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    first, second, third = (submit(api, tag) for _ in range(3))
    claimed = agent.post(CLAIM, json={"name": "b1", "slots": 3, "wait_s": 5}).json()["jobs"]
    assert sorted(j["id"] for j in claimed) == [first, second, third]
    other_tag = unique_tag()
    foreign = submit(api, other_tag)
    with api_client(server.url, str(mint(api, [other_tag])["token"])) as other:
        other.post(CLAIM, json={"name": "b2", "wait_s": 5})
    body = {"name": "b1", "jobs": [
        {"id": first, "attempt": 1, "status": "succeeded", "result": {"n": 1}},
        {"id": second, "attempt": 1, "status": "failed",
         "error": {"kind": "script_error", "message": "exit 1"}},
        {"id": third, "attempt": 2, "status": "succeeded"},  # not the attempt it holds
        {"id": foreign, "attempt": 1, "status": "succeeded"},  # another token's job
        {"id": first, "attempt": 1, "status": "succeeded", "result": {"n": 1}},  # a repeat
    ]}
    answers = agent.post("/api/agent_workers/complete", json=body).json()["jobs"]
    assert [a.get("status") or a["error"]["code"] for a in answers] == [
        "succeeded", "queued", "lease_lost", "lease_lost", "succeeded"]
    assert api.get(f"/api/w/default/jobs/{first}").json()["result"] == {"n": 1}
    assert api.get(f"/api/w/default/jobs/{second}").json()["status"] == "queued"  # a retry
    assert api.get(f"/api/w/default/jobs/{third}").json()["status"] == "running"
    assert api.get(f"/api/w/default/jobs/{foreign}").json()["status"] == "running"
    bad = agent.post("/api/agent_workers/complete", json={"name": "b1", "jobs": []})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"


def test_a_claim_records_the_outcomes_it_carries_each_on_its_own(
    server: TagrunProcess, api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    first, second = submit(api, tag), submit(api, tag)
    claimed = agent.post(CLAIM, json={"name": "rides-1", "slots": 2, "wait_s": 5}).json()
    assert claimed["accepts_completed"] is True
    assert sorted(j["id"] for j in claimed["jobs"]) == [first, second]
    other_tag = unique_tag()
    foreign = submit(api, other_tag)
    with api_client(server.url, str(mint(api, [other_tag])["token"])) as other:
        other.post(CLAIM, json={"name": "rides-2", "wait_s": 5})
    third = submit(api, tag)
    carried = [
        {"id": first, "attempt": 1, "status": "succeeded", "result": [1, 2]},
        {"id": second, "attempt": 3, "status": "succeeded"},  # not the attempt it holds
        {"id": foreign, "attempt": 1, "status": "succeeded"},  # another token's job
        {"id": first, "attempt": 1, "status": "failed",  # no error: refused alone
         "error": None},
    ]
    answer = agent.post(CLAIM, json={"name": "rides-1", "slots": 1, "wait_s": 5,
                                     "completed": carried}).json()
    assert [a.get("status") or a["error"]["code"] for a in answer["completed"]] == [
        "succeeded", "lease_lost", "lease_lost", "invalid_input"]
    assert [j["id"] for j in answer["jobs"]] == [third]  # and the claim is served
    assert api.get(f"/api/w/default/jobs/{first}").json()["result"] == [1, 2]
    assert api.get(f"/api/w/default/jobs/{second}").json()["status"] == "running"
    assert api.get(f"/api/w/default/jobs/{foreign}").json()["status"] == "running"
    # With no job to hand out, a claim that carries outcomes is answered without its wait:
    # the agent's jobs are waiting for their answers.
    started = time.monotonic()
    empty = agent.post(CLAIM, json={"name": "rides-1", "wait_s": 30, "completed": [
        {"id": third, "attempt": 1, "status": "succeeded"}]}, timeout=40).json()
    assert time.monotonic() - started < 15  # far below the 30 s it asked to wait
    assert empty["jobs"] == [] and empty["completed"] == [
        {"id": third, "status": "succeeded", "error": None}]
    assert api.get(f"/api/w/default/jobs/{third}").json()["status"] == "succeeded"
    too_many = agent.post(CLAIM, json={"name": "rides-1", "completed": [carried[0]] * 1001})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "invalid_input"


def test_active_count_counts_only_jobs_the_agent_holds(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    held = submit(api, tag)
    agent.post(CLAIM, json={"name": "c1", "wait_s": 5})
    named = [{"id": held, "attempt": 1}, {"id": 2**40, "attempt": 1}]  # one it never had
    assert agent.post(HEARTBEAT, json={"name": "c1", "running": named}).json()["lost"] == [2**40]

    def active() -> int | None:
        agent.post(HEARTBEAT, json={"name": "c1", "running": named})
        rows = [a for a in api.get("/api/workers").json()["agents"] if a["name"] == "c1"]
        return rows[0]["active_count"] if rows and rows[0]["active_count"] else None

    assert wait_until(active, timeout=15, message="active_count recorded") == 1
    api.post(f"/api/w/default/jobs/{held}/cancel")


def test_nul_in_logs_and_results_is_stored_visibly_and_loses_nothing(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    """PostgreSQL cannot hold U+0000: it is shown as ␀ (one character for one, so offsets
    still count what the agent sent), and the log after it is all there."""
    job_id = submit(api, tag)
    [job] = agent.post(CLAIM, json={"name": tag, "wait_s": 5}).json()["jobs"]
    logs = f"/api/w/default/agent_workers/jobs/{job_id}/logs"
    offset = 0
    for data in ("one\n", "nul:\x00:end\n", "two\n"):
        answer = agent.post(logs, json={"name": tag, "attempt": 1, "offset": offset,
                                        "data": data})
        assert answer.status_code == 200, answer.text
        offset = answer.json()["offset"]
    assert offset == len("one\nnul:\x00:end\ntwo\n")
    done = f"/api/w/default/agent_workers/jobs/{job_id}/complete"
    body = {"name": tag, "attempt": job["attempt"], "status": "succeeded",
            "result": {"a\x00": ["\x00", "b"]}}
    assert agent.post(done, json=body).json() == {"status": "succeeded"}
    assert agent.post(done, json=body).json() == {"status": "succeeded"}  # the same repeat
    final = api.get(f"/api/w/default/jobs/{job_id}").json()
    assert final["result"] == {"a\u2400": ["\u2400", "b"]}
    assert api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"] \
        == "one\nnul:\u2400:end\ntwo\n"


def test_another_outcome_for_a_recorded_attempt_is_a_conflict(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    job_id = submit(api, tag)
    agent.post(CLAIM, json={"name": tag, "wait_s": 5})
    done = f"/api/w/default/agent_workers/jobs/{job_id}/complete"
    first = {"name": tag, "attempt": 1, "status": "succeeded", "result": {"n": 1}}
    assert agent.post(done, json=first).json() == {"status": "succeeded"}
    for other in ({**first, "result": {"n": 2}},
                  {**first, "status": "failed", "result": None,
                   "error": {"kind": "script_error", "message": "exit 1"}}):
        answer = agent.post(done, json=other)
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "completion_conflict"
        batch = agent.post("/api/agent_workers/complete", json={
            "name": tag, "jobs": [{"id": job_id, **{k: v for k, v in other.items()
                                                      if k != "name"}}]}).json()["jobs"]
        assert batch[0]["error"]["code"] == "completion_conflict"
    final = api.get(f"/api/w/default/jobs/{job_id}").json()
    assert (final["status"], final["result"]) == ("succeeded", {"n": 1})


def test_a_failure_that_cannot_succeed_again_is_not_retried(
    api: httpx.Client, agent: httpx.Client, tag: str
) -> None:
    retried, final = submit(api, tag), submit(api, tag)
    agent.post(CLAIM, json={"name": tag, "slots": 2, "wait_s": 5})
    error = {"kind": "internal", "message": "the server refused the job's result"}
    for job_id, retryable in ((retried, True), (final, False)):
        answer = agent.post(f"/api/w/default/agent_workers/jobs/{job_id}/complete", json={
            "name": tag, "attempt": 1, "status": "failed", "error": error,
            "retryable": retryable})
        assert answer.json() == {"status": "queued" if retryable else "failed"}
    job = api.get(f"/api/w/default/jobs/{final}").json()
    assert (job["status"], job["attempt"], job["max_attempts"]) == ("failed", 1, 3)
    assert job["error"] == error


def test_a_job_asks_for_its_own_lease_and_the_agent_is_told_to_renew_it_in_time(
    server: TagrunProcess, api: httpx.Client, tag: str
) -> None:
    token = mint(api, [tag])["token"]
    response = api.post("/api/w/default/jobs", json={
        "language": "bash", "content": "sleep 1", "tag": tag, "lease_s": 900})
    assert response.status_code == 201 and response.json()["lease_s"] == 900
    job_id = response.json()["id"]
    with api_client(server.url, str(token)) as agent:
        [job] = agent.post(CLAIM, json={"name": f"lease-{tag}", "wait_s": 5}).json()["jobs"]
        assert (job["id"], job["lease_s"], job["heartbeat_s"]) == (job_id, 900, 20)
        [row] = query(server.database_url, "SELECT extract(epoch FROM lease_expires_at - now())"
                      " AS left_s FROM jobs WHERE id = $1", job_id)
        assert 880 < row["left_s"] <= 900
        beat = agent.post(HEARTBEAT, json={"name": f"lease-{tag}",
                                           "running": [{"id": job_id, "attempt": 1}]})
        assert beat.json() == {"cancel": [], "lost": [], "drain": False}
        [row] = query(server.database_url, "SELECT extract(epoch FROM lease_expires_at - now())"
                      " AS left_s FROM jobs WHERE id = $1", job_id)
        assert 880 < row["left_s"] <= 900  # renewed for the job's lease, not the server's 60 s
    # Without lease_s a job keeps the server's lease, and says so with null.
    plain = api.post("/api/w/default/jobs", json={"language": "bash", "content": "true",
                                                   "tag": unique_tag()}).json()
    assert plain["lease_s"] is None
    api.post(f"/api/w/default/jobs/{plain['id']}/cancel")


def test_a_script_lease_passes_to_its_jobs_and_a_job_may_override_it(
    api: httpx.Client, tag: str
) -> None:
    path = f"f/lease/{tag}"
    deployed = api.post("/api/w/default/scripts", json={
        "path": path, "language": "bash", "content": "true", "tag": tag, "lease_s": 300})
    assert deployed.status_code == 201 and deployed.json()["lease_s"] == 300
    assert api.get(f"/api/w/default/scripts/{path}").json()["lease_s"] == 300
    inherited = api.post("/api/w/default/jobs", json={"script": path}).json()
    overridden = api.post("/api/w/default/jobs", json={"script": path, "lease_s": 120}).json()
    assert (inherited["lease_s"], overridden["lease_s"]) == (300, 120)
    for job in (inherited, overridden):
        api.post(f"/api/w/default/jobs/{job['id']}/cancel")


@pytest.mark.parametrize("lease_s", [30, 3601, 0, -5, "long"])
def test_a_lease_the_server_does_not_grant_is_refused_with_its_bounds(
    api: httpx.Client, tag: str, lease_s: object
) -> None:
    before = api.get("/api/w/default/jobs", params={"tag": tag}).json()["jobs"]
    for route, body in (
        ("/api/w/default/jobs", {"language": "bash", "content": "true", "tag": tag}),
        ("/api/w/default/jobs/batch", {"jobs": [{"language": "bash", "content": "true",
                                                 "tag": tag}]}),
        ("/api/w/default/scripts", {"path": f"f/x/{tag}", "language": "bash",
                                    "content": "true"}),
    ):
        if route.endswith("batch"):
            body["jobs"][0]["lease_s"] = lease_s  # type: ignore[index]
        else:
            body["lease_s"] = lease_s
        response = api.post(route, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        if isinstance(lease_s, int) and lease_s > 0:
            assert error["code"] == "invalid_lease"
            assert f"lease_s={lease_s}" in error["message"]
            assert "60 to 3600 seconds" in error["message"] and "TAGRUN_MAX_LEASE_S" in \
                error["message"]
        else:
            assert "lease_s" in error["message"]
    assert api.get("/api/w/default/jobs", params={"tag": tag}).json()["jobs"] == before
    assert api.get(f"/api/w/default/scripts/f/x/{tag}").status_code == 404
