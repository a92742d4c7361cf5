"""The `tagrun-agent` executable, as users download it, against a real server.

Uses dist/tagrun-agent/tagrun-agent (.exe on Windows), the one-folder bundle scripts/build-agent
makes, or the executable TAGRUN_AGENT_BINARY names (the release workflow tests its unpacked
assets so), and the archive beside the folder (dist/tagrun-agent.tar.gz or .zip) or the one
TAGRUN_AGENT_ARCHIVE names. Without an executable the tests skip saying so; with
TAGRUN_REQUIRE_AGENT_BINARY=1 (set by .ci/run, which builds first) they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tagrun.shared import signing
from tagrun.shared.version import __version__
from tests.support.processes import (
    TagrunProcess,
    api_client,
    require_agent_binary,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = sys.platform == "win32"
BINARY = Path(os.environ.get("TAGRUN_AGENT_BINARY") or ROOT / "dist" / "tagrun-agent"
              / ("tagrun-agent.exe" if WINDOWS else "tagrun-agent"))
# What users download: SPEC §8 allows 30 MB; the start-up budget is measured by build-agent.
ARCHIVE = Path(os.environ.get("TAGRUN_AGENT_ARCHIVE") or BINARY.parent.with_name(
    "tagrun-agent.zip" if WINDOWS else "tagrun-agent.tar.gz"))
MAX_SIZE_BYTES = 30_000_000
FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}
TAG = "edge-binary"

posix_only = pytest.mark.skipif(WINDOWS, reason="POSIX signals; Windows is covered by "
                                                "test_ctrl_c_drains_like_sigterm")


@pytest.fixture(scope="module")
def binary() -> Path:
    return require_agent_binary(BINARY)


class BinaryAgent:
    """The executable in a subprocess, configured by environment, in a process group of its
    own so that a test can signal it like a terminal or a service manager does."""

    def __init__(self, binary: Path, url: str, token: str, log_dir: Path,
                 env: Mapping[str, str]) -> None:
        self.name = f"bin-{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"agent-{self.name}.log"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AGENT_", "TAGRUN_")) and k != "MODE"}
        full_env.update({"AGENT_TOKEN": token, "BASE_INTERNAL_URL": url,
                         "AGENT_NAME": self.name, "AGENT_POLL_WAIT_S": "5", **env})
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        group: dict[str, Any] = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
                                 if WINDOWS else {"start_new_session": True})
        self.proc = subprocess.Popen([str(binary)], env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, **group)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_logged(self, event: str, timeout: float = 20.0) -> None:
        wait_until(lambda: f'"event": "{event}"' in self.log_text() or self._exited(), timeout,
                   message=f"agent log event {event}")
        assert f'"event": "{event}"' in self.log_text(), self.log_text()[-3000:]

    def _exited(self) -> bool:
        return self.proc.poll() is not None

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running after {timeout}s:\n"
                                 f"{self.log_text()[-3000:]}") from None

    def stop(self) -> None:
        """Ask it to stop as a user would; then make sure nothing of it is left."""
        tree = _tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.CTRL_BREAK_EVENT if WINDOWS else signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        for process in tree:
            try:
                process.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


def _tree(pid: int) -> list[Any]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return []


@pytest.fixture
def server(start_process, database_url: str) -> TagrunProcess:
    return start_process("standalone", database_url, env=FAST).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(server.url) as client:
        yield client


StartAgent = Callable[..., tuple[BinaryAgent, str]]


@pytest.fixture
def start_agent(binary: Path, server: TagrunProcess, api: httpx.Client, tmp_path: Path
                ) -> Iterator[StartAgent]:
    agents: list[BinaryAgent] = []

    def start(**env: str) -> tuple[BinaryAgent, str]:
        minted = api.post("/api/agent_tokens", json={"group": "edge", "tags": [TAG]}).json()
        agent = BinaryAgent(binary, server.url, minted["token"], tmp_path, env)
        agents.append(agent)
        agent.wait_logged("agent.started")
        return agent, str(minted["token"])

    yield start
    for agent in agents:
        agent.stop()


def submit(api: httpx.Client, body: dict[str, Any]) -> int:
    answer = api.post("/api/w/default/jobs", json={"tag": TAG, "max_attempts": 1, **body})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def final(api: httpx.Client, job_id: int, wait_s: float = 30) -> dict[str, Any]:
    job: dict[str, Any] = api.get(f"/api/w/default/jobs/{job_id}",
                                  params={"wait_s": wait_s}).json()
    return job


def logs(api: httpx.Client, job_id: int) -> str:
    return str(api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"])


def wait_for_output(api: httpx.Client, job_id: int, text: str) -> None:
    wait_until(lambda: text in logs(api, job_id), 20, message=f"{text!r} in the job's logs")


def test_version_help_and_size(binary: Path) -> None:
    """--version and --help work, and the archive users download is within budget."""
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert (version.returncode, version.stdout.strip()) == (0, __version__)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    shown = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30,
                           env={**env, "COLUMNS": "200"}, encoding="utf-8", errors="replace")
    assert shown.returncode == 0, shown.stderr
    for variable in ("AGENT_TOKEN", "BASE_INTERNAL_URL", "AGENT_DRAIN_TIMEOUT_S"):
        assert variable in shown.stdout
    if ARCHIVE.is_file() or os.environ.get("TAGRUN_REQUIRE_AGENT_BINARY") == "1":
        assert ARCHIVE.stat().st_size <= MAX_SIZE_BYTES, ARCHIVE


def test_the_binary_verifies_signatures(api: httpx.Client, start_agent: StartAgent,
                                        tmp_path: Path) -> None:
    """The bundled cryptography checks Ed25519 signatures: a signed job runs, an unsigned
    one and one whose args changed after signing fail unrun (identity jobs: every OS)."""
    key, _ = signing.generate("release-ci")
    keys_file = tmp_path / "trusted.keys"
    keys_file.write_text(key.public_line() + "\n", encoding="utf-8")
    agent, _ = start_agent(AGENT_VERIFY_KEYS=str(keys_file))

    def signed(args: dict[str, Any]) -> dict[str, Any]:
        data = signing.payload(workspace="default", script=None, version=None,
                               language="identity", content="", tag=TAG, timeout_s=None,
                               secrets=[], args=args)
        return {"key_id": key.key_id, "sig": key.sign(data)}

    good = submit(api, {"language": "identity", "args": {"n": 1},
                        "signature": signed({"n": 1})})
    forged = submit(api, {"language": "identity", "args": {"n": 2},
                          "signature": signed({"n": 1})})
    unsigned = submit(api, {"language": "identity", "args": {"n": 3}})
    done = final(api, good)
    assert (done["status"], done["result"]) == ("succeeded", {"n": 1}), done
    assert done["signature_check"]["verdict"] == "verified"
    for job_id, reason in ((forged, "changed after signing"), (unsigned, "not signed")):
        done = final(api, job_id)
        assert done["status"] == "failed" and done["error"]["kind"] == "signature_invalid"
        assert reason in done["error"]["message"], done
    assert "release-ci" in agent.log_text()  # its start line names the keys it trusts


@pytest.mark.skipif(WINDOWS or shutil.which("bash") is None,
                    reason="needs bash; Windows runs test_powershell_job instead")
def test_bash_job(api: httpx.Client, start_agent: StartAgent) -> None:
    agent, token = start_agent()
    job = submit(api, {"language": "bash",
                       "content": 'echo "line one"; echo "{\\"host\\": \\"edge\\"}"'})
    done = final(api, job)
    assert (done["status"], done["result"], done["worker"]) == ("succeeded", {"host": "edge"},
                                                                agent.name)
    assert "line one" in logs(api, job)
    assert token not in agent.log_text()


@pytest.mark.skipif(not (shutil.which("pwsh") or shutil.which("powershell")),
                    reason="neither pwsh nor powershell is on PATH")
def test_powershell_job(api: httpx.Client, start_agent: StartAgent) -> None:
    start_agent()
    job = submit(api, {"language": "powershell", "args": {"n": 20}, "content": (
        "$a = Get-Content -Raw $env:TAGRUN_ARGS_FILE | ConvertFrom-Json\n"
        "Write-Output 'line one'\n"
        "Write-Output ($a.n * 2)\n")})
    done = final(api, job)
    assert (done["status"], done["result"]) == ("succeeded", 40), done
    assert "line one" in logs(api, job)


PYTHON_JOB = """\
import csv, io, os, sqlite3, sys, time

