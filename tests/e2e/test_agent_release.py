"""A release asset on the OS it was built for: what a user of that OS notices first.

The release workflow's smoke job runs this file (with test_agent_binary.py) against each
unpacked asset through TAGRUN_AGENT_BINARY; the normal suite runs it against
dist/tagrun-agent/tagrun-agent. The agent's PATH starts with a folder of decoys named python,
python3 and py that fail loudly, and leaves out the folders of the interpreter running these
tests (a runner's setup-python): the agent and its Python jobs must get by on the bundled
interpreter alone. Covered here: every language with non-ASCII output, INIT_SCRIPT, a job
using the standard library (zoneinfo, sqlite3, a spawn pool, `sys.executable -c`, HTTPS where
the internet is reachable), a job's background grandchild on exit and timeout (on cancel: in
test_agent_binary.py), a hard kill of the agent, and a work directory whose path has spaces,
non-ASCII and, past Windows' old 260-character limit, length.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.e2e.test_agent_binary import (
    BINARY,
    FAST,
    TAG,
    WINDOWS,
    BinaryAgent,
    final,
    logs,
    submit,
    wait_for_output,
)
from tests.support.processes import TagrunProcess, api_client, require_agent_binary, wait_until

TEXT = "héllo ✓ 你好 ñ"
DECOY_EXIT = 97


@pytest.fixture(scope="module")
def binary() -> Path:
    return require_agent_binary(BINARY)


@pytest.fixture
def server(start_process, database_url: str) -> TagrunProcess:
    return start_process("standalone", database_url, env=FAST).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(server.url) as client:
        yield client


def path_without_python(tmp_path: Path) -> str:
    """PATH for the agent: decoy pythons first, then PATH without the folders that hold a
    python (this interpreter's, a runner's setup-python, Windows' store alias) unless they
    also hold `sh`, as /usr/bin does: the decoys shadow those."""
    decoys = tmp_path / "decoys"
    decoys.mkdir(exist_ok=True)
    for name in ("python", "python3", "py"):
        if WINDOWS:
            (decoys / f"{name}.cmd").write_text(
                f"@echo a system python was used 1>&2\r\n@exit /b {DECOY_EXIT}\r\n")
        else:
            decoy = decoys / name
            decoy.write_text(f"#!/bin/sh\necho 'a system python was used' >&2\n"
                             f"exit {DECOY_EXIT}\n")
            decoy.chmod(0o755)
    kept = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry:
            continue
        has_python = any(shutil.which(n, path=entry) for n in ("python", "python3"))
        if has_python and not shutil.which("sh", path=entry):
            continue
        kept.append(entry)
    return os.pathsep.join([str(decoys), *kept])


class Agents:
    """Agents started with the release's environment; every one is stopped at the end."""

    def __init__(self, binary: Path, server: TagrunProcess, api: httpx.Client,
                 tmp_path: Path) -> None:
        self.binary, self.server, self.api, self.tmp_path = binary, server, api, tmp_path
        self.path = path_without_python(tmp_path)
        self.started: list[BinaryAgent] = []

    def launch(self, **env: str) -> BinaryAgent:
        minted = self.api.post("/api/agent_tokens", json={"group": "edge", "tags": [TAG]})
        agent = BinaryAgent(self.binary, self.server.url, minted.json()["token"], self.tmp_path,
                            {"PATH": self.path, **env})
        self.started.append(agent)
        return agent

    def start(self, **env: str) -> BinaryAgent:
        agent = self.launch(**env)
        agent.wait_logged("agent.started")
        return agent


@pytest.fixture
def agents(binary: Path, server: TagrunProcess, api: httpx.Client, tmp_path: Path
           ) -> Iterator[Agents]:
    started = Agents(binary, server, api, tmp_path)
    yield started
    for agent in started.started:
        agent.stop()


def succeeded(api: httpx.Client, job_id: int, wait_s: float = 30) -> Any:
    done = final(api, job_id, wait_s)
    assert done["status"] == "succeeded", (done, logs(api, job_id)[-3000:])
    return done["result"]


def events(agent: BinaryAgent, event: str) -> list[dict[str, Any]]:
    found = []
    for line in agent.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def languages_here(path: str) -> list[str]:
    found = ["python", "identity"]
    if not WINDOWS:  # Windows' bash may be WSL's; Git Bash jobs are the Windows tests' business
        found += [lang for lang in ("bash", "sh") if shutil.which(lang, path=path)]
    if shutil.which("pwsh", path=path) or shutil.which("powershell", path=path):
        found.append("powershell")
    return found


SOURCES = {
    "python": f"def main():\n    print({TEXT!r})\n    return {TEXT!r}\n",
    "bash": f"echo '{TEXT}'\n",
    "sh": f"echo '{TEXT}'\n",
    "powershell": f"Write-Output '{TEXT}'\n",
}


def test_every_language_keeps_non_ascii_output(api: httpx.Client, agents: Agents) -> None:
    agents.start()
    jobs = {}
    for language in languages_here(agents.path):
        body: dict[str, Any] = {"language": language}
        if language == "identity":
            body["args"] = {"text": TEXT}
        else:
            body["content"] = SOURCES[language]
        jobs[language] = submit(api, body)
    for language, job_id in jobs.items():
        result = succeeded(api, job_id)
        if language == "identity":
            assert result == {"text": TEXT}
        else:
            assert TEXT in logs(api, job_id), (language, logs(api, job_id))
        if language == "python":
            assert result == TEXT


def test_init_script_runs_before_the_first_claim(api: httpx.Client, agents: Agents) -> None:
    # `echo` and `exit` mean the same in bash, sh and PowerShell, whichever the agent picks.
    agent = agents.start(INIT_SCRIPT=f"echo 'init {TEXT}'")
    [done] = events(agent, "agent.init_script_done")
    assert f"init {TEXT}" in done["output"], done
    assert agent.log_text().index("agent.init_script_done") < agent.log_text().index(
        "agent.started")
    assert succeeded(api, submit(api, {"language": "identity", "args": {}})) == {}

    broken = agents.launch(INIT_SCRIPT="echo 'broken ✗'; exit 3")
    assert broken.wait_exit() == 1, broken.log_text()[-3000:]
    [failed] = events(broken, "agent.init_script_failed")
    assert "broken ✗" in failed["output"], failed


STDLIB_JOB = """\
import multiprocessing, sqlite3, subprocess, sys, zoneinfo
from datetime import datetime

def square(x):
    return x * x

def main():
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    offsets = [datetime(2024, m, 15, tzinfo=paris).utcoffset().total_seconds() / 3600
               for m in (1, 7)]
    with sqlite3.connect(":memory:") as db:
        db.execute("create table t (v text)")
        db.execute("insert into t values (?)", ("é",))
        stored = db.execute("select v || '✓' from t").fetchone()[0]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        squares = pool.map(square, range(5))
    child = subprocess.run([sys.executable, "-c", "import sys; print(sys.version_info[0], 'ñ')"],
                           capture_output=True, encoding="utf-8")
    return {"offsets": offsets, "sqlite": stored, "squares": squares,
            "child": [child.returncode, child.stdout.strip(), child.stderr[-500:]],
            "executable": sys.executable}
"""


def test_standard_library_job_on_the_bundled_interpreter(
    binary: Path, api: httpx.Client, agents: Agents
) -> None:
    agents.start()
    result = succeeded(api, submit(api, {"language": "python", "content": STDLIB_JOB}), 60)
    assert result["offsets"] == [1.0, 2.0]
    assert result["sqlite"] == "é✓"
    assert result["squares"] == [0, 1, 4, 9, 16]
    assert result["child"][:2] == [0, "3 ñ"], result["child"]
    assert Path(result["executable"]).resolve() == binary.resolve()


HTTPS_URL = os.environ.get("TAGRUN_RELEASE_HTTPS_URL", "https://github.com")


def test_stdlib_https_with_the_os_trust_store(api: httpx.Client, agents: Agents) -> None:
    """urllib in a job verifies a public site's certificate (truststore: the OS's store)."""
    try:
        urllib.request.urlopen(HTTPS_URL, timeout=10).close()
    except OSError as exc:
        if os.environ.get("TAGRUN_REQUIRE_INTERNET") == "1":
            raise
        pytest.skip(f"{HTTPS_URL} is out of reach from here: {exc}")
    agents.start()
    job = submit(api, {"language": "python", "args": {"url": HTTPS_URL}, "content": (
        "import urllib.request\n"
        "def main(url):\n"
        "    with urllib.request.urlopen(url, timeout=20) as answer:\n"
        "        return answer.status\n")})
    assert succeeded(api, job, 60) == 200


GRANDCHILD_JOB = """\
import os, subprocess, time

def main(pid_file, then):
    sleeper = ["ping", "-n", "300", "127.0.0.1"] if os.name == "nt" else ["sleep", "300"]
    child = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL)
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    print("started", flush=True)
    if then == "wait":
        time.sleep(300)
    return "left a child"
"""


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("end", ["exit", "timeout"])
def test_background_grandchild_ends_with_its_job(
    end: str, api: httpx.Client, agents: Agents, tmp_path: Path
) -> None:
    agent = agents.start()
    pid_file = tmp_path / "grandchild.pid"
    body: dict[str, Any] = {"language": "python", "content": GRANDCHILD_JOB, "args": {
        "pid_file": str(pid_file), "then": "return" if end == "exit" else "wait"}}
    if end == "timeout":
        body["timeout_s"] = 3
    done = final(api, submit(api, body), wait_s=30)
    if end == "exit":
        assert (done["status"], done["result"]) == ("succeeded", "left a child"), done
    else:
        assert done["status"] == "failed" and done["error"]["kind"] == "timeout", done
    grandchild = int(pid_file.read_text())
    wait_until(lambda: _gone(grandchild), 10, message="the job's background child to end")
    assert agent.proc.poll() is None


@pytest.mark.skipif(WINDOWS, reason="a shell's background job: POSIX shells")
def test_shell_jobs_background_grandchild_ends_with_it(
    api: httpx.Client, agents: Agents, tmp_path: Path
) -> None:
    agents.start()
    pid_file = tmp_path / "bg.pid"
    job = submit(api, {"language": "sh", "content": f"sleep 300 &\necho $! > '{pid_file}'\n"})
    succeeded(api, job)
    grandchild = int(pid_file.read_text())
    wait_until(lambda: _gone(grandchild), 10, message="the shell job's background child to end")


def _unpacked(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("_MEI*")}  # where a one-file build unpacks itself


def _same_file(process: Any, path: Path) -> bool:
    try:
        return os.path.samefile(process.exe(), path)
    except (psutil.Error, OSError):
        return False


def test_hard_kill_leaves_no_process_and_nothing_unpacked(
    binary: Path, api: httpx.Client, agents: Agents, tmp_path: Path
) -> None:
    """kill -9 (TerminateProcess on Windows), as Task Manager, a service manager at its
    timeout or the OOM killer do it. The executable is one process that unpacks nothing: no
    launcher whose death leaves the agent running and claiming, no directory left behind."""
    temp = tmp_path / "temp"
    temp.mkdir()
    system_temp = Path(tempfile.gettempdir())
    before = _unpacked(system_temp)
    agent = agents.start(TMPDIR=str(temp), TEMP=str(temp), TMP=str(temp),
                         AGENT_WORK_DIR=str(tmp_path / "work"))
    job = submit(api, {"language": "python", "content": (
        "import time\ndef main():\n    print('started', flush=True)\n    time.sleep(300)\n")})
    wait_for_output(api, job, "started")
    process = psutil.Process(agent.proc.pid)
    tree = [process, *process.children(recursive=True)]
    try:
        assert Path(process.exe()).resolve() == binary.resolve()
        # The executable among its children is its Python job (this executable again,
        # started with --tagrun-run-python), never the real agent under a launcher. (Windows
        # adds a conhost.exe where the agent has no console of its own.)
        ours = [child.cmdline()[1:2] for child in process.children()
                if _same_file(child, binary)]
        assert ours == [["--tagrun-run-python"]], ours
        agent.proc.kill()
        assert agent.proc.wait(20) != 0
        assert not psutil.pid_exists(agent.proc.pid)
        assert not _unpacked(temp)
        assert _unpacked(system_temp) <= before
    finally:
        for leftover in tree[1:]:  # the job itself: its run has no agent left to end it
            try:
                leftover.kill()
            except psutil.Error:
                pass


def long_work_dir(tmp_path: Path) -> Path:
    """Spaces, non-ASCII, and more than 260 characters once a job's folders are added."""
    work = tmp_path / "wörk dir ✓"
    while len(str(work)) < 270:
        work /= "a folder with a long name é"
    return work


def test_work_directory_with_spaces_non_ascii_and_a_long_path(
    api: httpx.Client, agents: Agents, tmp_path: Path
) -> None:
    work = long_work_dir(tmp_path)
    agents.start(AGENT_WORK_DIR=str(work))
    job = submit(api, {"language": "python", "content": (
        "import os, subprocess, sys\n"
        "def main():\n"
        "    with open('out ✓.txt', 'w', encoding='utf-8') as f:\n"
        "        f.write('é')\n"
        "    child = subprocess.run([sys.executable, '-c', 'import os; print(os.getcwd())'],\n"
        "                           capture_output=True, encoding='utf-8')\n"
        f"    print({TEXT!r})\n"
        "    return {'cwd': os.getcwd(), 'read': open('out ✓.txt', encoding='utf-8').read(),\n"
        "            'child': child.stdout.strip()}\n")})
    result = succeeded(api, job)
    assert work.resolve() in Path(result["cwd"]).resolve().parents
    assert len(result["cwd"]) > 260
    assert (result["read"], result["child"]) == ("é", result["cwd"])
    assert TEXT in logs(api, job)
    if "powershell" in languages_here(agents.path):
        shell = submit(api, {"language": "powershell",
                             "content": f"Write-Output '{TEXT}'\n(Get-Location).Path\n"})
        succeeded(api, shell)
        assert TEXT in logs(api, shell)


def test_decoys_would_be_found(tmp_path: Path) -> None:
    """The PATH the agents above get: `python` there is a decoy that fails, not an
    interpreter, so their jobs passing proves they did not need one."""
    path = path_without_python(tmp_path)
    found = shutil.which("python", path=path)
    assert found is not None
    shown = subprocess.run([found, "-c", "print(1)"], capture_output=True, text=True)
    assert shown.returncode == DECOY_EXIT and "system python" in shown.stderr
