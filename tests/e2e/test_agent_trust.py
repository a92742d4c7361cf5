"""The trust boundary, attacked: an agent acts only on jobs leased to its own token (and
session), whatever name its request body gives. Real server, real agents, real tokens; each
attack must be refused and change nothing a user could see."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.support.database import query
from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    api_client,
    require_agent_binary,
    wait_until,
)
from tests.support.users import traversable, unprivileged_user

ROOT = Path(__file__).resolve().parents[2]
FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}
CLAIM = "/api/agent_workers/claim"
HEARTBEAT = "/api/agent_workers/heartbeat"
RELEASE = "/api/agent_workers/release"
COMPLETE_MANY = "/api/agent_workers/complete"


@pytest.fixture
def fast_server(start_process: Any, database_url: str) -> TagrunProcess:
    return start_process("standalone", database_url, env=FAST).wait_healthy()  # type: ignore[no-any-return]


@pytest.fixture
def api(fast_server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(fast_server.url) as client:
        yield client


Mint = Callable[..., "Caller"]


class Caller:
    """An agent token driven by hand, as an attacker with curl would."""

    def __init__(self, url: str, minted: dict[str, Any], session: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {minted['token']}"}
        if session is not None:
            headers["Tagrun-Agent-Session"] = session
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)
        self.minted = minted

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body)

    def logs(self, job_id: int, body: dict[str, Any]) -> httpx.Response:
        return self.post(f"/api/w/default/agent_workers/jobs/{job_id}/logs", body)

    def complete(self, job_id: int, body: dict[str, Any]) -> httpx.Response:
        return self.post(f"/api/w/default/agent_workers/jobs/{job_id}/complete", body)


@pytest.fixture
def mint(api: httpx.Client, fast_server: TagrunProcess) -> Iterator[Mint]:
    callers: list[Caller] = []

    def make(tags: list[str], group: str = "edge", session: str | None = None) -> Caller:
        minted = api.post("/api/agent_tokens", json={"group": group, "tags": tags}).json()
        caller = Caller(fast_server.url, minted, session)
        callers.append(caller)
        return caller

    yield make
    for caller in callers:
        caller.http.close()


def submit(api: httpx.Client, tag: str, content: str) -> int:
    response = api.post("/api/w/default/jobs",
                        json={"language": "bash", "tag": tag, "content": content})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def job_row(database_url: str, job_id: int) -> dict[str, Any]:
    [row] = query(database_url, "SELECT status, worker, attempt, lease_expires_at, log_received,"
                                " result, refusals FROM jobs WHERE id = $1", job_id)
    return row


def agents_by_name(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in api.get("/api/workers").json()["agents"]}


def assert_refused(response: httpx.Response, *codes: str) -> None:
    assert response.status_code in (403, 409), response.text
    assert response.json()["error"]["code"] in codes, response.text


def attack_every_route(attacker: Caller, victim: str, job_id: int, attempt: int,
                       offset: int) -> None:
    """Everything an agent route lets a token do to a job, naming its holder and not."""
    forged = {"status": "succeeded", "result": {"forged": True}}
    for name in ({"name": victim}, {}):
        assert_refused(attacker.logs(job_id, {**name, "attempt": attempt, "offset": offset,
                                              "data": "forged line\n"}), "lease_lost")
        assert_refused(attacker.complete(job_id, {**name, "attempt": attempt, **forged}),
                       "lease_lost")
    batch = attacker.post(COMPLETE_MANY, {"name": victim, "jobs": [
        {"id": job_id, "attempt": attempt, **forged}]})
    assert batch.status_code == 200, batch.text
    assert batch.json()["jobs"][0]["error"]["code"] == "lease_lost"
    released = attacker.post(RELEASE, {"name": victim,
                                       "jobs": [{"id": job_id, "attempt": attempt}]})
    assert released.status_code == 200 and released.json()["released"] == []
    # A refusal (policy, hook) is a release too: another token's records nothing.
    refused = attacker.post(RELEASE, {"name": victim, "refusals": [
        {"id": job_id, "attempt": attempt, "kind": "hook", "reason": "forged refusal"}]})
    assert refused.status_code == 200 and refused.json()["released"] == []
    assert_refused(attacker.post(HEARTBEAT, {"name": victim, "running": [
        {"id": job_id, "attempt": attempt}]}), "agent_name_taken")
    assert_refused(attacker.post(CLAIM, {"name": victim, "wait_s": 0}), "agent_name_taken")
    # Under a name of its own, the attacker's heartbeat names the job and is told it is lost.
    own = attacker.post(HEARTBEAT, {"name": f"intruder-{uuid.uuid4().hex[:6]}", "running": [
        {"id": job_id, "attempt": attempt}]})
    assert own.status_code == 200 and own.json()["lost"] == [job_id]


def test_other_tokens_cannot_act_on_a_real_agents_job(
    api: httpx.Client, fast_server: TagrunProcess, database_url: str, mint: Mint,
    tmp_path: Path,
) -> None:
    tag = f"trust-{uuid.uuid4().hex[:6]}"
    owner = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()
    agent = AgentProcess(fast_server.url, owner["token"], tmp_path, name="agent-a")
    try:
        go = tmp_path / "go"
        job_id = submit(api, tag, f'echo started; while [ ! -e {go} ]; do sleep 0.05; done; '
                                  'echo \'{"ran_by": "agent-a"}\'')
        wait_until(lambda: "started" in api.get(f"/api/w/default/jobs/{job_id}/logs")
                   .json()["data"], message="the job to start on agent-a")
        record = agents_by_name(api)["agent-a"]
        same_tag = mint([tag], group="intruders")
        other_tag = mint([f"elsewhere-{uuid.uuid4().hex[:6]}"], group="intruders")
        for attacker in (same_tag, other_tag):
            before = job_row(database_url, job_id)
            attack_every_route(attacker, "agent-a", job_id, 1, int(before["log_received"]))
            after = job_row(database_url, job_id)
            assert (after["status"], after["worker"], after["attempt"], after["log_received"]) \
                == ("running", "agent-a", 1, before["log_received"])
            assert after["refusals"] is None  # no refusal recorded against the job
        listed = agents_by_name(api)
        assert {k: listed["agent-a"][k] for k in ("group", "tags", "connected_at")} \
            == {k: record[k] for k in ("group", "tags", "connected_at")}
        # The attackers' own records (heartbeats under their own names) are theirs alone.
        assert all(listed[n]["group"] == "intruders" for n in listed if n.startswith("intruder"))
        go.touch()
        final = api.get(f"/api/w/default/jobs/{job_id}", params={"wait_s": 20}).json()
        assert (final["status"], final["worker"], final["result"]) \
            == ("succeeded", "agent-a", {"ran_by": "agent-a"})
        logs = api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"]
        assert "forged" not in logs and "started" in logs
        assert owner["token"] not in agent.log_text()
    finally:
        agent.kill()


def test_an_attackers_heartbeat_extends_no_lease(
    api: httpx.Client, database_url: str, mint: Mint
) -> None:
    """Nobody else heartbeats here: the lease's expiry moves only if the attack extends it."""
    tag = f"lease-{uuid.uuid4().hex[:6]}"
    holder = mint([tag], session=secrets.token_urlsafe(24))
    job_id = submit(api, tag, "echo hi")
    [job] = holder.post(CLAIM, {"name": "holder-h", "wait_s": 5}).json()["jobs"]
    assert job["id"] == job_id
    expires = job_row(database_url, job_id)["lease_expires_at"]
    for attacker in (mint([tag]), mint(["unrelated-tag"])):
        for name in ("holder-h", f"intruder-{uuid.uuid4().hex[:6]}"):
            attacker.post(HEARTBEAT, {"name": name, "running": [{"id": job_id, "attempt": 1}]})
    assert job_row(database_url, job_id)["lease_expires_at"] == expires
    mine = holder.post(HEARTBEAT, {"name": "holder-h", "running": [{"id": job_id, "attempt": 1}]})
    assert mine.json() == {"cancel": [], "lost": [], "drain": False}
    assert job_row(database_url, job_id)["lease_expires_at"] > expires


