"""Idle agents cost no row writes: an agent between two requests is not marked gone.

A server process marks the agents it holds alive by marking itself alive; an agent's record
is written only when it comes, goes, or changes. Every `seen_interval_s` (5 s) the server
looks for the agents it holds: waiting in a long-poll, or heard from since the last look. An
agent between two requests (its claim answered, its next claim not yet read) is neither,
and under load that gap is the server's own: with 10,000 agents re-polling, hundreds were
caught in it at every look, marked gone, and held again at the next look (~400 row writes a
second, idle). Here the gap is made long on purpose (the agents pause between claims, longer
than one look interval and shorter than two), so that looks fall into it whatever the
machine's speed: the records must stay untouched. Agents that stop for good must still be
marked gone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import httpx

from tests.server.test_agent_api import CLAIM, mint, unique_tag
from tests.support.processes import api_client

AGENTS = 300
STOPPED = 20  # of them, stopped for good at the end
WAIT_S = 1.0  # each claim is answered (empty) after this
PAUSE_S = 6.0  # then the agent pauses: longer than the server's look interval (5 s)
CYCLES = 3  # claims each agent has answered within the window, at least
LOOKS = 4  # the server's looks (its process marked alive) within the window, at least
DEADLINE_S = 180.0


async def _until(predicate: Any, what: str, timeout: float = DEADLINE_S) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.2)
    return value


async def _idle_agents(url: str, token: str, dsn: str) -> None:
    cycles: Counter[str] = Counter()
    errors: list[str] = []
    names = [f"idle-{i}" for i in range(AGENTS)]
    stopped = set(names[:STOPPED])
    headers = {"Authorization": f"Bearer {token}"}

    def client() -> httpx.AsyncClient:  # connections idle for PAUSE_S are not reused
        return httpx.AsyncClient(base_url=url, headers=headers, timeout=30, trust_env=False,
                                 limits=httpx.Limits(keepalive_expiry=1.0))

    async def agent(http: httpx.AsyncClient, name: str) -> None:
        while True:
            try:
                r = await http.post(CLAIM, json={"name": name, "slots": 1, "wait_s": WAIT_S})
                r.raise_for_status()
                assert r.json()["jobs"] == [], r.text
            except httpx.HTTPError as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
            cycles[name] += 1
            await asyncio.sleep(PAUSE_S)

    clients = [client() for _ in range(AGENTS // 50 + 1)]
    stoppers = client()
    tasks = {name: asyncio.create_task(agent(stoppers if name in stopped
                                             else clients[i % len(clients)], name))
             for i, name in enumerate(names)}
    db = await asyncpg.connect(dsn)
    try:
        async def held() -> bool:
            n = await db.fetchval("SELECT count(*) FROM workers WHERE name = ANY($1::text[])"
                                  " AND via IS NOT NULL", names)
            return bool(n == AGENTS)
        await _until(held, f"all {AGENTS} agents recorded as held by the server")

        async def versions() -> dict[str, str]:
            rows = await db.fetch("SELECT name, xmin::text AS v FROM workers"
                                  " WHERE name = ANY($1::text[])", names)
            return {r["name"]: r["v"] for r in rows}

        before, start = await versions(), dict(cycles)
        looks: set[Any] = set()

        async def window_over() -> bool:
            looks.add(await db.fetchval("SELECT max(last_seen) FROM server_processes"))
            return len(looks) > LOOKS and all(cycles[n] - start.get(n, 0) >= CYCLES
                                              for n in names)
        await _until(window_over, f"{CYCLES} claims of every agent and {LOOKS} looks")
        after = await versions()
        rewritten = sorted(n for n in names if after.get(n) != before[n])
        assert not errors, errors[:5]
        assert rewritten == [], (
            f"{len(rewritten)} of {AGENTS} idle agents' records were rewritten while they "
            f"paused between claims: {rewritten[:10]}")

        # Agents that stop for good are still marked gone (no longer held by the server).
        for name in stopped:
            tasks[name].cancel()
        await stoppers.aclose()

        async def gone() -> bool:
            rows = await db.fetch("SELECT name FROM workers WHERE name = ANY($1::text[])"
                                  " AND via IS NULL", names)
            return {r["name"] for r in rows} == stopped
        await _until(gone, f"the {STOPPED} stopped agents to be marked gone")
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for http in clients:
            await http.aclose()
        await stoppers.aclose()
        await db.close()


def test_idle_agents_pausing_between_claims_cost_no_row_writes(
    start_process, database_url: str
) -> None:
    server = start_process("server", database_url).wait_healthy()
    with api_client(server.url) as api:
        token = str(mint(api, [unique_tag()])["token"])
    asyncio.run(_idle_agents(server.url, token, database_url))