def main(n, gate):
    print("halfway ✓", end="")  # no newline, no flush: it must reach the server all the same
    while not os.path.exists(gate):
        time.sleep(0.05)
    print()
    rows = list(csv.reader(io.StringIO("a,b\\n1,2\\n")))
    return {"double": n * 2, "rows": rows, "sqlite": sqlite3.sqlite_version,
            "interpreter": sys.executable}
"""


def test_python_job_runs_on_the_bundled_interpreter(
    binary: Path, api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    start_agent()
    gate = tmp_path / "gate"
    job = submit(api, {"language": "python", "content": PYTHON_JOB,
                       "args": {"n": 21, "gate": str(gate)}})
    wait_for_output(api, job, "halfway ✓")  # streamed live, and decoded as UTF-8
    gate.touch()
    done = final(api, job)
    assert done["status"] == "succeeded", (done, logs(api, job))
    result = done["result"]
    assert (result["double"], result["rows"]) == (42, [["a", "b"], ["1", "2"]])
    assert result["sqlite"]  # the standard library is there, not only what the agent imports
    assert Path(result["interpreter"]).resolve() == binary.resolve()


def test_paths_with_spaces_and_non_ascii_output(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    work = tmp_path / "work dir é"
    start_agent(AGENT_WORK_DIR=str(work))
    job = submit(api, {"language": "python", "content": (
        "import os\n"
        "def main():\n"
        "    print('héllo ✓ 你好')\n"
        "    return os.getcwd()\n")})
    done = final(api, job)
    assert done["status"] == "succeeded", (done, logs(api, job))
    assert work.resolve() in Path(done["result"]).resolve().parents
    assert "héllo ✓ 你好\n" in logs(api, job)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the bootloader changes LD_LIBRARY_PATH on Linux only")
def test_jobs_see_the_users_library_path(api: httpx.Client, start_agent: StartAgent) -> None:
    # The bootloader points LD_LIBRARY_PATH at the bundle's libraries; a job's own programs
    # must not load those. The executable, started again for Python jobs, still needs them.
    start_agent(LD_LIBRARY_PATH="/opt/site libs")
    shell = submit(api, {"language": "sh", "content": 'echo "$LD_LIBRARY_PATH"'})
    assert final(api, shell)["result"] == "/opt/site libs"
    python = submit(api, {"language": "python", "content": (
        "import os, ssl, subprocess, sys\n"
        "def main():\n"
        "    child = subprocess.run(['sh', '-c', 'echo \"$LD_LIBRARY_PATH\"'],\n"
        "                           capture_output=True, text=True)\n"
        "    libssl = [p for p in open('/proc/self/maps').read().split() if 'libssl' in p]\n"
        "    return {'own': os.environ['LD_LIBRARY_PATH'], 'child': child.stdout.strip(),\n"
        "            'libssl_bundled': all(p.startswith(sys._MEIPASS) for p in libssl)}\n")})
    done = final(api, python)
    assert done["status"] == "succeeded", (done, logs(api, python))
    assert done["result"] == {"own": "/opt/site libs", "child": "/opt/site libs",
                              "libssl_bundled": True}


SLOW_PYTHON_JOB = """\
import os, time

