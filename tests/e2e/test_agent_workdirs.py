"""A real agent's work directories and job process trees (POSIX): private directories, removed
whole after each job whatever it left there, leftovers of a killed agent swept at the next
start, and no process of a job left running once it ends, however it ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    agent_token,
    api_client,
    finished,
    process_alive,
    require_agent_binary,
    wait_until,
)
from tests.support.users import traversable, unprivileged_user

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes and processes")

ROOT = Path(__file__).resolve().parents[2]
FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}
RUN_PREFIX = "tagrun-agent-"  # an agent run's directory in the work root


@pytest.fixture
def fast_server(start_process: Any, database_url: str) -> TagrunProcess:
    return start_process("standalone", database_url, env=FAST).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(fast_server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(fast_server.url) as client:
        yield client


StartAgent = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(fast_server: TagrunProcess, api: httpx.Client, tmp_path: Path
                ) -> Iterator[StartAgent]:
    """An agent serving `tag`: the venv's, or the agent executable (`how`), or run as the
    unprivileged user (`user`), for whom file modes are not waived as they are for root."""
    agents: list[AgentProcess] = []

    def start(tag: str, how: str = "venv", user: str | None = None, **env: str
              ) -> AgentProcess:
        command = None
        if how == "frozen":
            command = [str(require_agent_binary(ROOT / "dist" / "tagrun-agent" / "tagrun-agent"))]
        agent = AgentProcess(fast_server.url, agent_token(api, [tag]), tmp_path,
                             name=f"{tag}-{uuid.uuid4().hex[:6]}", command=command,
                             user=user, env={"HOME": "/nonexistent", **env} if user else env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.kill()


def submit(api: httpx.Client, tag: str, content: str, **fields: Any) -> int:
    job = api.post("/api/w/default/jobs", json={
        "language": "bash", "tag": tag, "content": content, **fields}).json()
    return int(job["id"])


def log_of(api: httpx.Client, job_id: int) -> str:
    return str(api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"])


def run_dirs(work: Path) -> list[Path]:
    return sorted(work.glob(RUN_PREFIX + "*"))


def events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in agent.log_text().splitlines()
            if f'"event": "{name}"' in line]


def stop(agent: AgentProcess) -> None:
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 0, agent.log_text()[-2000:]


@pytest.fixture
def agent_user(tmp_path: Path) -> Iterator[str | None]:
    """The user an agent runs as here: unprivileged (created when the suite runs as root, the
    suite's own user otherwise), with the venv and tmp_path reachable."""
    user = unprivileged_user("tagrun-test-agent")
    with traversable(ROOT / ".venv" / "bin" / "python", tmp_path / "x"):
        yield user


def own_work_root(tmp_path: Path, user: str | None) -> Path:
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    if user is not None:
        shutil.chown(work, user, user)
    return work


# -- private directories ---------------------------------------------------------------------

@pytest.mark.parametrize("how", ["venv", "frozen"])
def test_the_work_root_and_each_job_directory_are_the_agents_alone(
    how: str, api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    """AGENT_WORK_DIR made by the agent (under the usual umask 022), its run directory, a
    job's directory and the files it writes there: none open to other users. At a stop
    the agent leaves nothing behind."""
    work = tmp_path / "made" / "work"
    agent = start_agent("private", how, AGENT_WORK_DIR=str(work))
    job = submit(api, "private", 'stat -c "%a" ../.. .. . "$TAGRUN_ARGS_FILE" script.sh | '
                                 'paste -sd " "')
    done = finished(api, job, timeout=60)
    assert done["status"] == "succeeded", (done, log_of(api, job))
    assert done["result"] == "700 700 700 600 600"  # root, run, job, args, script
    [run] = run_dirs(work)
    assert oct(run.stat().st_mode & 0o777) == "0o700"
    stop(agent)
    assert list(work.iterdir()) == []


def test_with_a_job_user_its_jobs_pass_through_to_their_own_directory(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    """AGENT_JOB_USER: the root agent makes the work root and its run directory 0711, so the
    job user reaches its job's directory (0700, its own) and lists nothing on the way."""
    if os.geteuid() != 0:
        pytest.skip("running jobs as another user needs an agent running as root")
    user = unprivileged_user("tagrun-test-job")
    assert user is not None
    work = tmp_path / "made" / "work"
    work.parent.mkdir()
    with traversable(ROOT / ".venv" / "bin" / "python", work):
        agent = start_agent("as-user", AGENT_WORK_DIR=str(work), AGENT_JOB_USER=user)
        job = submit(api, "as-user", 'stat -c "%a %U" ../.. .. . "$TAGRUN_ARGS_FILE" | '
                                     'paste -sd " "; ls .. > /dev/null 2>&1 || echo "unlisted"')
        done = finished(api, job, timeout=60)
        assert done["status"] == "succeeded", (done, log_of(api, job))
        assert log_of(api, job).splitlines() == [
            f"711 root 711 root 700 {user} 600 {user}", "unlisted"]
        stop(agent)
    assert list(work.iterdir()) == []


def test_a_work_root_other_users_can_write_to_is_refused(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    work = tmp_path / "shared"
    work.mkdir()
    work.chmod(0o777)
    agent = start_agent("open", AGENT_WORK_DIR=str(work))
    assert agent.wait_exit() == 1
    assert (f"error: AGENT_WORK_DIR='{work}' can be written by other users (mode 0777), who "
            "could replace what jobs run: make it the agent's alone (chmod 700, or 711 with "
            "AGENT_JOB_USER)") in " ".join(agent.log_text().split())
    assert list(work.iterdir()) == []


# -- removed whole ---------------------------------------------------------------------------

# What a build leaves: a git repository (its objects and packs are read-only files), and
# read-only directories (as Go's module cache makes them), one of them unreadable too.
READ_ONLY_LEFTOVERS = """
set -e
git init -q repo
cd repo
for i in 1 2 3; do
  echo "$i" > "file$i"; git add "file$i"
  git -c user.name=job -c user.email=job@example.com commit -qm "commit $i"
done
git gc -q
chmod -R a-w .git
cd ..
mkdir -p sealed/inner && touch sealed/inner/file
chmod 000 sealed/inner && chmod 500 sealed
echo made
"""


def test_a_job_that_leaves_read_only_files_and_directories_leaves_nothing_behind(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path, agent_user: str | None
) -> None:
    """As an unprivileged agent, for which a read-only directory's entries cannot simply be
    unlinked (root's agent can)."""
    work = own_work_root(tmp_path, agent_user)
    agent = start_agent("git", user=agent_user, AGENT_WORK_DIR=str(work))
    job = submit(api, "git", READ_ONLY_LEFTOVERS)
    done = finished(api, job, timeout=60)
    assert (done["status"], done["result"]) == ("succeeded", "made"), log_of(api, job)
    [run] = run_dirs(work)
    wait_until(lambda: not list(run.glob("job*")), 10,
               message="the job's directory to be removed")
    stop(agent)
    assert list(work.iterdir()) == []
    assert events(agent, "workdir.not_removed") == []


def test_what_cannot_be_removed_is_logged(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path, agent_user: str | None
) -> None:
    """Root (the test) puts a file of its own into a job's directory while the job runs: the
    unprivileged agent cannot remove it, and says so."""
    if agent_user is None:
        pytest.skip("a file the agent cannot remove needs a second user: run the suite as root")
    work = own_work_root(tmp_path, agent_user)
    gate = tmp_path / "x" / "gate"
    gate.parent.mkdir(mode=0o777)
    gate.parent.chmod(0o777)
    agent = start_agent("stuck", user=agent_user, AGENT_WORK_DIR=str(work))
    job = submit(api, "stuck", f'echo "$PWD"; while [ ! -e {gate} ]; do sleep 0.05; done')
    job_dir = Path(wait_until(lambda: log_of(api, job).strip(), 30,
                              message="the job to start"))
    (job_dir / "roots").mkdir()
    (job_dir / "roots" / "file").write_text("root's")
    gate.touch()
    assert finished(api, job)["status"] == "succeeded"
    wait_until(lambda: '"event": "workdir.not_removed"' in agent.log_text(), 10,
               message="the agent to log what it could not remove")
    [line] = [e for e in events(agent, "workdir.not_removed") if e.get("job_id") == job]
    assert line["path"] == str(job_dir)
    assert line["error"] == f"Permission denied: {job_dir / 'roots' / 'file'}"
    assert not (job_dir / "script.sh").exists()  # the rest went
    stop(agent)
    shutil.rmtree(work)


def test_the_next_agent_sweeps_what_a_killed_agent_left_and_nothing_else(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path, agent_user: str | None
) -> None:
    work = own_work_root(tmp_path, agent_user)
    pids = tmp_path / "x" / "pids"
    pids.parent.mkdir(mode=0o777)
    pids.parent.chmod(0o777)
    killed = start_agent("killed", user=agent_user, AGENT_WORK_DIR=str(work))
    job = submit(api, "killed", READ_ONLY_LEFTOVERS + f"echo $$ > {pids}; sleep 300")
    wait_until(pids.exists, 30, message="the job to start")
    killed.kill()  # SIGKILL: no time to clean up; then its job, as a reboot would
    os.killpg(int(pids.read_text()), signal.SIGKILL)
    api.post(f"/api/w/default/jobs/{job}/cancel")
    [left] = run_dirs(work)
    unrelated = [work / "keep-me", work / (RUN_PREFIX + "no-lock")]
    for path in unrelated:
        path.mkdir()
        if agent_user is not None:
            shutil.chown(path, agent_user, agent_user)
    running = start_agent("running", user=agent_user, AGENT_WORK_DIR=str(work))
    running.wait_logged("agent.started")
    assert not left.exists()
    assert [e["path"] for e in events(running, "workdir.swept")] == [str(left)]
    [mine] = [p for p in run_dirs(work) if p.name != RUN_PREFIX + "no-lock"]
    later = start_agent("later", user=agent_user, AGENT_WORK_DIR=str(work))
    later.wait_logged("agent.started")
    assert mine.exists(), "an agent swept the directory of one still running"
    for path in unrelated:
        assert path.exists()
    stop(running)
    stop(later)
    assert sorted(work.iterdir()) == sorted(unrelated)


# -- process trees ---------------------------------------------------------------------------

GRANDCHILD = {
    "bash": 'nohup sleep 300 > /dev/null 2>&1 & echo $! > {pid}\n',
    "python": ("import subprocess\n"
               "child = subprocess.Popen(['sleep', '300'], stdout=subprocess.DEVNULL,\n"
               "                         stderr=subprocess.DEVNULL)\n"
               "open({pid!r}, 'w').write(str(child.pid))\n"),
}
ENDINGS: dict[str, tuple[str, dict[str, Any], str]] = {
    # how the job ends: what it does after starting the grandchild, its fields, its status
    "exit": ("echo done", {}, "succeeded"),
    "cancel": ("sleep 300", {}, "cancelled"),
    "timeout": ("sleep 300", {"timeout_s": 2, "max_attempts": 1}, "failed"),
}


@pytest.mark.parametrize("how", ["venv", "frozen"])
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_background_grandchild_does_not_outlive_its_job(
    how: str, ending: str, api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    """A job starts a grandchild in the background, its output elsewhere (so no pipe ties it
    to the job), and then exits, is cancelled or times out: the grandchild is gone."""
    pid_file = tmp_path / "grandchild.pid"
    then, fields, status = ENDINGS[ending]
    start_agent("tree", how)
    job = submit(api, "tree", GRANDCHILD["bash"].format(pid=pid_file) + then, **fields)
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30,
                         message="the grandchild to start"))
    assert process_alive(pid) or ending == "exit"
    if ending == "cancel":
        api.post(f"/api/w/default/jobs/{job}/cancel")
    assert finished(api, job, timeout=60)["status"] == status
    wait_until(lambda: not process_alive(pid), 10, message=f"grandchild {pid} to be killed")


def test_a_python_jobs_background_child_does_not_outlive_it(
    api: httpx.Client, start_agent: StartAgent, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    start_agent("tree-py")
    job = api.post("/api/w/default/jobs", json={
        "language": "python", "tag": "tree-py",
        "content": GRANDCHILD["python"].format(pid=str(pid_file))}).json()["id"]
    assert finished(api, job, timeout=60)["status"] == "succeeded", log_of(api, job)
    pid = int(pid_file.read_text())
    wait_until(lambda: not process_alive(pid), 10, message=f"child {pid} to be killed")