def test_two_agents_sharing_a_token_are_two_holders(
    api: httpx.Client, database_url: str, mint: Mint, fast_server: TagrunProcess
) -> None:
    tag = f"shared-{uuid.uuid4().hex[:6]}"
    first = mint([tag], session=secrets.token_urlsafe(24))
    second = Caller(fast_server.url, first.minted, session=secrets.token_urlsafe(24))
    try:
        job_id = submit(api, tag, "echo hi")
        [job] = first.post(CLAIM, {"name": "twin-1", "wait_s": 5}).json()["jobs"]
        assert job["id"] == job_id
        # The second agent knows the token and even the first one's name: still not its job.
        for name in ("twin-1", "twin-2"):
            assert_refused(second.complete(job_id, {"name": name, "attempt": 1,
                                                    "status": "failed",
                                                    "error": {"kind": "x", "message": "x"}}),
                           "lease_lost")
            assert_refused(second.logs(job_id, {"name": name, "attempt": 1, "offset": 0,
                                                "data": "not mine"}), "lease_lost")
            beat = second.post(HEARTBEAT, {"name": name, "running": [{"id": job_id,
                                                                      "attempt": 1}]})
            assert beat.status_code == 200 and beat.json()["lost"] == [job_id]
        # The same token reconnecting under its own name (a restart) is fine.
        assert second.post(CLAIM, {"name": "twin-1", "wait_s": 0}).status_code == 200
        assert job_row(database_url, job_id)["status"] == "running"
        done = first.complete(job_id, {"name": "twin-1", "attempt": 1, "status": "succeeded",
                                       "result": 1})
        assert done.json() == {"status": "succeeded"}
    finally:
        second.http.close()


