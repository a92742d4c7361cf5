"""Agent heartbeats and liveness, written in batches: one statement per interval per process,
however many agents are connected or jobs are running.

An agent's heartbeat waits for the next flush (at most `interval_s`) and gets that flush's
answer for its jobs: which to cancel, which it has lost. Agents that are only long-polling
are marked alive in the same statement, at most every `seen_interval_s`: the statement marks
this process alive, and an agent's record names the process holding it, so it is written only
when the agent comes, goes, or changes how many jobs it runs. 1,000 idle agents cost one row
write per interval, not 1,000.

An agent held here is marked gone only once two looks in a row, at least `seen_interval_s`
apart, found it neither waiting in a long-poll nor making a request. One look is not enough:
an agent between two requests (a claim answered, its next claim not yet read; a busy agent
between heartbeats) holds nothing open, and under load that gap is the server's own: a claim
leaves the dispatcher when its wait ends, and the agent is counted as seen only once its
handler runs again. With 10,000 agents re-polling every 25 s, hundreds were caught in that
gap at each look, each marked gone and held again at the next (two row writes apiece, ~400
a second). A gone agent is marked with the time it was last found here, so its staleness
still counts from then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tagrun.server.agent_tokens import jti_of
from tagrun.server.store import DATABASE_ERRORS, Store
from tagrun.shared.signing import parse_verify_header

log = logging.getLogger("tagrun.heartbeats")


@dataclass
class _Beat:
    holder: str
    key: str  # the holder key its leases were claimed under (token and session)
    running: Sequence[tuple[int, int]]
    future: asyncio.Future[tuple[list[int], list[int]]] = field(
        default_factory=asyncio.Future)


@dataclass
class AgentRecord:
    group: str
    tags: tuple[str, ...]
    ip: str | None
    version: str
    jti: str
    key: str = ""  # the token and the agent process's session: a new process is a new key
    active: int = 0
    verify: str | None = None  # its Tagrun-Agent-Verify header: how it checks signatures
    info: dict[str, Any] | None = None  # its Tagrun-Agent-Info header: os, arch, slots


class Heartbeats:
    def __init__(self, store: Store, *, lease_s: float, stale_after_s: float = 30.0,
                 interval_s: float = 0.5, seen_interval_s: float = 5.0) -> None:
        self.store = store
        self.lease_s = lease_s
        self.stale_after_s = stale_after_s
        self.interval_s = interval_s
        self.seen_interval_s = seen_interval_s
        self.process = uuid.uuid4().hex  # this server process, in `server_processes`
        self.agents: dict[str, AgentRecord] = {}
        self._beats: list[_Beat] = []
        self._seen: set[str] = set()
        self._held: set[str] = set()  # agents marked alive through this process last time
        self._heard: dict[str, float] = {}  # held agent -> when a look last found it here
        self._last_seen_flush = 0.0
        self._live: Callable[[], set[str]] = set
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, live_agents: Callable[[], set[str]]) -> None:
        """`live_agents` names agents alive right now (e.g. holding a long-poll open)."""
        self._live = live_agents
        self._task = asyncio.create_task(self._run(), name="heartbeats")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def seen(self, name: str, record: AgentRecord) -> bool:
        """An agent made a request; the first time this process sees it, record it. True if
        it is a new process of an agent that was asked to drain: the drain is over.

        Raises AgentNameTaken, changing nothing, if a live agent of another token has the name."""
        known = self.agents.get(name)
        undrained = False
        if known is None or (known.key, known.ip) != (record.key, record.ip):
            undrained = await self.store.upsert_agent(
                name, record.group, record.tags, record.ip, record.version, record.jti,
                self.process, stale_after_s=self.stale_after_s, session_key=record.key,
                verify=parse_verify_header(record.verify) if record.verify else None,
                info=record.info)
            self.agents[name] = record
            log.info("agent.connected", extra={"agent": name, "group": record.group,
                                               "tags": list(record.tags), "ip": record.ip,
                                               "version": record.version})
        self._seen.add(name)
        return undrained

    def ran(self, name: str, key: str, delta: int, *, running: int | None = None) -> None:
        """`name` (of holder key `key`) took `delta` jobs (a claim, which may say how many it
        was `running` already) or gave them up (< 0: a completion, a release): its state,
        busy or live, is written within a flush rather than at its next heartbeat."""
        known = self.agents.get(name)
        if known is not None and known.key == key:
            base = running if running is not None else known.active
            known.active = max(base + delta, 0)
            self._seen.add(name)

    def forget(self, name: str) -> None:
        """The agent said goodbye: mark it alive no more (it is recorded again, as a new
        process, when an agent of that name comes back)."""
        self.agents.pop(name, None)
        self._seen.discard(name)
        self._held.discard(name)
        self._heard.pop(name, None)

    async def beat(self, holder: str, key: str, running: Sequence[tuple[int, int]]
                   ) -> tuple[list[int], list[int]]:
        """Extend the leases `holder` holds under `key`; returns (ids to cancel, ids lost)."""
        beat = _Beat(holder, key, running)
        self._beats.append(beat)
        self._seen.add(holder)
        self._wake.set()
        return await beat.future

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.seen_interval_s)
                await asyncio.sleep(self.interval_s)  # gather the beats of one interval
            except TimeoutError:
                pass  # no beats: still mark long-polling agents alive now and then
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        beats, self._beats = self._beats, []
        now = time.monotonic()
        seen: dict[str, tuple[str, int]] = {}
        gone: dict[str, float] = {}  # name -> seconds since it was last heard from
        between: set[str] = set()
        looked = now - self._last_seen_flush >= self.seen_interval_s or beats
        if looked:
            names = self._seen | self._live()
            heard = self._heard
            for name in names:
                heard[name] = now
            seen = {n: (self.agents[n].jti, self.agents[n].active)
                    for n in names if n in self.agents}
            # Missed by this look only, or heard from within seen_interval_s: between two
            # requests. Its record stands as it is, neither rewritten nor marked gone.
            previous = self._last_seen_flush
            between = {n for n in self._held - seen.keys()
                       if heard.get(n, now) >= previous
                       or now - heard.get(n, now) < self.seen_interval_s}
            gone = {n: now - heard.get(n, now) for n in self._held - seen.keys() - between}
            self._seen, self._last_seen_flush = set(), now
        held = [(job_id, attempt, b.holder, b.key)
                for b in beats for job_id, attempt in b.running]
        if not held and not seen and not gone:
            for beat in beats:
                beat.future.set_result(([], []))
            return
        try:
            rows = await self.store.heartbeat_batch(held, seen, self.lease_s,
                                                    process=self.process, gone=gone)
        except DATABASE_ERRORS as exc:
            log.warning("heartbeats.flush_failed", extra={"error": str(exc)})
            self._seen |= seen.keys()  # marked alive next time; `gone` is worked out again
            for beat in beats:
                beat.future.set_exception(exc)
            return
        if looked:
            self._held = seen.keys() | between
            for name in gone:
                self._heard.pop(name, None)
        outcomes = iter(rows)  # in the order of `held`: beat by beat
        for beat in beats:
            cancel: list[int] = []
            lost: list[int] = []
            for (job_id, _), (was_lost, cancelled) in zip(beat.running, outcomes, strict=False):
                if was_lost:
                    lost.append(job_id)
                elif cancelled:
                    cancel.append(job_id)
            known = self.agents.get(beat.holder)
            if known is not None and jti_of(beat.key) == known.jti:
                known.active = len(beat.running) - len(lost)  # what it named, less what it lost
            if not beat.future.done():
                beat.future.set_result((cancel, lost))
