"""A small in-memory stand-in for the server's agent routes, served through MockTransport.

Only for unit tests of the agent's own logic; the real routes are tested end to end. It
reads every request with the wire models the server uses (strictly: a field the server would
refuse fails the test) and builds its answers from the models the agent reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from tagrun.shared import agent_wire as wire

TOKEN = "agent-test-token.s3cr3t-value"


def job(job_id: int, content: str, **overrides: Any) -> dict[str, Any]:
    """A job of a claim answer, as the server would send it (overrides may make it wrong)."""
    sent = wire.AgentJob(id=job_id, workspace="default", language="bash", content=content,
                         tag="bash", attempt=1, timeout_s=30, lease_s=60, heartbeat_s=0.05)
    return {**msgspec.to_builtins(sent), **overrides}


def _answer(model: msgspec.Struct) -> httpx.Response:
    return httpx.Response(200, json=msgspec.to_builtins(model))


def _fields(body: msgspec.Struct) -> dict[str, Any]:
    """A decoded request as a dict with every field, those the agent left out included
    (but not those it may leave unset)."""
    return {name: msgspec.to_builtins(getattr(body, name)) for name in body.__struct_fields__
            if getattr(body, name) is not msgspec.UNSET}


_MODELS: dict[str, type[msgspec.Struct]] = {
    "claim": wire.ClaimIn, "heartbeat": wire.HeartbeatIn, "release": wire.ReleaseIn,
    "complete_many": wire.CompleteManyIn, "logs": wire.LogsIn, "complete": wire.CompleteIn,
    "goodbye": wire.GoodbyeIn,
}


def _route(path: str) -> str:
    action = path.rsplit("/", 1)[-1]
    if path.startswith("/api/agent_workers/"):
        return "complete_many" if action == "complete" else action
    return action


def error(status: int, code: str, message: str = "") -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message or code}})


@dataclass
class FakeServer:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    logs: dict[int, str] = field(default_factory=dict)
    completions: dict[int, dict[str, Any]] = field(default_factory=dict)
    released: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # jobs given back unrun
    cancel: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    claims: int = 0
    # Like a current server: it records outcomes sent with a claim (ClaimIn.completed).
    accepts_completed: bool = False
    # Log requests of these jobs are answered only once their event is set.
    hold_logs: dict[int, asyncio.Event] = field(default_factory=dict)
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
        model = _MODELS.get(_route(path))
        if model is None:
            return error(404, "not_found")
        checked = msgspec.json.decode(request.content, type=model)  # as the server reads it
        body = json.loads(request.content)  # as the agent sent it
        self.requests.append((path, body))
        if self.override is not None and (answer := self.override(path, body)) is not None:
            return answer
        if path == "/api/agent_workers/claim":
            return await self._claim(_fields(checked))  # with slots and wait_s defaulted
        if path == "/api/agent_workers/heartbeat":
            ids = {r["id"] for r in body["running"]}
            return _answer(wire.HeartbeatOut(cancel=sorted(ids & self.cancel),
                                             lost=sorted(ids & self.lost)))
        if path == "/api/agent_workers/release":
            self.released.extend(body["jobs"])
            self.refused.extend(body.get("refusals", []))
            given = [*body["jobs"], *body.get("refusals", [])]
            return _answer(wire.Released(released=[j["id"] for j in given]))
        if path == "/api/agent_workers/goodbye":
            return _answer(wire.Goodbye(stopped=True))
        if path == "/api/agent_workers/complete":
            return self._complete_many(body)
        job_id, action = int(path.split("/")[-2]), path.split("/")[-1]
        if action == "logs":
            if (held := self.hold_logs.get(job_id)) is not None:
                await held.wait()
            return self._append_logs(job_id, body)
        if action == "complete":
            return self._complete(job_id, body)
        return error(404, "not_found")

    def _complete(self, job_id: int, body: dict[str, Any]) -> httpx.Response:
        self.completions[job_id] = body
        if self.on_complete is not None:
            self.on_complete(job_id, body)
        return _answer(wire.Completed(status=body["status"]))

    def _complete_many(self, body: dict[str, Any]) -> httpx.Response:
        return _answer(wire.CompletedMany(jobs=self._complete_each(body["jobs"])))

    def _complete_each(self, items: list[dict[str, Any]]) -> list[wire.CompletedItem]:
        """Each job as if sent alone to its own route (overrides included)."""
        answers = []
        for item in items:
            job_id = item["id"]
            path = f"/api/w/default/agent_workers/jobs/{job_id}/complete"
            one = self.override(path, item) if self.override is not None else None
            one = one or self._complete(job_id, item)
            answers.append(msgspec.convert({"id": job_id, **one.json()},  # status or error
                                           wire.CompletedItem))
        return answers

    async def _claim(self, body: dict[str, Any]) -> httpx.Response:
        self.claims += 1
        answer: dict[str, Any] = {"group": "edge", "tags": ["bash"], "server_version": "9.9.9"}
        if self.accepts_completed:
            answer["accepts_completed"] = True
        if "completed" in body:  # recorded first; such a claim is answered at once
            answer["completed"] = msgspec.to_builtins(self._complete_each(body["completed"]))
        if self.on_claim is not None:
            self.on_claim(self.claims)
        if not self.jobs and "completed" not in body:
            # Held open like the real long-poll; the agent cancels it when it stops.
            await asyncio.sleep(body["wait_s"])
        handed, self.jobs = self.jobs[: body["slots"]], self.jobs[body["slots"]:]
        return httpx.Response(200, json={"jobs": handed, **answer})

    def _append_logs(self, job_id: int, body: dict[str, Any]) -> httpx.Response:
        text = self.logs.get(job_id, "")
        offset, data = body["offset"], body["data"]
        if offset > len(text):
            return error(400, "bad_offset", f"offset {offset} past the end {len(text)}")
        self.logs[job_id] = text[:offset] + data
        if self.on_logs is not None:
            self.on_logs(job_id, data)
        return _answer(wire.LogsAck(offset=offset + len(data)))
