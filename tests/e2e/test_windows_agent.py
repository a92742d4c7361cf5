"""The agent on Windows against a real server: Ctrl+C or Ctrl+Break in its console drains it
(it finishes the jobs it runs and claims no more) and never reaches a job, which has a hidden
console of its own; and a job's background grandchild ends with it.

The agent executable's drain is tested in tests/e2e/test_agent_binary.py; this is the
agent from the venv (`python -m tagrun.agent`), the code the executable freezes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.support.processes import (
    TagrunProcess,
    agent_token,
    api_client,
    finished,
    wait_until,
)

if sys.platform != "win32":
    pytest.skip("Windows only: the release workflow runs it", allow_module_level=True)

FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}
TAG = "windows"

SLOW_PYTHON_JOB = """\
import os, time

def main(go):
    print("started", flush=True)
    while not os.path.exists(go):
        time.sleep(0.05)
    return "finished"
"""


class ConsoleAgent:
    """The agent in a process group of its own, configured by environment."""

    def __init__(self, url: str, token: str, log_dir: Path, **env: str) -> None:
        self.name = f"win-{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"agent-{self.name}.log"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AGENT_", "TAGRUN_", "INIT_SCRIPT")) and k != "MODE"}
        full_env.update({"AGENT_TOKEN": token, "BASE_INTERNAL_URL": url,
                         "AGENT_NAME": self.name, "AGENT_POLL_WAIT_S": "5", **env})
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tagrun.agent"], env=full_env, stdout=self._log,
            stderr=subprocess.STDOUT, creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_logged(self, event: str, timeout: float = 30.0) -> None:
        wait_until(lambda: f'"event": "{event}"' in self.log_text()
                   or self.proc.poll() is not None, timeout, message=f"agent log {event}")
        assert f'"event": "{event}"' in self.log_text(), self.log_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture
def server(start_process: Any, database_url: str) -> TagrunProcess:
    return start_process("standalone", database_url, env=FAST).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(server.url) as client:
        yield client


@pytest.fixture
def agent(server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> Iterator[ConsoleAgent]:
    started = ConsoleAgent(server.url, agent_token(api, [TAG]), tmp_path,
                           AGENT_DRAIN_TIMEOUT_S="120")
    try:
        started.wait_logged("agent.started")
        yield started
    finally:
        started.stop()


def submit(api: httpx.Client, body: dict[str, Any]) -> int:
    answer = api.post("/api/w/default/jobs", json={"tag": TAG, "max_attempts": 1, **body})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).is_running())
    except psutil.NoSuchProcess:
        return False


def logs(api: httpx.Client, job_id: int) -> str:
    return str(api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"])


# Runs in a hidden console of its own, where it starts the agent and then, when told, presses
# Ctrl+C or Ctrl+Break for the whole console: as a user at the agent's terminal does. (This
# test's own console must not get it.) Exits with the agent's exit code.
CONSOLE = """\
import ctypes, os, signal, subprocess, sys, time
log, press, event = sys.argv[1], sys.argv[2], int(sys.argv[3])
kernel32 = ctypes.windll.kernel32
kernel32.SetConsoleCtrlHandler(None, False)  # Ctrl+C handled, here and in the agent
with open(log, "ab") as out:
    agent = subprocess.Popen([sys.executable, "-m", "tagrun.agent"], stdout=out,
                             stderr=subprocess.STDOUT)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the key press is for the agent, not for us
signal.signal(signal.SIGBREAK, signal.SIG_IGN)
while not os.path.exists(press):
    if agent.poll() is not None:
        sys.exit(90)
    time.sleep(0.05)
if not kernel32.GenerateConsoleCtrlEvent(event, 0):  # 0: every process on this console
    sys.exit(91)
sys.exit(agent.wait())
"""


@pytest.mark.parametrize("event", ["CTRL_C_EVENT", "CTRL_BREAK_EVENT"])
def test_a_key_press_in_the_agents_console_drains_it_and_never_reaches_a_job(
    server: TagrunProcess, api: httpx.Client, tmp_path: Path, event: str
) -> None:
    name = f"win-{uuid.uuid4().hex[:6]}"
    log = tmp_path / f"agent-{name}.log"
    press = tmp_path / "press"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENT_", "TAGRUN_", "INIT_SCRIPT")) and k != "MODE"}
    env.update({"AGENT_TOKEN": agent_token(api, [TAG]), "BASE_INTERNAL_URL": server.url,
                "AGENT_NAME": name, "AGENT_POLL_WAIT_S": "5", "AGENT_DRAIN_TIMEOUT_S": "120"})

    def text() -> str:
        return log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""

    hidden = subprocess.STARTUPINFO(dwFlags=subprocess.STARTF_USESHOWWINDOW,
                                    wShowWindow=subprocess.SW_HIDE)
    console = subprocess.Popen(
        [sys.executable, "-c", CONSOLE, str(log), str(press),
         str(getattr(signal, event))], env=env,
        creationflags=subprocess.CREATE_NEW_CONSOLE, startupinfo=hidden)
    try:
        wait_until(lambda: '"event": "agent.started"' in text(), 30,
                   message="the agent to start")
        go = tmp_path / "go"
        job = submit(api, {"language": "python", "content": SLOW_PYTHON_JOB,
                           "args": {"go": str(go)}})
        wait_until(lambda: "started" in logs(api, job), 30, message="the job to start")
        press.touch()
        wait_until(lambda: '"event": "agent.stopping"' in text(), 30,
                   message="the agent to stop claiming")
        later = submit(api, {"language": "python", "content": "print('too late')"})
        go.touch()
        assert console.wait(60) == 0, text()[-3000:]
        done = finished(api, job, timeout=30)
        assert (done["status"], done["result"]) == ("succeeded", "finished"), done
        assert api.get(f"/api/w/default/jobs/{later}").json()["status"] == "queued"
        assert '"event": "agent.aborting"' not in text()
    finally:
        if console.poll() is None:
            for process in psutil.Process(console.pid).children(recursive=True):
                process.kill()
            console.kill()
        console.wait()


@pytest.mark.parametrize("ending", ["exit", "cancel", "timeout"])
def test_a_background_grandchild_does_not_outlive_its_job(
    api: httpx.Client, agent: ConsoleAgent, tmp_path: Path, ending: str
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],\n"
        "    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,\n"
        "    creationflags=subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP)\n"
        f"open({str(pid_file)!r}, 'w').write(str(sleeper.pid))\n"
        "print('started', flush=True)\n"
        + ("" if ending == "exit" else "time.sleep(300)\n"))
    fields = {"timeout_s": 3} if ending == "timeout" else {}
    job = submit(api, {"language": "python", "content": script, **fields})
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30,
               message="the grandchild to start")
    pid = int(pid_file.read_text())
    if ending == "cancel":
        api.post(f"/api/w/default/jobs/{job}/cancel")
    status = {"exit": "succeeded", "cancel": "cancelled", "timeout": "failed"}[ending]
    try:
        assert alive(pid) or ending == "exit"
        assert finished(api, job, timeout=60)["status"] == status
        wait_until(lambda: not alive(pid), 10, message=f"grandchild {pid} to be killed")
    finally:
        if alive(pid):
            psutil.Process(pid).kill()
