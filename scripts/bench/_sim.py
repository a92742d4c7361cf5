"""Minimal simulated agents for benchmarks: many long-polls from one httpx.AsyncClient.

Each simulated agent does what an idle `tagrun-agent` with one slot does on the wire: claim
(`POST /api/agent_workers/claim`, slots 1, wait_s), complete what it was given
(identity jobs: result {}), claim again. It runs no job code and sends no heartbeat (a job
is completed at once, well inside its lease).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import httpx

CLAIM = "/api/agent_workers/claim"


class SimAgents:
    def __init__(self, url: str, *, per_client: int = 50, wait_s: float = 25.0) -> None:
        self.url = url
        self.wait_s = wait_s
        # httpcore scans every connection of its pool on each request (O(pool size)): one
        # client for 1,000 agents spends ~8 ms of CPU per request. Clients of `per_client`
        # agents each (a pool a little larger than that) keep the simulation light.
        self.per_client = per_client
        self.clients: list[httpx.AsyncClient] = []
        # Claim answers that carried jobs: (job, perf_counter when the answer arrived, agent).
        self.received: asyncio.Queue[tuple[dict[str, Any], float, str]] = asyncio.Queue()
        self.claim_sent: dict[str, float | None] = {}  # None: no claim outstanding now
        self.claims_answered = 0
        self.empty_answers = 0
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, token: str) -> None:
        if len(self._tasks) % self.per_client == 0:
            self.clients.append(httpx.AsyncClient(
                base_url=self.url, timeout=httpx.Timeout(self.wait_s + 15, pool=None),
                limits=httpx.Limits(max_connections=self.per_client + 5,
                                    max_keepalive_connections=self.per_client + 5,
                                    keepalive_expiry=2.0),  # uvicorn closes idle ones at 5 s
                trust_env=False))
        self.claim_sent[name] = None
        self._tasks.append(asyncio.create_task(self._loop(self.clients[-1], name, token),
                                               name=name))

    @property
    def count(self) -> int:
        return len(self._tasks)

    def outstanding(self) -> int:
        return sum(1 for v in self.claim_sent.values() if v is not None)

    async def _loop(self, http: httpx.AsyncClient, name: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        body = {"name": name, "slots": 1, "wait_s": self.wait_s}
        while True:
            self.claim_sent[name] = time.perf_counter()
            try:
                r = await http.post(CLAIM, json=body, headers=headers)
                t1 = time.perf_counter()
                self.claim_sent[name] = None
                r.raise_for_status()
                jobs = r.json()["jobs"]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.claim_sent[name] = None
                self.errors.append(f"{name}: claim: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                continue
            self.claims_answered += 1
            if not jobs:
                self.empty_answers += 1
            for job in jobs:
                self.received.put_nowait((job, t1, name))
                path = f"/api/w/{job['workspace']}/agent_workers/jobs/{job['id']}/complete"
                try:
                    c = await http.post(path, headers=headers, json={
                        "name": name, "attempt": job["attempt"], "status": "succeeded",
                        "result": {}})
                    c.raise_for_status()
                except httpx.HTTPError as exc:
                    self.errors.append(f"{name}: complete {job['id']}: {exc}")

    async def waiting_since(self, names: Iterable[str], settle_s: float,
                            timeout: float = 60.0) -> None:
        """Return once each of `names` has a claim outstanding, the newest sent settle_s ago."""
        names = list(names)
        deadline = time.perf_counter() + timeout
        while True:
            now = time.perf_counter()
            sent = [self.claim_sent.get(n) for n in names]
            if all(s is not None for s in sent):
                newest = max(s for s in sent if s is not None)
                if now - newest >= settle_s:
                    return
                await asyncio.sleep(settle_s - (now - newest))
            else:
                await asyncio.sleep(0.001)
            if now > deadline:
                raise TimeoutError(f"agents not all waiting after {timeout}s: {self.errors[-3:]}")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for http in self.clients:
            await http.aclose()
