"""Job-limited agent tokens (max_jobs), over HTTP against real servers: the budget holds for
claims that race each other on two replicas, and a claim never takes more than is left."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
import jwt

from tests.server.test_agent_api import CLAIM, mint, submit, unique_tag
from tests.support.processes import TagrunProcess, api_client

SESSION = "tagrun-agent-session"


def simulated_agent(url: str, token: str) -> httpx.Client:
    """An agent process as the server sees it: its token, and a session of its own."""
    client = api_client(url, token)
    client.headers[SESSION] = uuid.uuid4().hex
    return client


def token_row(api: httpx.Client, jti: object) -> dict[str, Any]:
    tokens = api.get("/api/agent_tokens", params={"all": "true"}).json()["agent_tokens"]
    return next(t for t in tokens if t["jti"] == jti)  # type: ignore[no-any-return]


def race(urls: list[str], token: str, names: list[str]) -> list[dict[str, Any]]:
    """One claim per url, by agents of `token` named `names`, sent at the same moment."""
    answers: list[dict[str, Any]] = []
    start = threading.Barrier(len(urls))

    def claim(url: str, name: str) -> None:
        with simulated_agent(url, token) as agent:
            start.wait()
            answer = agent.post(CLAIM, json={"name": name, "slots": 2, "wait_s": 3})
            assert answer.status_code == 200, answer.text
            answers.append(answer.json())

    racers = [threading.Thread(target=claim, args=pair) for pair in zip(urls, names,
                                                                         strict=True)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert len(answers) == len(urls)
    return answers


def test_two_claims_racing_on_two_replicas_never_both_get_a_one_job_token_s_job(
        start_process: Any, database_url: str) -> None:
    replicas: list[TagrunProcess] = [start_process("server", database_url).wait_healthy(),
                                     start_process("server", database_url).wait_healthy()]
    with api_client(replicas[0].url) as api:
        for round_ in range(8):
            tag = unique_tag()
            for _ in range(3):
                submit(api, tag)
            minted = mint(api, [tag], max_jobs=1)
            answers = race([r.url for r in replicas], str(minted["token"]),
                           [f"racer-{round_}-a", f"racer-{round_}-b"])

            leased = [job["id"] for answer in answers for job in answer["jobs"]]
            assert len(leased) == 1, answers
            assert all(answer["spent"] for answer in answers), answers
            assert token_row(api, minted["jti"])["jobs_claimed"] == 1
            queued = api.get("/api/w/default/jobs", params={"tag": tag, "status": "queued"})
            assert len(queued.json()["jobs"]) == 2


def test_a_claim_gets_what_is_left_of_the_budget_and_nothing_after(
        server: TagrunProcess, api: httpx.Client) -> None:
    tag = unique_tag()
    for _ in range(5):
        submit(api, tag)
    minted = mint(api, [tag], max_jobs=2)
    claims = jwt.decode(str(minted["token"]), options={"verify_signature": False},
                        audience="tagrun-agent")
    assert (minted["max_jobs"], claims["max_jobs"]) == (2, 2)
    with simulated_agent(server.url, str(minted["token"])) as agent:
        first = agent.post(CLAIM, json={"name": "budget-1", "slots": 5, "wait_s": 2}).json()
        assert (len(first["jobs"]), first["spent"]) == (2, True)
        again = agent.post(CLAIM, json={"name": "budget-1", "slots": 5, "wait_s": 10})
        assert again.elapsed.total_seconds() < 5  # spent: answered at once, not after the wait
        assert (again.json()["jobs"], again.json()["spent"]) == ([], True)
        for job in first["jobs"]:  # what it holds it still finishes
            done = agent.post(f"/api/w/default/agent_workers/jobs/{job['id']}/complete", json={
                "attempt": job["attempt"], "status": "succeeded", "result": 1,
                "name": "budget-1"})
            assert done.status_code == 200, done.text
    row = token_row(api, minted["jti"])
    assert (row["max_jobs"], row["jobs_claimed"]) == (2, 2)


def test_an_empty_claim_uses_none_of_the_budget(server: TagrunProcess, api: httpx.Client
                                                ) -> None:
    tag = unique_tag()
    minted = mint(api, [tag], max_jobs=1)
    with simulated_agent(server.url, str(minted["token"])) as agent:
        empty = agent.post(CLAIM, json={"name": "budget-2", "wait_s": 0.5}).json()
        assert (empty["jobs"], empty["spent"]) == ([], False)
        job_id = submit(api, tag)
        got = agent.post(CLAIM, json={"name": "budget-2", "wait_s": 5}).json()
        assert ([j["id"] for j in got["jobs"]], got["spent"]) == ([job_id], True)


def test_an_unlimited_token_is_never_spent(server: TagrunProcess, api: httpx.Client) -> None:
    tag = unique_tag()
    minted = mint(api, [tag])
    assert minted["max_jobs"] is None
    submit(api, tag)
    with simulated_agent(server.url, str(minted["token"])) as agent:
        answer = agent.post(CLAIM, json={"name": "budget-3", "wait_s": 5}).json()
        assert (len(answer["jobs"]), answer["spent"]) == (1, False)
    row = token_row(api, minted["jti"])
    assert (row["max_jobs"], row["jobs_claimed"]) == (None, 0)


def test_bad_max_jobs_are_refused_in_plain_words(api: httpx.Client) -> None:
    for bad in (0, -1, "x", 1.5, True):
        response = api.post("/api/agent_tokens", json={"group": "edge", "tags": ["a"],
                                                       "max_jobs": bad})
        assert response.status_code == 400, (bad, response.text)
        error = response.json()["error"]
        assert error["code"] and "max_jobs" in error["message"], (bad, error)
