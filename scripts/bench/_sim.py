"""Minimal simulated agents for benchmarks: many long-polls from one event loop.

Each simulated agent does what an idle `tagrun-agent` with one slot does on the wire: claim
(`POST /api/agent_workers/claim`, slots 1, wait_s), complete what it was given
(identity jobs: result {}), claim again. It runs no job code and sends no heartbeat (a job
is completed at once, well inside its lease).

`SimAgents` runs them in the caller's event loop, each on a keep-alive connection of its own
(`RawConnection`, a few lines of HTTP/1.1 rather than httpx, whose CPU per request made the
simulator the largest load on the machine). `SimProcesses` runs more of them in child
processes (`python _sim.py`, one event loop each), so that thousands of agents do not queue
behind one another in one loop: a simulator that falls behind re-polls late, which the server
sees as agents that come and go. A child reads its agents as one JSON line on stdin, reports
its counts as a JSON line on stdout every 0.5 s, and exits when its stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

CLAIM = "/api/agent_workers/claim"


class WireError(Exception):
    """The raw client's connection failed or its answer was not HTTP it understands."""


class RawConnection:
    """One agent's keep-alive HTTP/1.1 connection, as little client as the claim loop needs.

    httpx spends ~1-3 ms of CPU per request (its pool, its models): 10,000 agents re-polling
    every 25 s took more CPU than the server they measure, on the same cores. This writes the
    request and reads a Content-Length (or chunked) answer straight off an asyncio stream."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, path: str, headers: bytes, body: bytes) -> tuple[int, bytes]:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Type: "
                              b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                                  path.encode(), self.host.encode(), self.port, headers,
                                  len(body), body))
            status_line = await self.reader.readline()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise WireError(f"not an HTTP answer: {status_line[:80]!r}")
            length, chunked, close = 0, False, False
            while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = line.partition(b":")
                key = key.strip().lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif key == b"connection":
                    close = b"close" in value.lower()
            if chunked:
                data = b""
                while size := int((await self.reader.readline()).split(b";")[0], 16):
                    data += await self.reader.readexactly(size + 2)
                    data = data[:-2]
                await self.reader.readline()
            else:
                data = await self.reader.readexactly(length)
            if close:
                self.close()
            return int(parts[1]), data
        except BaseException:  # failed, cancelled or timed out mid-request: start afresh
            self.close()
            raise


class Submitter:
    """Jobs submitted through a minimal HTTP/1.1 client (RawConnection, on one kept-alive
    connection) or through httpx (`client`'s own): the first measures the server's dispatch,
    the second what a submitter using httpx sees, its own work per request included
    (~1-2 ms after a pause on the project's machine). Benchmarks alternate the two."""

    KINDS = ("raw", "httpx")

    def __init__(self, client: httpx.AsyncClient, path: str) -> None:
        self.client, self.path = client, path
        url = client.base_url
        self.raw = RawConnection(url.host, url.port or 80)
        self.auth = f"Authorization: {client.headers['Authorization']}\r\n".encode()

    async def submit(self, how: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, answer) of submitting `body` through `how`: "raw" or "httpx"."""
        if how == "raw":
            status, data = await self.raw.request(self.path, self.auth, json.dumps(body).encode())
            return status, json.loads(data)
        r = await self.client.post(self.path, json=body)
        return r.status_code, r.json()

    @staticmethod
    def check(status: int, made: dict[str, Any], received: dict[str, Any]) -> None:
        """The submit created the job the agent received."""
        if status != 201:
            raise RuntimeError(f"submit answered {status}: {made}")
        if received["id"] != made["id"]:
            raise RuntimeError(f"agent got job {received['id']}, submitted {made['id']}")

    def close(self) -> None:
        self.raw.close()


class SimAgents:
    def __init__(self, url: str, *, per_client: int = 50, wait_s: float = 25.0,
                 raw: bool = True) -> None:
        """`raw`: each agent on a RawConnection of its own (its own keep-alive connection,
        as a real agent); False: on httpx.AsyncClients of `per_client` agents each."""
        self.url = url
        self.wait_s = wait_s
        self.raw = raw
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
        self.error_kinds: Counter[str] = Counter()  # exception class names
        self._tasks: list[asyncio.Task[None]] = []
        # Set: agents complete their jobs; clear: they wait (latency.py holds them until the
        # submit has returned, so that their follow-up requests, made in this same process,
        # do not delay the submit's answer as a separate agent's would not).
        self.may_complete = asyncio.Event()
        self.may_complete.set()

    def add(self, name: str, token: str) -> None:
        if self.raw:
            loop = self._raw_loop(name, token)
        else:
            if len(self._tasks) % self.per_client == 0:
                self.clients.append(httpx.AsyncClient(
                    base_url=self.url, timeout=httpx.Timeout(self.wait_s + 15, pool=None),
                    limits=httpx.Limits(max_connections=self.per_client + 5,
                                        max_keepalive_connections=self.per_client + 5,
                                        keepalive_expiry=2.0),  # uvicorn closes idle at 5 s
                    trust_env=False))
            loop = self._loop(self.clients[-1], name, token)
        self.claim_sent[name] = None
        self._tasks.append(asyncio.create_task(loop, name=name))

    @property
    def count(self) -> int:
        return len(self._tasks)

    def outstanding(self) -> int:
        return sum(1 for v in self.claim_sent.values() if v is not None)

    def _failed(self, name: str, what: str, exc: BaseException) -> None:
        self.errors.append(f"{name}: {what}: {type(exc).__name__}: {exc}")
        self.error_kinds[type(exc).__name__] += 1

    async def _raw_loop(self, name: str, token: str) -> None:
        parts = urlsplit(self.url)
        conn = RawConnection(parts.hostname or "127.0.0.1", parts.port or 80)
        headers = b"Authorization: Bearer %s\r\n" % token.encode()
        body = json.dumps({"name": name, "slots": 1, "wait_s": self.wait_s}).encode()
        try:
            while True:
                self.claim_sent[name] = time.perf_counter()
                try:
                    async with asyncio.timeout(self.wait_s + 15):
                        status, data = await conn.request(CLAIM, headers, body)
                    t1 = time.perf_counter()
                    self.claim_sent[name] = None
                    if status != 200:
                        raise WireError(f"claim answered {status}: {data[:200]!r}")
                    jobs = json.loads(data)["jobs"]
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError,
                        KeyError, WireError) as exc:
                    self.claim_sent[name] = None
                    self._failed(name, "claim", exc)
                    await asyncio.sleep(0.5)
                    continue
                self.claims_answered += 1
                if not jobs:
                    self.empty_answers += 1
                for job in jobs:
                    self.received.put_nowait((job, t1, name))
                    await self.may_complete.wait()
                    path = f"/api/w/{job['workspace']}/agent_workers/jobs/{job['id']}/complete"
                    done = json.dumps({"name": name, "attempt": job["attempt"],
                                       "status": "succeeded", "result": {}}).encode()
                    try:
                        async with asyncio.timeout(30):
                            status, data = await conn.request(path, headers, done)
                        if status != 200:
                            raise WireError(f"complete answered {status}: {data[:200]!r}")
                    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError,
                            WireError) as exc:
                        self._failed(name, f"complete {job['id']}", exc)
        finally:
            conn.close()

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
                self._failed(name, "claim", exc)
                await asyncio.sleep(0.5)
                continue
            self.claims_answered += 1
            if not jobs:
                self.empty_answers += 1
            for job in jobs:
                self.received.put_nowait((job, t1, name))
                await self.may_complete.wait()
                path = f"/api/w/{job['workspace']}/agent_workers/jobs/{job['id']}/complete"
                try:
                    c = await http.post(path, headers=headers, json={
                        "name": name, "attempt": job["attempt"], "status": "succeeded",
                        "result": {}})
                    c.raise_for_status()
                except httpx.HTTPError as exc:
                    self._failed(name, f"complete {job['id']}", exc)

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


# --- simulated agents in child processes ---------------------------------------------------

STATUS_EVERY_S = 0.5


async def _child(spec: dict[str, Any], stop: asyncio.Event) -> None:
    """One child: add its agents at their times (wall clock), report, stop on `stop`."""
    sim = SimAgents(spec["url"], wait_s=spec["wait_s"], per_client=spec.get("per_client", 50),
                    raw=spec.get("raw", True))
    out = sys.stdout

    def status() -> None:
        out.write(json.dumps({"count": sim.count, "answered": sim.claims_answered,
                              "empty": sim.empty_answers, "outstanding": sim.outstanding(),
                              "errors": len(sim.errors), "error_kinds": dict(sim.error_kinds),
                              "recent_errors": sim.errors[-3:]}) + "\n")
        out.flush()

    async def report() -> None:
        while True:
            status()
            await asyncio.sleep(STATUS_EVERY_S)

    reporter = asyncio.create_task(report())
    try:
        for name, token, at in spec["agents"]:
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sim.add(name, token)
        # What the setup built lives until the end: keep it out of full collections, whose
        # pauses would hold every agent's next claim back.
        gc.collect()
        gc.freeze()
        await stop.wait()
    finally:
        reporter.cancel()
        await sim.close()
        status()


def child_main() -> None:
    spec = json.loads(sys.stdin.readline())
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def on_eof() -> None:  # the parent closed our stdin (or went away): stop
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=on_eof, daemon=True).start()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        loop.run_until_complete(_child(spec, stop))
    finally:
        loop.close()


class SimProcess:
    """One child simulator process, its latest reported counts."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.status: dict[str, Any] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                self.status = json.loads(line)

    async def stop(self, timeout: float = 20.0) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class SimProcesses:
    """Simulated agents spread over `count` child processes (see the module's docstring)."""

    def __init__(self, url: str, count: int, *, wait_s: float = 25.0,
                 per_client: int = 50, raw: bool = True) -> None:
        self.url, self.count, self.wait_s, self.per_client = url, count, wait_s, per_client
        self.raw = raw
        self.children: list[SimProcess] = []
        self.agents = 0

    async def start(self, agents: Sequence[tuple[str, str, float]]) -> None:
        """(name, token, wall-clock time of its first claim): dealt out round-robin."""
        self.agents = len(agents)
        for i in range(self.count):
            mine = [list(a) for a in agents[i::self.count]]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, os.path.abspath(__file__), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, start_new_session=True)
            assert proc.stdin is not None
            proc.stdin.write((json.dumps({"url": self.url, "wait_s": self.wait_s,
                                          "per_client": self.per_client,
                                          "raw": self.raw,
                                          "agents": mine}) + "\n").encode())
            await proc.stdin.drain()
            self.children.append(SimProcess(proc))

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def _sum(self, key: str) -> int:
        return sum(int(c.status.get(key, 0)) for c in self.children)

    def outstanding(self) -> int:
        return self._sum("outstanding")

    @property
    def claims_answered(self) -> int:
        return self._sum("answered")

    @property
    def error_count(self) -> int:
        return self._sum("errors")

    def error_kinds(self) -> dict[str, int]:
        kinds: Counter[str] = Counter()
        for c in self.children:
            kinds.update(c.status.get("error_kinds", {}))
        return dict(kinds)

    def recent_errors(self) -> list[str]:
        return [e for c in self.children for e in c.status.get("recent_errors", [])]

    def dead(self) -> list[int]:
        return [c.pid for c in self.children if c.proc.returncode is not None]

    async def close(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.children))


if __name__ == "__main__":
    child_main()
