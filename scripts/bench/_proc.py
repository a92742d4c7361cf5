"""Real tagrun processes for benchmarks: started on free 127.0.0.1 ports, stopped by pid.

Used by latency.py, agents.py and throughput.py next to _db.py. Everything a bench starts
goes through `Processes`, which stops what it started (SIGTERM, then SIGKILL, by pid) when
its `with` block ends, however it ends.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

SUPERADMIN = f"tr_bench-superadmin-{secrets.token_hex(8)}"
BIN = Path(sys.executable).parent  # the venv's bin: tagrun and tagrun-agent live here


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_db(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def db_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def percentiles(values: Sequence[float], digits: int = 2) -> dict[str, float | int | None]:
    """p50/p90/p99/max (nearest rank) and mean of `values`."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
        return round(ordered[index], digits)

    return {"n": len(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99),
            "max": round(ordered[-1], digits), "mean": round(sum(ordered) / len(ordered), digits)}


def raise_nofile(wanted: int) -> dict[str, Any]:
    """Raise the soft open-files limit to `wanted` (capped by the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            return {"soft": soft, "hard": hard, "wanted": wanted, "error": str(exc)}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": soft, "hard": hard, "wanted": wanted, "enough": soft >= wanted}


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, label: str, argv: list[str], env: Mapping[str, str], log_dir: Path):
        self.label = label
        self.log_path = log_dir / f"{label}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Children must not take our Ctrl+C: we stop them ourselves, in order.
        self.proc = subprocess.Popen(argv, env=dict(env), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.ps = psutil.Process(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def logged(self, event: str) -> bool:
        return f'"event": "{event}"' in self.log_path.read_text(errors="replace")

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def rss_mb(self) -> float:
        return round(self.ps.memory_info().rss / 2**20, 1)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.label} (pid {self.pid}) did not stop in {timeout}s: SIGKILL")
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Processes:
    """Starts tagrun servers, workers and agents; stops all of them (by pid) at exit."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tagrun-bench-procs-"))
        self.procs: list[Proc] = []
        # TAGRUN_BENCH_KEEP_LOGS=1: keep the processes' logs (the directory is printed).
        self._keep_dir = os.environ.get("TAGRUN_BENCH_KEEP_LOGS") == "1"

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self._keep_dir = True
            log(f"logs of the processes kept in {self.dir}")
        if self._keep_dir:
            log(f"logs of the processes in {self.dir}")
        else:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):  # agents and workers first, the server last
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log(f"stopping {proc.label}: {exc}")

    def stop(self, proc: Proc) -> int | None:
        code = proc.stop()
        if code not in (0, None):
            log(f"{proc.label} exited with {code}:\n{proc.log_tail(1500)}")
        return code

    def _base_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items()
                if not k.startswith(("AGENT_", "TAGRUN_", "WORKER_"))
                and k not in ("MODE", "DATABASE_URL")}

    def tagrun(self, mode: str, dsn: str, *, label: str | None = None,
               env: Mapping[str, str] | None = None, port: int | None = None) -> TagrunProc:
        """`tagrun start --mode MODE` on DATABASE_URL=dsn (and a free port if it serves HTTP)."""
        port = port or free_port()
        label = label or f"{mode}-{port}"
        data_dir = self.dir / label
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**self._base_env(), "DATABASE_URL": dsn, "TAGRUN_SUPERADMIN_TOKEN": SUPERADMIN,
                    "TAGRUN_DATA_DIR": str(data_dir), **(env or {})}
        argv = [str(BIN / "tagrun"), "start", "--mode", mode, "--host", "127.0.0.1",
                "--port", str(port)]
        proc = TagrunProc(label, argv, full_env, self.dir, port)
        self.procs.append(proc)
        return proc

    def agent(self, url: str, token: str, name: str, env: Mapping[str, str] | None = None
              ) -> Proc:
        """A real `tagrun-agent`, configured through its environment."""
        full_env = {**self._base_env(), "AGENT_TOKEN": token, "BASE_INTERNAL_URL": url,
                    "AGENT_NAME": name, **(env or {})}
        proc = Proc(f"agent-{name}", [str(BIN / "tagrun-agent")], full_env, self.dir)
        self.procs.append(proc)
        return proc


class TagrunProc(Proc):
    def __init__(self, label: str, argv: list[str], env: Mapping[str, str], log_dir: Path,
                 port: int) -> None:
        super().__init__(label, argv, env, log_dir)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def wait_healthy(self, timeout: float = 60.0) -> TagrunProc:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1,
                             trust_env=False).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} not healthy after {timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def wait_logged(self, event: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.logged(event):
            if not self.alive():
                raise RuntimeError(f"{self.label} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: no {event} after {timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)


def api(url: str, token: str = SUPERADMIN, **kwargs: Any) -> httpx.AsyncClient:
    """An async client for the user and superadmin routes (no proxies: loopback only).

    Idle connections are dropped after 2 s, before uvicorn closes them (its keep-alive
    timeout is 5 s): reusing one the server is closing fails with RemoteProtocolError."""
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("limits", httpx.Limits(keepalive_expiry=2.0))
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"},
                             trust_env=False, **kwargs)


async def mint_agent_token(client: httpx.AsyncClient, group: str, tags: list[str],
                           expires_in_s: int = 3600) -> str:
    r = await client.post("/api/agent_tokens",
                          json={"group": group, "tags": tags, "expires_in_s": expires_in_s})
    r.raise_for_status()
    return str(r.json()["token"])


def sigterm_as_exit() -> None:
    """SIGTERM unwinds like Ctrl+C, so the `with` blocks stop what they started."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop()."""

    def __init__(self) -> None:
        self._start: dict[int, float] = {}

    @staticmethod
    def _cpu(pids: Sequence[int]) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                out[pid] = float(t.user + t.system)
            except psutil.Error:
                pass
        return out

    def start(self, pids: Sequence[int]) -> None:
        self._start = self._cpu(pids)

    def stop(self, pids: Sequence[int]) -> float:
        end = self._cpu(pids)
        return round(sum(v - self._start.get(pid, 0.0) for pid, v in end.items()), 2)
