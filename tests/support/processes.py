"""Real tagrun processes for tests: started on free ports, stopped by their own pid."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

SUPERADMIN = "tr_test-superadmin-token-for-the-suite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class TagrunProcess:
    """`tagrun start` in a subprocess; its JSON log goes to a file the test can read."""

    def __init__(self, mode: str, *, database_url: str | None, data_dir: Path,
                 env: Mapping[str, str] | None = None, port: int | None = None,
                 args: Sequence[str] = (), ca_file: Path | None = None) -> None:
        """`args`: more `tagrun start` options; `ca_file`: it serves HTTPS with a certificate
        of that CA (health checks verify it)."""
        self.mode = mode
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self._verify: ssl.SSLContext | bool = \
            ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.log_path = data_dir / f"{mode}-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "TAGRUN_SUPERADMIN_TOKEN": SUPERADMIN,
                    "TAGRUN_DATA_DIR": str(data_dir), "TAGRUN_POLL_INTERVAL_S": "0.5"}
        full_env.pop("DATABASE_URL", None)
        if database_url is not None:
            full_env["DATABASE_URL"] = database_url
        full_env.update(env or {})
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tagrun.server", "start", "--mode", mode,
             "--port", str(self.port), *args],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 30.0) -> TagrunProcess:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"tagrun exited with {self.proc.returncode}:\n"
                                     f"{self.log_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/api/health", timeout=1,
                                 verify=self._verify).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(healthy, timeout, message=f"{self.mode} on port {self.port} to be healthy")
        return self

    def wait_logged(self, event: str, timeout: float = 15.0) -> None:
        wait_until(lambda: f'"event": "{event}"' in self.log_text(), timeout,
                   message=f"log event {event}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.mode} did not stop within {timeout}s") from None
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def require_agent_binary(path: Path) -> Path:
    """The agent executable at `path`; skip (fail with TAGRUN_REQUIRE_AGENT_BINARY=1) if none."""
    if path.is_file():
        return path
    if os.environ.get("TAGRUN_REQUIRE_AGENT_BINARY") == "1":
        pytest.fail(f"no agent executable at {path}, and TAGRUN_REQUIRE_AGENT_BINARY=1")
    pytest.skip(f"no agent executable at {path}: run scripts/build-agent first")


def api_client(url: str, token: str = SUPERADMIN) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def agent_token(api: httpx.Client, tags: Sequence[str], group: str = "edge") -> str:
    """A new agent token for `tags`, minted by the superadmin client `api`."""
    response = api.post("/api/agent_tokens", json={"group": group, "tags": list(tags)})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


class AgentProcess:
    """`tagrun-agent` in a subprocess, configured by environment like a user would."""

    def __init__(self, url: str, token: str | None, log_dir: Path, *, name: str,
                 env: Mapping[str, str] | None = None, command: Sequence[str] | None = None,
                 user: str | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"agent-{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AGENT_", "TAGRUN_")) and k not in ("MODE",)}
        if token is not None:  # None: the test gives it another way (AGENT_TOKEN_FILE)
            full_env["AGENT_TOKEN"] = token
        full_env.update({"BASE_INTERNAL_URL": url, "AGENT_NAME": name, "AGENT_POLL_WAIT_S": "5",
                         **(env or {})})
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        argv = list(command) if command else [str(Path(sys.executable).parent / "tagrun-agent")]
        as_user: dict[str, Any] = {"user": user, "group": user, "extra_groups": []} if user \
            else {}
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, **as_user)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_logged(self, event: str, timeout: float = 15.0) -> None:
        wait_until(lambda: f'"event": "{event}"' in self.log_text(), timeout,
                   message=f"agent log event {event}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent {self.name} still running after {timeout}s:\n"
                                 f"{self.log_text()[-2000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def finished(api: httpx.Client, job_id: int, workspace: str = "default",
             timeout: float = 120.0) -> dict[str, Any]:
    """The job once it is final (succeeded, failed, cancelled), waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = api.get(f"/api/w/{workspace}/jobs/{job_id}",
                                       params={"wait_s": 15}).json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish within {timeout:g} s: {view}")