def test_a_name_taken_by_a_live_agent_is_refused_with_a_clear_message(
    api: httpx.Client, mint: Mint
) -> None:
    tag = f"names-{uuid.uuid4().hex[:6]}"
    owner, other = mint([tag]), mint([tag], group="other")
    assert owner.post(CLAIM, {"name": "taken", "wait_s": 0}).status_code == 200
    refused = other.post(CLAIM, {"name": "taken", "wait_s": 0})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "agent_name_taken"
    assert "'taken'" in error["message"] and "AGENT_NAME" in error["message"]
    assert str(other.minted["token"]) not in refused.text
    assert str(owner.minted["token"]) not in refused.text
    assert agents_by_name(api)["taken"]["group"] == "edge"


# A job hunting for its agent's token with everything an unprivileged process of the agent's
# user has: its environment, every process's /proc environ, cmdline and memory, and every
# file it can read under the agent's work directory. It reports what looks like a JWT, and
# how much it could read.
HUNT = r'''
import os, re

JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")


def ptrace_ancestors():
    """Attach to each ancestor (PTRACE_SEIZE, which does not stop it); exiting detaches."""
    import ctypes
    libc, attached, pid = ctypes.CDLL(None, use_errno=True), [], os.getppid()
    while pid > 1:
        if libc.ptrace(0x4206, pid, 0, 0) == 0:
            attached.append(pid)
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rpartition(")")[2].split()[1])
    return attached


def main(dirs=()):
    found, read = [], {"environ": 0, "cmdline": 0, "mem": 0, "files": 0}

    def scan(data, where):
        found.extend([where, m.decode()] for m in set(JWT.findall(data)))

    scan("\n".join(f"{k}={v}" for k, v in os.environ.items()).encode(), "own environment")
    for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    scan(f.read(), f"/proc/{pid}/{part}")
                read[part] += 1
            except OSError:
                pass
        try:
            with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
                for line in maps:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    if "r" in line.split()[1] and end - start < 1 << 28:
                        try:
                            mem.seek(start)
                            scan(mem.read(end - start), f"/proc/{pid}/mem")
                        except (OSError, OverflowError, ValueError):
                            pass
            read["mem"] += 1
        except OSError:
            pass
    for top in {os.path.dirname(os.getcwd()), os.path.expanduser("~"), *dirs}:
        for folder, _, names in os.walk(top):
            for name in names:
                try:
                    with open(os.path.join(folder, name), "rb") as f:
                        scan(f.read(1 << 24), os.path.join(folder, name))
                    read["files"] += 1
                except OSError:
                    pass
    return {"found": found, "read": read, "uid": os.getuid(), "ptraced": ptrace_ancestors()}
'''
CANARY = "eyJjYW5hcnkiOiJ5ZXMifQ.eyJub3QiOiJhIHRva2VuIn0.c2lnbmF0dXJlLW9mLWEtY2FuYXJ5"


def start_up_exposure(pid: int, token: str) -> list[str]:
    """Which processes of the agent's tree (its Python jobs too) were started with the
    token in their environment or arguments, as far as this test process may read them (as
    root: all; as the agent's own user: none, they are not dumpable)."""
    exposed = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for part in ("environ", "cmdline"):
            try:
                data = Path(f"/proc/{proc.pid}/{part}").read_bytes()
            except OSError:
                continue
            if token.encode() in data:
                exposed.append(f"{proc.pid}/{part}")
    return exposed


