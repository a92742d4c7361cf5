from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tagrun.shared.version import __version__
from tests.agent.fakes import TOKEN

ENV_VARS = ("AGENT_TOKEN", "AGENT_TOKEN_FILE", "BASE_INTERNAL_URL", "INIT_SCRIPT",
            "AGENT_NAME", "AGENT_SLOTS", "AGENT_WORK_DIR", "AGENT_PYTHON",
            "AGENT_DRAIN_TIMEOUT_S", "AGENT_POLL_WAIT_S", "AGENT_LOG_SPOOL_MB", "AGENT_CA_FILE",
            "AGENT_ALLOW_INSECURE")
FLAGS = ("--token", "--token-file", "--base-url", "--init-script", "--name", "--slots",
         "--work-dir", "--python", "--drain-timeout-s", "--poll-wait-s", "--log-spool-mb",
         "--ca-file",
         "--allow-insecure", "--version", "--help")


def agent_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != "MODE"}
    env.update(COLUMNS="200", **values)
    return env


def agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tagrun.agent", *args], env=agent_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_help_lists_every_option_and_its_variable() -> None:
    done = agent("--help", AGENT_TOKEN=TOKEN)
    assert done.returncode == 0
    for name in ENV_VARS + FLAGS:
        assert name in done.stdout
    assert TOKEN not in done.stdout


def test_version() -> None:
    done = agent("--version")
    assert (done.returncode, done.stdout.strip()) == (0, __version__)


def test_a_missing_token_exits_1_naming_it() -> None:
    done = agent(BASE_INTERNAL_URL="http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: AGENT_TOKEN is not set (nor AGENT_TOKEN_FILE)"


def test_an_empty_token_is_refused() -> None:
    done = agent(AGENT_TOKEN="", BASE_INTERNAL_URL="http://127.0.0.1:9")
    assert (done.returncode, done.stderr.strip()) == (1, "error: AGENT_TOKEN is empty")


def test_bad_values_exit_1_naming_the_variable() -> None:
    done = agent(AGENT_TOKEN=TOKEN, BASE_INTERNAL_URL="http://127.0.0.1:9", AGENT_SLOTS="0")
    assert done.returncode == 1 and "AGENT_SLOTS='0'" in done.stderr
    done = agent("--poll-wait-s", "90", AGENT_TOKEN=TOKEN, BASE_INTERNAL_URL="http://h")
    assert done.returncode == 1 and "AGENT_POLL_WAIT_S='90'" in done.stderr
    done = agent(AGENT_TOKEN=TOKEN, BASE_INTERNAL_URL="http://127.0.0.1:9", MODE="worker")
    assert done.returncode == 1 and "MODE='worker'" in done.stderr
    assert "Traceback" not in done.stderr and TOKEN not in done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")
def test_a_failing_init_script_exits_1_with_its_output() -> None:
    done = agent(AGENT_TOKEN=TOKEN, BASE_INTERNAL_URL="http://127.0.0.1:9",
                 INIT_SCRIPT="echo cannot-install-deps; exit 2")
    assert done.returncode == 1
    failed = [json.loads(line) for line in done.stderr.splitlines()
              if "agent.init_script_failed" in line]
    assert failed[0]["output"] == "cannot-install-deps\n"


def test_the_hidden_python_flag_runs_a_python_job(tmp_path: Path) -> None:
    # What a frozen agent does: executors start [agent, --tagrun-run-python, wrapper, script].
    (tmp_path / "main.py").write_text("def main(n):\n    return n * 2\n")
    (tmp_path / "args.json").write_text('{"n": 21}')
    done = agent("--tagrun-run-python", "wrapper.py", str(tmp_path / "main.py"),
                 TAGRUN_ARGS_FILE=str(tmp_path / "args.json"),
                 TAGRUN_RESULT_FILE=str(tmp_path / "result.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "result.json").read_text()) == 42


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def wait_for(lines: queue.Queue[str], text: str, seen: list[str], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        seen.append(line)
        if text in line:
            return


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_sigterm_stops_an_agent_whose_server_is_down(tmp_path: Path) -> None:
    seen: list[str] = []
    # A work root of its own: in the shared temporary directory, the agent would first sweep
    # what other tests' killed agents left there (workdir.swept before agent.started).
    with refusing_port() as port, subprocess.Popen(
        [sys.executable, "-m", "tagrun.agent", "--base-url", f"http://127.0.0.1:{port}/"],
        env=agent_env(AGENT_TOKEN=TOKEN, AGENT_NAME="edge-1", AGENT_WORK_DIR=str(tmp_path)),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    ) as proc:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(proc.stderr, lines), daemon=True)
        reader.start()
        try:
            wait_for(lines, "agent.retrying", seen)  # claim failing, and retried
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            reader.join(timeout=10)
        seen.extend(lines.get() for _ in range(lines.qsize()))
        stdout = proc.stdout.read() if proc.stdout else ""
    events = [json.loads(line)["event"] for line in seen if line.startswith("{")]
    assert events[:2] == ["agent.config_warning", "agent.started"]  # trailing slash trimmed
    assert events[-1] == "agent.stopped"
    assert stdout == ""
    assert TOKEN not in "".join(seen)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads /proc/<pid>/cmdline and environ, which only Linux has")
@pytest.mark.parametrize("how", ["--token", "--token=", "AGENT_TOKEN"])
def test_the_agent_restarts_without_the_token_in_its_arguments_or_environment(how: str) -> None:
    """/proc/<pid>/cmdline and /proc/<pid>/environ show what a process image started with,
    whatever it removes later: the agent must be a new image that never had the token."""
    given = {"--token": ["--token", TOKEN], "--token=": [f"--token={TOKEN}"], "AGENT_TOKEN": []}
    env = agent_env(AGENT_NAME="edge-1", **({"AGENT_TOKEN": TOKEN} if how == "AGENT_TOKEN"
                                             else {}))
    seen: list[str] = []
    with refusing_port() as port, subprocess.Popen(
        [sys.executable, "-m", "tagrun.agent", *given[how], "--base-url",
         f"http://127.0.0.1:{port}"], env=env, stderr=subprocess.PIPE, text=True,
    ) as proc:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(proc.stderr, lines), daemon=True)
        reader.start()
        try:
            wait_for(lines, "agent.retrying", seen)  # running, with the token it was given
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            try:
                environ: bytes | None = Path(f"/proc/{proc.pid}/environ").read_bytes()
            except PermissionError:  # not root: the agent is not dumpable, so not readable
                environ = None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            reader.join(timeout=10)
    assert b"tagrun.agent" in cmdline and TOKEN.encode() not in cmdline
    assert os.geteuid() != 0 or environ is not None
    assert environ is None or (TOKEN.encode() not in environ and b"AGENT_NAME=edge-1" in environ)
