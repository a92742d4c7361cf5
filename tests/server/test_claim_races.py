"""Long-polls that end just as a job is leased to them: the job still reaches the agent."""

from __future__ import annotations

import threading
import time

from tests.server.test_agent_api import CLAIM, mint, unique_tag
from tests.support.processes import api_client, wait_until


def test_jobs_leased_as_a_long_poll_runs_out_are_not_lost(
    start_process, database_url: str
) -> None:
    """Agents whose claims time out all the time (wait_s 0.02) while jobs keep coming: every
    job leased to one of them is in the answer of its claim, none is left leased to a claim
    already answered empty (it would sit 'running' until its lease ran out)."""
    server = start_process("server", database_url).wait_healthy()
    tag = unique_tag()
    received: set[int] = set()
    stop = threading.Event()
    with api_client(server.url) as api:
        token = str(mint(api, [tag])["token"])

        def agent(n: int) -> None:
            with api_client(server.url, token) as client:
                while not stop.is_set():
                    jobs = client.post(CLAIM, json={
                        "name": f"racer-{n}", "slots": 1, "wait_s": 0.02}).json()["jobs"]
                    received.update(j["id"] for j in jobs)

        agents = [threading.Thread(target=agent, args=(n,)) for n in range(12)]
        for thread in agents:
            thread.start()
        try:
            submitted = set()
            deadline = time.monotonic() + 20
            while len(submitted) < 800 and time.monotonic() < deadline:
                submitted.add(api.post("/api/w/default/jobs", json={
                    "language": "identity", "content": "", "tag": tag}).json()["id"])
            wait_until(lambda: submitted <= received, 10, message="every job to reach an agent")
            assert len(submitted) >= 100
        finally:
            stop.set()
            for thread in agents:
                thread.join()