def main(go):
    print("started", flush=True)
    while not os.path.exists(go):
        time.sleep(0.05)
    return "finished"
"""


def drain_scenario(api: httpx.Client, start_agent: StartAgent, tmp_path: Path,
                   stop: Callable[[BinaryAgent], None]) -> None:
    agent, _ = start_agent(AGENT_DRAIN_TIMEOUT_S="60")
    go = tmp_path / "go"
    job = submit(api, {"language": "python", "content": SLOW_PYTHON_JOB,
                       "args": {"go": str(go)}})
    wait_for_output(api, job, "started")
    stop(agent)
    agent.wait_logged("agent.draining")
    later = submit(api, {"language": "python", "content": "print('too late')"})
    go.touch()
    assert agent.wait_exit() == 0, agent.log_text()[-3000:]
    done = final(api, job, wait_s=5)
    assert (done["status"], done["result"]) == ("succeeded", "finished"), done
    assert api.get(f"/api/w/default/jobs/{later}").json()["status"] == "queued"
    assert '"event": "agent.aborting"' not in agent.log_text()


@posix_only
def test_sigterm_to_the_executable_drains(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    # What a service manager or `docker stop` does: the agent is the one process it started.
    drain_scenario(api, start_agent, tmp_path, lambda agent: agent.proc.send_signal(
        signal.SIGTERM))


def test_ctrl_c_drains_like_sigterm(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    # Ctrl+C in a terminal signals the whole foreground process group: the agent drains as on
    # SIGTERM, and its jobs, each in a process group of its own, run on to their end.
    def ctrl_c(agent: BinaryAgent) -> None:
        if WINDOWS:
            agent.proc.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(agent.proc.pid, signal.SIGINT)
    drain_scenario(api, start_agent, tmp_path, ctrl_c)


TREE_JOB = """\
import os, subprocess, sys, time

def main(pid_file):
    sleeper = ["ping", "-n", "300", "127.0.0.1"] if os.name == "nt" else ["sleep", "300"]
    child = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL)
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    print("started", flush=True)
    time.sleep(300)
"""


def test_cancel_kills_the_jobs_process_tree(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent, _ = start_agent()
    pid_file = tmp_path / "grandchild.pid"
    job = submit(api, {"language": "python", "content": TREE_JOB,
                       "args": {"pid_file": str(pid_file)}})
    wait_for_output(api, job, "started")
    grandchild = psutil.Process(int(pid_file.read_text()))
    api.post(f"/api/w/default/jobs/{job}/cancel")
    assert final(api, job, wait_s=20)["status"] == "cancelled"
    wait_until(lambda: _gone(grandchild), 10, message="the job's child process to be killed")
    assert agent.proc.poll() is None


def _gone(process: Any) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)  # dead, waiting to be reaped
    except psutil.NoSuchProcess:
        return True
