"""A small in-memory stand-in for the server's agent routes, served through MockTransport.

Only for unit tests of the agent's own logic; the real routes are tested end to end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TOKEN = "agent-test-token.s3cr3t-value"


def job(job_id: int, content: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": job_id, "workspace": "default", "language": "bash", "content": content,
        "args": {}, "tag": "bash", "attempt": 1, "timeout_s": 30, "lease_s": 60,
        "heartbeat_s": 0.05, "log_offset": 0,
    }
    return {**base, **overrides}


def error(status: int, code: str, message: str = "") -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message or code}})


@dataclass
class FakeServer:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    logs: dict[int, str] = field(default_factory=dict)
    completions: dict[int, dict[str, Any]] = field(default_factory=dict)
    released: list[dict[str, Any]] = field(default_factory=list)
    cancel: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    claims: int = 0
    # Hooks: called as the fake receives a request, to drive a test from what the agent does.
    on_claim: Callable[[int], None] | None = None
    on_logs: Callable[[int, str], None] | None = None
    on_complete: Callable[[int, dict[str, Any]], None] | None = None
    # Return a response to override the normal answer for a path (e.g. a 401 or 409).
    override: Callable[[str, dict[str, Any]], httpx.Response | None] | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        path = request.url.path
        body = json.loads(request.content)
        self.requests.append((path, body))
        if self.override is not None and (answer := self.override(path, body)) is not None:
            return answer
        if path == "/api/agent_workers/claim":
            return await self._claim(body)
        if path == "/api/agent_workers/heartbeat":
            ids = {r["id"] for r in body["running"]}
            return httpx.Response(200, json={"cancel": sorted(ids & self.cancel),
                                             "lost": sorted(ids & self.lost)})
        if path == "/api/agent_workers/release":
            self.released.extend(body["jobs"])
            return httpx.Response(200, json={"released": [j["id"] for j in body["jobs"]]})
        if path == "/api/agent_workers/complete":
            return self._complete_many(body)
        job_id, action = int(path.split("/")[-2]), path.split("/")[-1]
        if action == "logs":
            return self._append_logs(job_id, body)
        if action == "complete":
            return self._complete(job_id, body)
        return error(404, "not_found")

    def _complete(self, job_id: int, body: dict[str, Any]) -> httpx.Response:
        self.completions[job_id] = body
        if self.on_complete is not None:
            self.on_complete(job_id, body)
        return httpx.Response(200, json={"status": body["status"]})

    def _complete_many(self, body: dict[str, Any]) -> httpx.Response:
        """Each job as if sent alone to its own route (overrides included)."""
        answers = []
        for item in body["jobs"]:
            job_id = item["id"]
            path = f"/api/w/default/agent_workers/jobs/{job_id}/complete"
            one = self.override(path, item) if self.override is not None else None
            one = one or self._complete(job_id, item)
            answers.append({"id": job_id, **one.json()})  # {"status"} or {"error"}
        return httpx.Response(200, json={"jobs": answers})

    async def _claim(self, body: dict[str, Any]) -> httpx.Response:
        self.claims += 1
        if self.on_claim is not None:
            self.on_claim(self.claims)
        if not self.jobs:
            # Held open like the real long-poll; the agent cancels it when it stops.
            await asyncio.sleep(body["wait_s"])
        handed, self.jobs = self.jobs[: body["slots"]], self.jobs[body["slots"]:]
        return httpx.Response(200, json={"jobs": handed})

    def _append_logs(self, job_id: int, body: dict[str, Any]) -> httpx.Response:
        text = self.logs.get(job_id, "")
        offset, data = body["offset"], body["data"]
        if offset > len(text):
            return error(400, "bad_offset", f"offset {offset} past the end {len(text)}")
        self.logs[job_id] = text[:offset] + data
        if self.on_logs is not None:
            self.on_logs(job_id, data)
        return httpx.Response(200, json={"offset": offset + len(data)})
