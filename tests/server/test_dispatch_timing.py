"""The dispatcher's own clock: delayed jobs reach waiting agents when they fall due, even
while agents claim all the time and the safety-net poll is slow."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.server.test_agent_api import CLAIM, mint, unique_tag
from tests.server.test_submit_handoff import waiting_claim
from tests.support.processes import api_client


def test_a_delayed_job_reaches_claiming_agents_when_due_despite_constant_claims(
    start_process, database_url: str
) -> None:
    server = start_process("server", database_url,
                           env={"TAGRUN_POLL_INTERVAL_S": "60"}).wait_healthy()
    tag = unique_tag()
    received: list[tuple[datetime, int]] = []
    got = threading.Event()
    with api_client(server.url) as api:
        token = str(mint(api, [tag])["token"])

        def agent(n: int) -> None:  # claims several times a second until someone gets it
            with api_client(server.url, token) as client:
                while not got.is_set():
                    jobs = client.post(CLAIM, json={
                        "name": f"a{n}", "slots": 1, "wait_s": 0.2}).json()["jobs"]
                    if jobs:
                        received.append((datetime.now(UTC), jobs[0]["id"]))
                        got.set()

        agents = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
        for thread in agents:
            thread.start()
        run_at = datetime.now(UTC) + timedelta(seconds=1.5)
        try:
            job = api.post("/api/w/default/jobs", json={
                "language": "bash", "content": "true", "tag": tag,
                "run_at": run_at.isoformat()}).json()
            got.wait(15)
        finally:
            got.set()
            for thread in agents:
                thread.join()
    assert [j for _, j in received] == [job["id"]], "the delayed job was not handed out once"
    late = (received[0][0] - run_at).total_seconds()
    assert 0 <= late < 1.0, f"handed out {late:+.2f}s from when it was due (safety poll: 60s)"


def test_a_capped_job_reaches_a_waiting_agent_at_once_and_the_next_when_room_frees(
    start_process, database_url: str
) -> None:
    server = start_process("server", database_url,
                           env={"TAGRUN_POLL_INTERVAL_S": "60"}).wait_healthy()
    tag = unique_tag()
    with api_client(server.url) as api:
        token = str(mint(api, [tag])["token"])
        assert api.post("/api/w/default/scripts", json={
            "path": f"f/{tag}", "language": "bash", "content": "true", "tag": tag,
            "concurrency_limit": 1}).status_code == 201
        with api_client(server.url, token) as agent:
            # An empty claim first: the server now knows no capped job is queued.
            assert agent.post(CLAIM, json={"name": "a", "slots": 2, "wait_s": 0.1}
                              ).json()["jobs"] == []
            ids = api.post("/api/w/default/jobs/batch", json={
                "jobs": [{"script": f"f/{tag}"}] * 2}).json()["ids"]
            started = datetime.now(UTC)
            first = agent.post(CLAIM, json={"name": "a", "slots": 2, "wait_s": 10}).json()
            assert [j["id"] for j in first["jobs"]] == ids[:1], "one at a time, oldest first"
            assert (datetime.now(UTC) - started).total_seconds() < 1.0

            def finish_first() -> None:
                job = first["jobs"][0]
                agent.post(f"/api/w/default/agent_workers/jobs/{job['id']}/complete",
                           json={"name": "a", "attempt": job["attempt"],
                                 "status": "succeeded"}).raise_for_status()
            timer = threading.Timer(0.3, finish_first)
            timer.start()
            try:
                with api_client(server.url, token) as other:
                    freed = datetime.now(UTC)
                    second = other.post(CLAIM, json={"name": "b", "slots": 1,
                                                     "wait_s": 10}).json()
            finally:
                timer.join()
            assert [j["id"] for j in second["jobs"]] == ids[1:]
            assert (datetime.now(UTC) - freed).total_seconds() < 1.3, "room freed: woken"


def test_a_claim_that_arrives_while_the_server_stops_is_answered_empty_soon(
    database_url: str,
) -> None:
    """Once the long-polls are ended at stop, a claim coming in on a kept-alive connection
    gets no jobs within a moment, instead of waiting until uvicorn cancels it (a 500)."""
    import asyncio
    import time

    from tagrun.server.dispatcher import CLOSED_CLAIM_PAUSE_S, Dispatcher
    from tagrun.server.listener import Listener
    from tagrun.server.store import Store, create_pool

    async def scenario() -> float:
        pool = await create_pool(database_url, size=2)
        listener = Listener(database_url)
        await listener.start()
        try:
            dispatcher = Dispatcher(Store(pool), listener, lease_s=30, poll_s=60)
            await dispatcher.start()
            await dispatcher.close()
            started = time.monotonic()
            assert await dispatcher.claim("late", ("t",), 1, 25, "jti") == []
            return time.monotonic() - started
        finally:
            await listener.close()
            await pool.close()
    took = asyncio.run(scenario())
    assert took < CLOSED_CLAIM_PAUSE_S + 0.5, took


def test_a_job_whose_notify_was_lost_reaches_a_waiting_agent_at_the_next_poll(
    start_process, database_url: str
) -> None:
    """The safety net: one look at the queue per poll finds what no NOTIFY announced."""
    server = start_process("server", database_url,
                           env={"TAGRUN_POLL_INTERVAL_S": "1"}).wait_healthy()
    tag = unique_tag()
    with api_client(server.url) as api:
        claim = waiting_claim(server, api, str(mint(api, [tag])["token"]), "net", wait_s=20)
        job_id = asyncio.run(queue_unannounced(database_url, tag))
        claim.join(30)
    assert [j["id"] for j in claim.jobs or []] == [job_id], \
        "the job queued without a NOTIFY was not handed out"


async def queue_unannounced(dsn: str, tag: str) -> int:
    """A job queued with the queue's NOTIFY trigger off: as if its notification was lost."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE queue DISABLE TRIGGER queue_notify")
            job_id = await conn.fetchval(
                "INSERT INTO jobs (workspace, language, content, tag, max_attempts) "
                "VALUES ('default', 'bash', 'true', $1, 1) RETURNING id", tag)
            await conn.execute("INSERT INTO queue (job_id, tag, priority, run_at) "
                               "VALUES ($1, $2, 0, now())", job_id, tag)
            await conn.execute("ALTER TABLE queue ENABLE TRIGGER queue_notify")
        return int(job_id)
    finally:
        await conn.close()