def hunt(api: httpx.Client, tag: str, dirs: tuple[Path, ...] = ()) -> dict[str, Any]:
    job = api.post("/api/w/default/jobs", json={
        "language": "python", "tag": tag, "content": HUNT,
        "args": {"dirs": [str(d) for d in dirs]}}).json()
    final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 60}).json()
    assert final["status"] == "succeeded", final.get("error")
    return final["result"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["venv", "frozen"])
def test_no_job_finds_its_agents_token(
    how: str, api: httpx.Client, fast_server: TagrunProcess, tmp_path: Path
) -> None:
    """The agent runs as an unprivileged user (created for the test when the suite runs as
    root) with AGENT_TOKEN in its environment, as a systemd unit would start it. A same-user
    canary process holding a JWT-shaped value shows that the hunt can read what such a
    process exposes; the agent's token must be nowhere."""
    command = None
    if how == "frozen":
        command = [str(require_agent_binary(ROOT / "dist" / "tagrun-agent" / "tagrun-agent"))]
    user = unprivileged_user("tagrun-test-agent")
    tag = f"hunt-{uuid.uuid4().hex[:6]}"
    minted = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()
    with traversable(ROOT / ".venv" / "bin" / "python", ROOT / "dist"):
        canary = subprocess.Popen(["sleep", "120"], env={"CANARY": CANARY}, cwd="/",
                                  **({"user": user, "group": user} if user else {}))
        agent = AgentProcess(fast_server.url, minted["token"], tmp_path, name=f"hunted-{how}",
                             command=command, user=user, env={"HOME": "/nonexistent"})
        try:
            found = hunt(api, tag)
            exposed = start_up_exposure(agent.proc.pid, str(minted["token"]))
        finally:
            agent.kill()
            canary.kill()
            canary.wait()
    assert_nothing_found(found, str(minted["token"]))
    assert not exposed, f"the token is in the start-up environment or arguments: {exposed}"
    assert found["uid"] != 0 and found["read"]["files"] >= 1, found["read"]
    assert minted["token"] not in agent.log_text()


@pytest.mark.parametrize("how", ["venv", "frozen"])
def test_a_job_of_the_job_user_cannot_reach_the_agent_at_all(
    how: str, api: httpx.Client, fast_server: TagrunProcess, tmp_path: Path
) -> None:
    """AGENT_JOB_USER: the agent runs as root (as its systemd unit does) and its jobs as a
    second, unprivileged user created for the test. The job hunts as before, also attaches
    with ptrace to every ancestor and reads the directory that holds the token file; a canary
    of the job's own user shows what the hunt can read."""
    if os.geteuid() != 0:
        pytest.skip("running jobs as another user needs an agent running as root")
    command = None
    if how == "frozen":
        command = [str(require_agent_binary(ROOT / "dist" / "tagrun-agent" / "tagrun-agent"))]
    user = unprivileged_user("tagrun-test-job")
    assert user is not None
    tag = f"hunt-{uuid.uuid4().hex[:6]}"
    minted = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()
    secret_dir = tmp_path / "etc"
    secret_dir.mkdir(mode=0o755)
    token_file = secret_dir / "token"
    token_file.write_text(minted["token"] + "\n")
    token_file.chmod(0o600)
    env = {"AGENT_JOB_USER": user}
    if how == "frozen":  # the venv agent gets AGENT_TOKEN: both ways are covered
        env["AGENT_TOKEN_FILE"] = str(token_file)
    with traversable(ROOT / ".venv" / "bin" / "python", ROOT / "dist", token_file):
        canary = subprocess.Popen(["sleep", "120"], env={"CANARY": CANARY}, cwd="/",
                                  user=user, group=user)
        agent = AgentProcess(fast_server.url, None if how == "frozen" else minted["token"],
                             tmp_path, name=f"apart-{how}", command=command, env=env)
        try:
            agent.wait_logged("agent.job_user")
            found = hunt(api, tag, dirs=(secret_dir,))
        finally:
            agent.kill()
            canary.kill()
            canary.wait()
    assert_nothing_found(found, str(minted["token"]))
    assert found["uid"] == pwd.getpwnam(user).pw_uid
    assert found["ptraced"] == [], "the job attached to an ancestor with ptrace"
    assert minted["token"] not in agent.log_text()


