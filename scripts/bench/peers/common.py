"""Shared harness for the peer benchmarks: what is timed, how, and how it is verified.

Copied from the team's ../shared/bench/peers/ (there run by run.sh), here run by
scripts/bench/compare.py with the interpreter of build/bench-venv, where pgqueuer and
procrastinate are installed (requirements.txt): they are never tagrun's dependencies.
Each ``<lib>_bench.py run`` prints one JSON object per measurement on stdout.

Every ``<lib>_bench.py`` supplies two things:

* an *adapter* (producer side and read-only checks against the library's own status
  tables), used by :func:`run_cli` in the orchestrating process, and
* a *worker* entry point, started here as a separate OS process per worker, which runs
  the library's own worker loop and reports to this process over a pipe.

The measurement logic itself (enqueue, start workers, the clock, completion detection,
verification, percentiles, JSON output) lives only here, so every library is measured
the same way.

Worker <-> orchestrator protocol (one line per message on the report pipe):

    READY                 worker is connected and set up, waiting for "GO" on stdin
    C <handled> <dups>    periodic handler-call count (drain mode)
    S <seq> <t>           handler for job <seq> started at CLOCK_MONOTONIC <t> (latency mode)
    F <handled> <dups>    final count, written after the library's worker loop returned
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

DRAIN = "peers_drain"
LATENCY = "peers_latency"
SCHEMA = "peers-bench/1"


def mono() -> float:
    """CLOCK_MONOTONIC seconds.

    On Linux this is one system-wide clock, so values taken in the orchestrator and in a
    worker process on the same machine can be subtracted directly, and unlike the wall
    clock it is never stepped by NTP.
    """
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def emit(rec: dict[str, Any]) -> None:
    """One JSON object per line on stdout, also appended to $PEERS_RESULTS when set."""
    line = json.dumps(rec)
    print(line, flush=True)
    path = os.environ.get("PEERS_RESULTS")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def with_database(url: str, dbname: str) -> str:
    """Return *url* with its database path replaced by *dbname*."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def redact(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Linear-interpolation percentile (numpy's default method) of pre-sorted values."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summary_ms(values_s: list[float]) -> dict[str, float | int | None]:
    v = sorted(x * 1000.0 for x in values_s)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "n": len(v),
        "p50": r(percentile(v, 50)),
        "p95": r(percentile(v, 95)),
        "p99": r(percentile(v, 99)),
        "min": r(v[0]) if v else None,
        "max": r(v[-1]) if v else None,
        "mean": r(sum(v) / len(v)) if v else None,
    }


HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_jiffies() -> list[float] | None:
    """user nice system idle iowait irq softirq steal, from /proc/stat (Linux only)."""
    try:
        with open("/proc/stat") as fh:
            return [float(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return None


def _pid_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (float(fields[11]) + float(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def _postgres_pids() -> list[int]:
    """The harness's own server: its postmaster ($PEERS_PG_POSTMASTER_PID) and children."""
    root = os.environ.get("PEERS_PG_POSTMASTER_PID", "")
    if not root.isdigit():
        return []
    pids = [int(root)]
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == int(root):
                    pids.append(int(entry))
    except OSError:
        return []
    return pids


class CpuWindow:
    """Where the machine's CPU went between start() and stop().

    Reported so a reader can tell a library's own cost from noise: worker processes,
    the PostgreSQL server (when the harness started it), this orchestrator, and "other"
    (user+system time of everything else on the machine). Kernel softirq time (loopback
    networking) is shown apart; it belongs to no process.
    """

    def __init__(self, worker_pids: list[int]) -> None:
        self.worker_pids = worker_pids

    def _sample(self) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        pg = _postgres_pids()
        return {
            "t": mono(),
            "machine": _machine_jiffies(),
            "workers": sum(_pid_cpu_s(p) for p in self.worker_pids),
            "pg": {p: _pid_cpu_s(p) for p in pg},
            "self": ru.ru_utime + ru.ru_stime,
        }

    def start(self) -> None:
        self.a = self._sample()

    def stop(self) -> dict[str, Any] | None:
        b, a = self._sample(), self.a
        if a["machine"] is None or b["machine"] is None:
            return None
        d = [y - x for x, y in zip(a["machine"], b["machine"], strict=False)]
        total = sum(d) or 1.0
        user_sys_s = (d[0] + d[1] + d[2]) / HZ
        workers = b["workers"] - a["workers"]
        pg = sum(v - a["pg"].get(p, 0.0) for p, v in b["pg"].items()) if b["pg"] else None
        orch = b["self"] - a["self"]
        out: dict[str, Any] = {
            "window_s": round(b["t"] - a["t"], 3),
            "machine_busy_pct": round(100.0 * (total - d[3] - d[4]) / total, 1),
            "steal_pct": round(100.0 * d[7] / total, 1),
            "softirq_s": round(d[6] / HZ, 2),
            "workers_s": round(workers, 2),
            "postgres_s": round(pg, 2) if pg is not None else None,
            "orchestrator_s": round(orch, 2),
        }
        if pg is not None:
            out["other_s"] = round(max(0.0, user_sys_s - workers - pg - orch), 2)
        return out


def loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


SERVER_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "shared_buffers",
    "max_connections",
    "checkpoint_timeout",
    "max_wal_size",
    "autovacuum",
)


async def server_info(conn: Any, url: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name in SERVER_SETTINGS:
        info[name] = await conn.fetchval(f"SHOW {name}")
    parts = urlsplit(url)
    info["host"] = parts.hostname
    info["port"] = parts.port
    info["started_by_harness"] = os.environ.get("PEERS_SERVER_STARTED") == "1"
    return info


# --------------------------------------------------------------------------- worker side


class Reporter:
    """Used inside a worker process: counts handler calls and talks to the orchestrator."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.handled = 0
        self.dups = 0
        self._seen: set[Any] = set()

    def send(self, line: str) -> None:
        try:
            os.write(self.fd, (line + "\n").encode())
        except BrokenPipeError:  # the orchestrator is gone; nobody left to tell
            pass

    def ready(self) -> None:
        self.send("READY")

    def job(self, key: Any) -> None:
        """Count one handler call; *key* identifies the job, so a second call is a duplicate."""
        self.handled += 1
        if key in self._seen:
            self.dups += 1
        else:
            self._seen.add(key)

    def started(self, seq: int, t: float) -> None:
        self.send(f"S {seq} {t:.9f}")

    async def wait_go(self) -> None:
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip() != "GO":
            raise SystemExit(f"worker: expected GO on stdin, got {line!r}")

    async def periodic(self, interval: float = 0.05) -> None:
        last = -1
        while True:
            if self.handled != last:
                last = self.handled
                self.send(f"C {self.handled} {self.dups}")
            await asyncio.sleep(interval)

    def final(self) -> None:
        self.send(f"F {self.handled} {self.dups}")


def run_loop(coro: Awaitable[None], use_uvloop: bool) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            asyncio.run(coro)  # type: ignore[arg-type]
            return
        uvloop.run(coro)  # type: ignore[arg-type]
    else:
        asyncio.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------- orchestrator side


class WorkerProc:
    """One worker OS process, its stdin ("GO") and its report pipe."""

    def __init__(self, argv: list[str], name: str) -> None:
        r, w = os.pipe()
        self.name = name
        # The worker's stdout goes to our stderr: stdout of this process is JSON only.
        self.proc = subprocess.Popen(
            [*argv, "--report-fd", str(w)],
            stdin=subprocess.PIPE,
            stdout=sys.stderr.fileno(),
            pass_fds=(w,),
        )
        os.close(w)
        self._r = r
        self.ready = asyncio.Event()
        self.eof = asyncio.Event()
        self.handled = 0
        self.dups = 0
        self.final: tuple[int, int] | None = None
        self.waiters: dict[int, asyncio.Future[float]] = {}
        self.exit_how = "running"

    async def attach(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._r, "rb", 0)
        )
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            parts = line.decode().split()
            if not parts:
                continue
            kind = parts[0]
            if kind == "READY":
                self.ready.set()
            elif kind == "C":
                self.handled, self.dups = int(parts[1]), int(parts[2])
            elif kind == "F":
                self.handled, self.dups = int(parts[1]), int(parts[2])
                self.final = (self.handled, self.dups)
            elif kind == "S":
                seq, t = int(parts[1]), float(parts[2])
                fut = self.waiters.get(seq)
                if fut is not None and not fut.done():
                    fut.set_result(t)
        self.eof.set()

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def wait_ready(self, timeout: float) -> None:
        ready = asyncio.create_task(self.ready.wait())
        eof = asyncio.create_task(self.eof.wait())
        done, pending = await asyncio.wait({ready, eof}, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        if not self.ready.is_set():
            raise RuntimeError(f"{self.name} did not become ready (exit code {self.proc.poll()})")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"GO\n")
        self.proc.stdin.flush()
        self.proc.stdin.close()

    def expect(self, seq: int) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[seq] = fut
        return fut

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (each library's documented graceful stop), SIGKILL after *timeout*."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
                self.exit_how = f"exited rc={self.proc.returncode} after SIGTERM"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
                self.exit_how = f"killed (no exit {timeout:.0f}s after SIGTERM)"
        else:
            self.exit_how = f"exited early rc={self.proc.returncode}"
        try:
            await asyncio.wait_for(self.eof.wait(), 5.0)
        except TimeoutError:
            pass


class Adapter(Protocol):
    """What a ``<lib>_bench.py`` provides to the orchestrator."""

    name: str
    version: str
    db_url: str

    def settings(self) -> dict[str, Any]: ...
    def worker_argv(self, mode: str) -> list[str]: ...
    async def install(self) -> dict[str, Any]: ...
    async def open_producer(self) -> None: ...
    async def close_producer(self) -> None: ...
    async def enqueue_bulk(self, seqs: list[int]) -> None: ...
    async def enqueue_one(self, seq: int) -> None: ...
    async def completed(self, conn: Any, kind: str) -> int: ...
    async def last_completed_epoch(self, conn: Any, kind: str) -> float | None: ...
    async def status_counts(self, conn: Any, kind: str) -> dict[str, Any]: ...
    async def extra_checks(self, conn: Any, kind: str, expected: int) -> dict[str, Any]: ...


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-url", default=os.environ.get("PEERS_ADMIN_URL", ""),
                   help="URL of a database on the server, used to (re)create the bench database")
    p.add_argument("--db-name", default="", help="database to (re)create; default peers_<library>")
    p.add_argument("--jobs", type=int, default=env_int("PEERS_JOBS", 20000))
    p.add_argument("--enqueue-batch", type=int, default=env_int("PEERS_ENQUEUE_BATCH", 1000))
    p.add_argument("--workers", type=int, default=env_int("PEERS_WORKERS", 2))
    p.add_argument("--drain-timeout", type=float, default=env_float("PEERS_DRAIN_TIMEOUT", 100.0))
    p.add_argument("--latency-jobs", type=int, default=env_int("PEERS_LATENCY_JOBS", 200))
    p.add_argument("--latency-warmup", type=int, default=env_int("PEERS_LATENCY_WARMUP", 10))
    p.add_argument("--latency-gap-ms", type=float, default=env_float("PEERS_LATENCY_GAP_MS", 50.0))
    p.add_argument("--latency-settle-s", type=float,
                   default=env_float("PEERS_LATENCY_SETTLE_S", 1.0))
    p.add_argument("--latency-timeout", type=float,
                   default=env_float("PEERS_LATENCY_TIMEOUT", 40.0))
    p.add_argument("--only", default=os.environ.get("PEERS_ONLY", "drain,latency"),
                   help="comma list of phases: drain, latency")
    p.add_argument("--run-label", default=os.environ.get("PEERS_RUN_LABEL", ""))
    p.add_argument("--keep-db", type=int, default=env_int("PEERS_KEEP_DBS", 0),
                   help="1: keep the bench database afterwards (default: dropped, so its "
                        "autovacuum cannot disturb the next bench)")


class Bench:
    def __init__(self, ad: Adapter, args: argparse.Namespace) -> None:
        self.ad = ad
        self.a = args
        self.server: dict[str, Any] = {}
        self.install_info: dict[str, Any] = {}
        self._workers: list[WorkerProc] = []

    def record(self, measurement: str, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "schema": SCHEMA,
            "library": self.ad.name,
            "library_version": self.ad.version,
            "measurement": measurement,
            "run_label": self.a.run_label,
            "round": env_int("PEERS_ROUND", 1),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        rec.update(fields)
        rec["settings"] = self.ad.settings()
        rec["install"] = self.install_info
        rec["server"] = self.server
        rec["machine"] = machine_info()
        return rec

    def emit(self, rec: dict[str, Any]) -> None:
        emit(rec)

    async def connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.ad.db_url)

    async def spawn(self, mode: str, n: int) -> list[WorkerProc]:
        workers = [WorkerProc(self.ad.worker_argv(mode), f"{self.ad.name}-{mode}-{i}")
                   for i in range(n)]
        for w in workers:
            await w.attach()
        try:
            for w in workers:
                await w.wait_ready(60.0)
        except BaseException:
            for w in workers:
                await w.stop(5.0)
            raise
        return workers

    # ------------------------------------------------------------------ drain

    async def drain(self) -> None:
        a, ad = self.a, self.ad
        n = a.jobs
        conn = await self.connect()
        errors: list[str] = []
        try:
            log(f"{ad.name}: enqueue {n} jobs in batches of {a.enqueue_batch}")
            await ad.open_producer()
            t = mono()
            for start in range(0, n, a.enqueue_batch):
                await ad.enqueue_bulk(list(range(start, min(n, start + a.enqueue_batch))))
            enqueue_s = mono() - t
            await ad.close_producer()
            queued = await ad.status_counts(conn, DRAIN)
            self.emit(self.record(
                "bulk_enqueue",
                ok=True,
                value=round(n / enqueue_s, 1),
                unit="jobs/s",
                jobs=n,
                batch=a.enqueue_batch,
                elapsed_s=round(enqueue_s, 4),
                db_state_after=queued,
            ))

            # Same starting point for every library: planner statistics and a clean
            # checkpoint, so neither pays for the other's leftovers.
            prep: list[str] = []
            await conn.execute("ANALYZE")
            prep.append("ANALYZE")
            try:
                await conn.execute("CHECKPOINT")
                prep.append("CHECKPOINT")
            except Exception as exc:  # needs superuser / pg_checkpoint
                prep.append(f"CHECKPOINT skipped: {exc}")

            log(f"{ad.name}: start {a.workers} worker process(es)")
            workers = self._workers = await self.spawn("drain", a.workers)
            load_before = loadavg()
            activity = DbActivity()
            await activity.start(conn)
            cpu = CpuWindow([w.proc.pid for w in workers])
            cpu.start()
            t0_db = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
            t0 = mono()
            for w in workers:
                w.go()
            deadline = t0 + a.drain_timeout
            last_db_check = t0
            safety_s = 5.0 if getattr(ad, "reports_handler_counts", True) else 0.25
            completed_seen = 0
            detected_s: float | None = None
            while True:
                now = mono()
                dead = [w for w in workers if not w.alive()]
                if dead:
                    errors.append(f"worker(s) exited during drain: "
                                  f"{[(w.name, w.proc.returncode) for w in dead]}")
                    break
                reported = sum(w.handled for w in workers)
                # Worker counts gate the DB polls, so the check itself adds no load while
                # jobs are running; the 5 s check is a safety net. A bench whose workers
                # cannot report counts polls every 0.25 s instead (the elapsed time comes
                # from the DB's completion timestamps either way).
                if reported >= n or now - last_db_check >= safety_s:
                    last_db_check = now
                    completed_seen = await ad.completed(conn, DRAIN)
                    if completed_seen >= n:
                        detected_s = mono() - t0
                        break
                if now >= deadline:
                    completed_seen = await ad.completed(conn, DRAIN)
                    errors.append(f"timeout: {completed_seen} of {n} completed in DB, "
                                  f"{reported} handler calls after {a.drain_timeout:.0f}s")
                    break
                await asyncio.sleep(0.02)
            cpu_use = cpu.stop()
            last_epoch = await ad.last_completed_epoch(conn, DRAIN)
            db_activity = await activity.stop(conn)

            log(f"{ad.name}: stop workers")
            for w in workers:
                await w.stop()

            completed = await ad.completed(conn, DRAIN)
            states = await ad.status_counts(conn, DRAIN)
            extra = await ad.extra_checks(conn, DRAIN, n)
            handled = sum(w.handled for w in workers)
            dups = sum(w.dups for w in workers)
            if completed != n:
                errors.append(f"{completed} of {n} jobs completed in DB")
            if handled != n:
                errors.append(f"{handled} handler calls for {n} jobs")
            if dups:
                errors.append(f"{dups} duplicate handler calls")
            errors.extend(extra.pop("errors", []))
            elapsed = ((last_epoch - t0_db)
                       if (last_epoch is not None and detected_s is not None) else None)
            per_job: dict[str, float | None] = {}
            if cpu_use:
                per_job = {
                    "workers_cpu_ms_per_job": round(1000.0 * cpu_use["workers_s"] / n, 3),
                    "postgres_cpu_ms_per_job": (round(1000.0 * cpu_use["postgres_s"] / n, 3)
                                                if cpu_use.get("postgres_s") is not None else None),
                }
            ok = not errors and elapsed is not None and elapsed > 0
            self.emit(self.record(
                "drain_throughput",
                ok=ok,
                value=round(n / elapsed, 1) if ok and elapsed else None,
                unit="jobs/s",
                jobs=n,
                worker_processes=a.workers,
                elapsed_s=round(elapsed, 4) if elapsed else None,
                elapsed_detected_s=round(detected_s, 4) if detected_s else None,
                completed_in_db=completed,
                handler_calls=handled,
                duplicate_handler_calls=dups,
                db_state_after=states,
                checks=extra,
                worker_exit=[w.exit_how for w in workers],
                cpu=cpu_use,
                **per_job,
                loadavg_1m_before=load_before,
                db_activity_during=db_activity,
                prepared_with=prep,
                errors=errors,
            ))
        finally:
            await self._reap()
            await ad.close_producer()
            await conn.close()

    async def _reap(self) -> None:
        """Never leave a worker process behind, whatever went wrong."""
        for w in self._workers:
            if w.alive():
                await w.stop(5.0)
        self._workers = []

    # ---------------------------------------------------------------- latency

    async def latency(self) -> None:
        a, ad = self.a, self.ad
        total = a.latency_warmup + a.latency_jobs
        conn = await self.connect()
        errors: list[str] = []
        e2s: list[float] = []  # enqueue call start -> handler start
        # enqueue call returned (commit acknowledged) -> handler start; can be < 0
        r2s: list[float] = []
        call: list[float] = []  # enqueue call duration
        try:
            await ad.open_producer()
            workers = self._workers = await self.spawn("latency", 1)
            w = workers[0]
            load_before = loadavg()
            cpu = CpuWindow([w.proc.pid])
            w.go()
            # Let the library finish its own start-up (LISTEN etc.): the worker is idle.
            await asyncio.sleep(a.latency_settle_s)
            log(f"{ad.name}: {a.latency_warmup} warm-up + {a.latency_jobs} jobs, one at a time")
            activity = DbActivity()
            await activity.start(conn)
            cpu.start()
            sent = 0
            for seq in range(total):
                fut = w.expect(seq)
                t_a = mono()
                await ad.enqueue_one(seq)
                t_b = mono()
                sent += 1
                try:
                    t_s = await asyncio.wait_for(asyncio.shield(fut), a.latency_timeout)
                except TimeoutError:
                    errors.append(f"job {seq} not started within {a.latency_timeout:.0f}s; "
                                  "phase stopped")
                    break
                if not w.alive():
                    errors.append("worker exited during latency phase")
                    break
                if seq >= a.latency_warmup:
                    e2s.append(t_s - t_a)
                    r2s.append(t_s - t_b)
                    call.append(t_b - t_a)
                if a.latency_gap_ms > 0:
                    await asyncio.sleep(a.latency_gap_ms / 1000.0)
            cpu_use = cpu.stop()
            db_activity = await activity.stop(conn)
            await ad.close_producer()
            await w.stop()
            completed = await ad.completed(conn, LATENCY)
            states = await ad.status_counts(conn, LATENCY)
            if completed != sent:
                errors.append(f"{completed} of {sent} latency jobs completed in DB")
            if w.handled != sent:
                errors.append(f"{w.handled} handler calls for {sent} jobs")
            if w.dups:
                errors.append(f"{w.dups} duplicate handler calls")
            s = summary_ms(e2s)
            ok = not errors and len(e2s) == a.latency_jobs
            self.emit(self.record(
                "dispatch_latency",
                ok=ok,
                value=s["p50"],
                unit="ms",
                p50_ms=s["p50"],
                p95_ms=s["p95"],
                p99_ms=s["p99"],
                enqueue_to_start_ms=s,
                returned_to_start_ms=summary_ms(r2s),
                enqueue_call_ms=summary_ms(call),
                jobs_measured=len(e2s),
                warmup_jobs=a.latency_warmup,
                gap_ms=a.latency_gap_ms,
                settle_s=a.latency_settle_s,
                worker_processes=1,
                clock="CLOCK_MONOTONIC (system-wide on Linux; orchestrator and worker process)",
                completed_in_db=completed,
                handler_calls=w.handled,
                duplicate_handler_calls=w.dups,
                db_state_after=states,
                worker_exit=[w.exit_how],
                cpu=cpu_use,
                db_activity_during=db_activity,
                loadavg_1m_before=load_before,
                errors=errors,
            ))
        finally:
            await self._reap()
            await ad.close_producer()
            await conn.close()


async def autovacuum_counts(conn: Any) -> dict[str, tuple[int, int]]:
    """{table: (autovacuum runs, autoanalyze runs)} in the bench database (cumulative stats)."""
    rows = await conn.fetch(
        "SELECT relname, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables")
    return {r["relname"]: (int(r["autovacuum_count"]), int(r["autoanalyze_count"])) for r in rows}


async def checkpoints(conn: Any) -> int | None:
    """Server-wide checkpoints so far (timed + requested), or None if not readable."""
    for q in ("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
              "SELECT num_timed + num_requested FROM pg_stat_checkpointer"):
        try:
            return int(await conn.fetchval(q))
        except Exception:
            continue
    return None


class DbActivity:
    """Autovacuum runs on the bench database's tables and server checkpoints in a window."""

    async def start(self, conn: Any) -> None:
        self.av = await autovacuum_counts(conn)
        self.ckpt = await checkpoints(conn)

    async def stop(self, conn: Any) -> dict[str, Any]:
        av = await autovacuum_counts(conn)
        ckpt = await checkpoints(conn)
        return {
            "autovacuum": {k: {"vacuum": v[0] - self.av.get(k, (0, 0))[0],
                               "analyze": v[1] - self.av.get(k, (0, 0))[1]}
                           for k, v in av.items() if v != self.av.get(k, (0, 0))},
            "checkpoints": ((ckpt - self.ckpt)
                            if ckpt is not None and self.ckpt is not None else None),
        }


async def recreate_database(admin_url: str, dbname: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        try:
            # Both libraries' SQL contains non-ASCII text; don't inherit SQL_ASCII.
            await conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE template0 ENCODING \'UTF8\'')
        except asyncpg.PostgresError:
            await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, dbname: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await conn.close()


async def run_main(ad: Adapter, args: argparse.Namespace, install_info: dict[str, Any]) -> int:
    bench = Bench(ad, args)
    bench.install_info = install_info
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    conn = await bench.connect()
    try:
        bench.server = await server_info(conn, ad.db_url)
    finally:
        await conn.close()
    rc = 0
    # Latency first, on the freshly installed schema: run after the drain it would also
    # measure the drain's aftermath (autovacuum of 20k dead rows, checkpoint of its WAL).
    for phase, fn in (("latency", bench.latency), ("drain", bench.drain)):
        if phase not in phases:
            continue
        try:
            await fn()
        except Exception as exc:  # report, never hide
            rc = 1
            log(f"{ad.name}: {phase} failed: {exc!r}")
            bench.emit(bench.record(
                "drain_throughput" if phase == "drain" else "dispatch_latency",
                ok=False, value=None, errors=[f"{type(exc).__name__}: {exc}"],
            ))
    return rc


def run_cli(
    make_adapter: Callable[[argparse.Namespace], Adapter],
    run_worker: Callable[[argparse.Namespace], None],
    add_lib_args: Callable[[argparse.ArgumentParser], None],
    library: str,
) -> None:
    parser = argparse.ArgumentParser(description=f"{library} peer benchmark")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="set up the database and run the measurements")
    add_run_args(p_run)
    add_lib_args(p_run)
    p_w = sub.add_parser("worker", help="internal: one worker process")
    p_w.add_argument("--db-url", default=os.environ.get("PEERS_DB_URL", ""),
                     help="default: $PEERS_DB_URL (set by the orchestrator; keeps it out of argv)")
    p_w.add_argument("--mode", choices=("drain", "latency"), required=True)
    p_w.add_argument("--report-fd", type=int, required=True)
    add_lib_args(p_w)
    args = parser.parse_args()

    if args.cmd == "worker":
        run_worker(args)
        return

    if not args.admin_url:
        parser.error("--admin-url (or PEERS_ADMIN_URL) is required")
    dbname = args.db_name or f"peers_{library}"

    async def go() -> int:
        await recreate_database(args.admin_url, dbname)
        args.db_url = with_database(args.admin_url, dbname)
        os.environ["PEERS_DB_URL"] = args.db_url  # inherited by installers and workers
        ad = make_adapter(args)
        log(f"{library}: database {redact(args.db_url)}; installing schema")
        try:
            info = await ad.install()
        except Exception as exc:
            log(f"{library}: schema install failed: {exc!r}")
            for m in ("drain_throughput", "dispatch_latency"):
                emit({
                    "schema": SCHEMA, "library": library, "measurement": m, "ok": False,
                    "value": None, "run_label": args.run_label,
                    "errors": [f"schema install failed: {exc}"],
                })
            return 1
        rc = await run_main(ad, args, info)
        if not args.keep_db:
            await drop_database(args.admin_url, dbname)
        return rc

    sys.exit(asyncio.run(go()))


def run_install_cmd(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a library's own schema installer; its output goes to stderr."""
    t = mono()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          text=True)
    out = proc.stdout.strip()
    if out:
        print(out, file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {out[-500:]}")
    return {"argv": [redact(x) if "://" in x else x for x in argv], "seconds": round(mono() - t, 2)}