def test_an_agent_that_cannot_run_jobs_as_the_job_user_refuses_to_start(
    api: httpx.Client, fast_server: TagrunProcess, tmp_path: Path
) -> None:
    """Before its first claim, and saying why: an agent that is not root, and a root agent
    whose system forbids switching users (a capability bounding set without CAP_SETUID, as
    a locked-down container or unit has)."""
    if os.geteuid() != 0:
        pytest.skip("the second user and the locked-down root agent need the suite as root")
    job_user = unprivileged_user("tagrun-test-job")
    agent_user = unprivileged_user("tagrun-test-agent")
    setpriv = shutil.which("setpriv")
    assert setpriv, "this test needs setpriv (package util-linux)"
    tag = f"locked-{uuid.uuid4().hex[:6]}"
    minted = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()
    env = {"AGENT_JOB_USER": str(job_user), "HOME": "/nonexistent"}
    with traversable(ROOT / ".venv" / "bin" / "python"):
        plain = AgentProcess(fast_server.url, minted["token"], tmp_path, name="not-root",
                             env=env, user=agent_user)
        locked = AgentProcess(
            fast_server.url, minted["token"], tmp_path, name="locked", env=env,
            command=[setpriv, "--bounding-set=-setuid,-setgid", "--inh-caps=-setuid,-setgid",
                     str(ROOT / ".venv" / "bin" / "tagrun-agent")])
        try:
            assert plain.wait_exit() == 1
            assert locked.wait_exit() == 1
        finally:
            plain.kill()
            locked.kill()
    assert (f"AGENT_JOB_USER='{job_user}': only an agent running as root can start jobs as "
            f"another user, and this one runs as uid {pwd.getpwnam(str(agent_user)).pw_uid}"
            in plain.log_text())
    assert (f"AGENT_JOB_USER='{job_user}': a bash job cannot run as that user: cannot start "
            f"{shutil.which('bash')} as user '{job_user}': Operation not permitted (the system "
            "did not let the agent switch to that user)") in locked.log_text()
    names = agents_by_name(api)
    assert "not-root" not in names and "locked" not in names
    for agent in (plain, locked):
        assert minted["token"] not in agent.log_text()


def assert_nothing_found(found: dict[str, Any], token: str) -> None:
    """No token anywhere, and the canary seen: the hunt could read what it should."""
    places = [where for where, value in found["found"] if value == token]
    assert not places, f"the job found the agent token in {places}"
    canary_seen = {where.rpartition("/")[2] for where, value in found["found"]
                   if value == CANARY}
    assert {"environ", "mem"} <= canary_seen, found["read"]


def test_a_real_agent_says_why_it_was_refused(
    api: httpx.Client, fast_server: TagrunProcess, tmp_path: Path
) -> None:
    tag = f"why-{uuid.uuid4().hex[:6]}"
    owner = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()
    other = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()
    # Well formed, but signed by another server: not a valid token here.
    claims = jwt.decode(owner["token"], options={"verify_signature": False})
    foreign = jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256")
    agents = [AgentProcess(fast_server.url, owner["token"], tmp_path, name="first-here"),
              AgentProcess(fast_server.url, foreign, tmp_path, name="foreign"),
              AgentProcess(fast_server.url, other["token"], tmp_path, name="revoked")]
    try:
        agents[0].wait_logged("agent.started")
        wait_until(lambda: "first-here" in agents_by_name(api), message="the first agent")
        api.delete(f"/api/agent_tokens/{other['jti']}")
        assert agents[1].wait_exit() == 3
        assert "the server refused the agent token: not a valid agent token" \
            in agents[1].log_text()
        assert agents[2].wait_exit() == 3
        assert "the server refused the agent token: agent token revoked" in agents[2].log_text()
        taken = AgentProcess(fast_server.url, other["token"], tmp_path, name="first-here")
        agents.append(taken)
        assert taken.wait_exit() == 3  # revoked before its name is even looked at
        newer = api.post("/api/agent_tokens", json={"group": "late", "tags": [tag]}).json()
        clash = AgentProcess(fast_server.url, newer["token"], tmp_path, name="first-here")
        agents.append(clash)
        assert clash.wait_exit() == 1
        assert "agent name 'first-here' is in use by a live agent of group 'edge'" \
            in clash.log_text()
        assert agents_by_name(api)["first-here"]["group"] == "edge"
        for agent, token in zip(agents, [owner["token"], foreign, other["token"],
                                         other["token"], newer["token"]], strict=True):
            assert token not in agent.log_text()
    finally:
        for agent in agents:
            agent.kill()
