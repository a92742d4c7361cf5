"""The `tagrun` console script as a user runs it: real subprocesses against a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    SUPERADMIN,
    AgentProcess,
    TagrunProcess,
    api_client,
    free_port,
    wait_until,
)

TAGRUN = Path(sys.executable).parent / "tagrun"


def cli_env(url: str, token: str | None = SUPERADMIN, env: Mapping[str, str] | None = None
            ) -> dict[str, str]:
    """A clean environment: nothing from the caller's TAGRUN_* (or MODE, DATABASE_URL)."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("TAGRUN_") and k not in ("MODE", "DATABASE_URL")}
    full_env["TAGRUN_URL"] = url
    full_env["NO_COLOR"] = "1"
    if token is not None:
        full_env["TAGRUN_TOKEN"] = token
    full_env.update(env or {})
    return full_env


def run_cli(*args: str, url: str, token: str | None = SUPERADMIN,
            env: Mapping[str, str] | None = None, timeout: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
    """`tagrun ARGS`, as a user would type it."""
    return subprocess.run([str(TAGRUN), *args], env=cli_env(url, token, env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    assert "Traceback" not in result.stderr
    return result


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed readably: non-zero exit, a message, no Python traceback."""
    assert result.returncode != 0, f"expected failure\nstdout: {result.stdout}"
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.stderr.strip(), "a failure should say why on stderr"
    return result.stderr


def queued_id(stderr: str) -> int:
    """The id `job run --wait` announces on stderr."""
    match = re.search(r"^job (\d+) queued", stderr, re.MULTILINE)
    assert match, stderr
    return int(match.group(1))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- version -------------------------------------------------------------------------------

def test_version_prints_the_package_version(server: TagrunProcess) -> None:
    from tagrun.shared.version import __version__

    result = ok(run_cli("--version", url=server.url))
    assert result.stdout.strip() == __version__
    health = httpx.get(f"{server.url}/api/health").json()
    assert health["version"] == __version__


# --- jobs ----------------------------------------------------------------------------------

def test_run_wait_prints_result_on_stdout_and_logs_on_stderr(server: TagrunProcess) -> None:
    result = ok(run_cli("job", "run", "--language", "bash", "--content", "echo hi", "--wait",
                        url=server.url))
    assert json.loads(result.stdout) == "hi"
    assert result.stdout.strip() == '"hi"'
    assert "hi" in result.stderr  # the streamed log


def test_run_python_with_args(server: TagrunProcess) -> None:
    code = "def main(x, y=2):\n    print('adding', x, y)\n    return {'sum': x + y}\n"
    result = ok(run_cli("job", "run", "--language", "python", "--content", code,
                        "--args", '{"x": 40}', "--wait", url=server.url))
    assert json.loads(result.stdout) == {"sum": 42}
    assert "adding 40 2" in result.stderr


def test_failing_job_with_wait_exits_non_zero_with_error_kind(server: TagrunProcess) -> None:
    result = run_cli("job", "run", "--language", "bash", "--max-attempts", "1", "--wait",
                     "--content", "echo about-to-fail; exit 3", url=server.url)
    stderr = failed(result)
    assert "script_error" in stderr
    assert "failed" in stderr
    assert "about-to-fail" in stderr  # the job's log was streamed
    assert result.stdout.strip() == ""  # no result printed


def test_run_without_wait_then_get_list_logs(server: TagrunProcess) -> None:
    result = ok(run_cli("job", "run", "--language", "bash", "--content", "echo listed-output",
                        url=server.url))
    job_id = result.stdout.strip()
    assert job_id.isdigit(), f"expected just the id, got {result.stdout!r}"
    assert "\n" not in result.stdout.rstrip("\n")

    done = ok(run_cli("job", "get", job_id, "--wait", "-o", "json", url=server.url))
    job = json.loads(done.stdout)
    assert job["id"] == int(job_id)
    assert job["status"] == "succeeded"
    assert job["result"] == "listed-output"

    got = json.loads(ok(run_cli("job", "get", job_id, "-o", "json", url=server.url)).stdout)
    assert got["status"] == "succeeded"
    shown = ok(run_cli("job", "get", job_id, url=server.url)).stdout
    assert f"Job:       {job_id} (succeeded)" in shown
    assert 'Result:    "listed-output"' in shown

    table = ok(run_cli("job", "list", url=server.url)).stdout
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["ID", "Status"]
    row = next((line for line in lines[1:] if line.split()[0] == job_id), None)
    assert row is not None, f"job {job_id} missing from:\n{table}"
    assert "succeeded" in row.split()

    logs = ok(run_cli("job", "logs", job_id, url=server.url)).stdout
    assert "listed-output" in logs

    followed = ok(run_cli("job", "logs", job_id, "-f", url=server.url)).stdout
    assert "listed-output" in followed

    too_late = failed(run_cli("job", "cancel", job_id, url=server.url))
    assert "409" in too_late


def test_job_logs_with_timestamps_follow_lines_with_their_time_and_stream(
    server: TagrunProcess, api: httpx.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    job_id = ok(run_cli("job", "run", "--language", "bash", "--content", (
        f"echo first; printf progress; while [ ! -f {gate} ]; do sleep 0.05; done\n"
        "echo ' done'; echo oops >&2"), url=server.url)).stdout.strip()
    follower = subprocess.Popen([str(TAGRUN), "job", "logs", job_id, "-f", "--timestamps"],
                                env=cli_env(server.url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "progress" in api.get(f"/api/w/default/jobs/{job_id}/logs").json()[
            "data"], timeout=30, message="the unfinished line in the log")
        gate.touch()
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0 and "Traceback" not in err, err
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(rf"{stamp} stdout first\n{stamp} stdout progress done\n"
                        rf"{stamp} stderr oops\n", out), out
    # Read again, whole: the same lines; without --timestamps, the text as it always was.
    again = ok(run_cli("job", "logs", job_id, "-t", url=server.url)).stdout
    assert again == out
    assert ok(run_cli("job", "logs", job_id, url=server.url)).stdout == \
        "first\nprogress done\noops\n"


def test_get_unknown_job_is_a_readable_404(server: TagrunProcess) -> None:
    stderr = failed(run_cli("job", "get", "987654321", url=server.url))
    assert "404" in stderr


def test_cancel_then_retry_a_queued_job(server: TagrunProcess, api: httpx.Client) -> None:
    job_id = ok(run_cli("job", "run", "--language", "bash", "--content", "echo never",
                        "--tag", "nobody-listens", url=server.url)).stdout.strip()
    assert api.get(f"/api/w/default/jobs/{job_id}").json()["status"] == "queued"

    listed = ok(run_cli("job", "list", "--tag", "nobody-listens", "--status", "queued",
                        url=server.url)).stdout
    assert job_id in [line.split()[0] for line in listed.splitlines()[1:]]

    cancelled = ok(run_cli("job", "cancel", job_id, url=server.url))
    assert "cancelled" in cancelled.stdout
    assert api.get(f"/api/w/default/jobs/{job_id}").json()["status"] == "cancelled"

    retried = ok(run_cli("job", "retry", job_id, url=server.url))
    assert "queued" in retried.stdout
    assert api.get(f"/api/w/default/jobs/{job_id}").json()["status"] == "queued"

    ok(run_cli("job", "cancel", job_id, url=server.url))  # leave nothing queued behind


def test_retry_a_failed_job_runs_it_again(server: TagrunProcess, api: httpx.Client,
                                          tmp_path: Path) -> None:
    marker = tmp_path / "second-run"
    code = f"if [ -e {marker} ]; then echo recovered; else touch {marker}; exit 1; fi"
    result = run_cli("job", "run", "--language", "bash", "--max-attempts", "1", "--wait",
                     "--content", code, url=server.url)
    job_id = queued_id(failed(result))
    assert api.get(f"/api/w/default/jobs/{job_id}").json()["status"] == "failed"

    ok(run_cli("job", "retry", str(job_id), url=server.url))
    done = json.loads(ok(run_cli("job", "get", str(job_id), "--wait", "-o", "json",
                                 url=server.url)).stdout)
    assert done["status"] == "succeeded"
    assert done["result"] == "recovered"


# --- scripts -------------------------------------------------------------------------------

def test_script_deploy_from_file_then_run_it(server: TagrunProcess, tmp_path: Path) -> None:
    path = f"f/cli/{unique('hello')}"
    source = tmp_path / "hello.sh"
    source.write_text('echo "from the script file"\necho \'{"deployed": true}\'\n')

    deployed = ok(run_cli("script", "deploy", path, "--language", "bash", "--file", str(source),
                          "--lease-s", "600", url=server.url))
    assert path in deployed.stdout
    assert "version 1" in deployed.stdout

    listing = ok(run_cli("script", "list", url=server.url)).stdout
    assert path in listing
    got = json.loads(ok(run_cli("script", "get", path, "-o", "json", url=server.url)).stdout)
    assert (got["path"], got["lease_s"]) == (path, 600)
    assert "from the script file" in got["content"]
    shown = ok(run_cli("script", "get", path, url=server.url)).stdout
    assert f"Script:       {path} version 1" in shown and "Lease:        10 min" in shown
    assert "from the script file" in shown  # the code, last
    assert shown.startswith(deployed.stdout.splitlines()[1])  # the view deploy printed

    result = ok(run_cli("job", "run", "--script", path, "--wait", url=server.url))
    assert json.loads(result.stdout) == {"deployed": True}
    assert "from the script file" in result.stderr
    job_id = ok(run_cli("job", "run", "--script", path, "--lease-s", "120",
                        url=server.url)).stdout.strip()
    got = json.loads(ok(run_cli("job", "get", job_id, "-o", "json", url=server.url)).stdout)
    assert got["lease_s"] == 120


def test_script_deploy_missing_file_is_readable(server: TagrunProcess, tmp_path: Path) -> None:
    stderr = failed(run_cli("script", "deploy", "f/cli/missing", "--language", "bash",
                            "--file", str(tmp_path / "nope.sh"), url=server.url))
    assert "nope.sh" in stderr


# --- workspaces and tokens -----------------------------------------------------------------

def test_workspace_and_token_lifecycle(server: TagrunProcess, api: httpx.Client) -> None:
    ws = unique("cli")
    ok(run_cli("workspace", "create", ws, url=server.url))
    listed = ok(run_cli("workspace", "list", url=server.url)).stdout
    assert ws in [line.split()[0] for line in listed.splitlines()]

    created = ok(run_cli("workspace", "token", "create", ws, "--label", "cli-test",
                         url=server.url))
    assert len(created.stdout.splitlines()) == 1, created.stdout
    token = created.stdout.strip()
    assert token.startswith("tr_")

    mine = ok(run_cli("job", "run", "-w", ws, "--language", "bash", "--content", "echo in-ws",
                      "--wait", url=server.url, token=token))
    assert json.loads(mine.stdout) == "in-ws"

    other = run_cli("job", "run", "-w", "default", "--language", "bash", "--content", "echo no",
                    "--wait", url=server.url, token=token)
    assert "403" in failed(other)

    via_env = ok(run_cli("job", "list", url=server.url, token=token,
                         env={"TAGRUN_WORKSPACE": ws}))
    assert "succeeded" in via_env.stdout

    tokens = ok(run_cli("workspace", "token", "list", ws, url=server.url)).stdout
    assert token not in tokens
    assert token[3:] not in tokens
    assert "cli-test" in tokens
    rows = api.get("/api/tokens", params={"workspace": ws}).json()["tokens"]
    assert len(rows) == 1
    token_id = str(rows[0]["id"])
    assert token_id in [line.split()[0] for line in tokens.splitlines()[1:]]

    ok(run_cli("workspace", "token", "revoke", token_id, url=server.url))
    after_revoke = ok(run_cli("workspace", "token", "list", ws, url=server.url)).stdout
    row = next(line for line in after_revoke.splitlines() if line.split()[0] == token_id)
    assert row.split()[-1] == "yes"  # the Revoked column
    # The server caches a token's principal for a couple of seconds (auth._CACHE_TTL_S).
    with api_client(server.url, token) as revoked:
        wait_until(lambda: revoked.get(f"/api/w/{ws}/jobs").status_code == 401, timeout=10,
                   interval=0.2, message="the revoked token to be refused")
    after = run_cli("job", "list", "-w", ws, url=server.url, token=token)
    assert "401" in failed(after)


def test_workspace_commands_need_the_superadmin(server: TagrunProcess) -> None:
    ws = unique("cli")
    ok(run_cli("workspace", "create", ws, url=server.url))
    token = ok(run_cli("workspace", "token", "create", ws, url=server.url)).stdout.strip()
    stderr = failed(run_cli("workspace", "list", url=server.url, token=token))
    assert "403" in stderr


# --- where the token comes from ------------------------------------------------------------

def test_default_token_file_in_data_dir(server: TagrunProcess, tmp_path: Path) -> None:
    (tmp_path / "superadmin.token").write_text(SUPERADMIN + "\n")
    result = ok(run_cli("workspace", "list", url=server.url, token=None,
                        env={"TAGRUN_DATA_DIR": str(tmp_path)}))
    assert "default" in result.stdout


def test_missing_token_file_says_where_it_looked(server: TagrunProcess, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    stderr = failed(run_cli("job", "list", url=server.url, token=None,
                            env={"TAGRUN_DATA_DIR": str(empty)}))
    assert "TAGRUN_TOKEN" in stderr
    assert str(empty / "superadmin.token") in stderr


def test_wrong_token_is_a_readable_401(server: TagrunProcess) -> None:
    stderr = failed(run_cli("job", "list", url=server.url, token="tr_not-a-real-token"))
    assert "401" in stderr


# --- readable errors -----------------------------------------------------------------------

def test_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("job", "list"), ("job", "run", "--language", "bash", "--content", "echo x",
                                   "--wait")):
        stderr = failed(run_cli(*args, url=url))
        assert url in stderr


def test_url_without_scheme_is_explained() -> None:
    stderr = failed(run_cli("job", "list", url="localhost:8000"))
    assert "TAGRUN_URL" in stderr
    assert "'localhost:8000'" in stderr
    assert "http://" in stderr


def test_ctrl_c_while_waiting_leaves_the_job_and_says_so(server: TagrunProcess,
                                                         api: httpx.Client) -> None:
    proc = subprocess.Popen(
        [str(TAGRUN), "job", "run", "--language", "bash", "--content", "echo x",
         "--tag", "nobody-listens", "--wait"],
        env=cli_env(server.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "job N queued (tag nobody-listens)"
        job_id = queued_id(first)
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in rest
    assert f"job {job_id}" in rest
    assert f"tagrun job cancel {job_id}" in rest
    assert out == ""
    # Only the waiting stopped: the job is still there, and still queued.
    assert api.get(f"/api/w/default/jobs/{job_id}").json()["status"] == "queued"
    api.post(f"/api/w/default/jobs/{job_id}/cancel")


@pytest.mark.parametrize(("raw", "expected"), [
    ("{not json", "--args is not valid JSON"),
    ("[1, 2]", "--args must be a JSON object"),
])
def test_bad_args_json_is_explained(server: TagrunProcess, raw: str, expected: str) -> None:
    result = run_cli("job", "run", "--language", "bash", "--content", "echo x", "--args", raw,
                     url=server.url)
    assert expected in failed(result)


def test_run_without_code_is_explained(server: TagrunProcess) -> None:
    stderr = failed(run_cli("job", "run", "--language", "bash", url=server.url))
    assert "--content" in stderr


# --- tagrun start ---------------------------------------------------------------------------

@pytest.mark.parametrize(("variable", "value"), [
    ("TAGRUN_LEASE_S", "abc"),
    ("MODE", "bogus"),
    ("WORKER_SLOTS", "0"),
    ("TAGRUN_PORT", "abc"),
    ("TAGRUN_PORT", "70000"),
    ("TAGRUN_HEARTBEAT_S", "90"),
    ("TAGRUN_MAX_BODY_BYTES", "1.5"),
    ("TAGRUN_MAX_LEASE_S", "30"),  # less than the lease (60 s)
])
def test_start_with_a_bad_value_names_it(tmp_path: Path, variable: str, value: str) -> None:
    # The database is unreachable on purpose: a bad value must be caught before it is needed.
    env = {"TAGRUN_DATA_DIR": str(tmp_path), variable: value,
           "DATABASE_URL": f"postgresql://127.0.0.1:{free_port()}/tagrun"}
    result = run_cli("start", url="http://127.0.0.1:1", token=None, timeout=30, env=env)
    stderr = failed(result)
    assert variable in stderr
    assert value in stderr


def test_start_generates_a_private_superadmin_token_file(start_process: object,
                                                         database_url: str,
                                                         tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    proc: TagrunProcess = start_process(  # type: ignore[operator]
        "standalone", database_url, env={"TAGRUN_SUPERADMIN_TOKEN": ""}, data_dir=data_dir)
    proc.wait_healthy()
    token_file = data_dir / "superadmin.token"
    wait_until(token_file.exists, message="superadmin.token to be written")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("tr_")

    with api_client(proc.url, token) as client:
        assert client.get("/api/workspaces").status_code == 200
    with api_client(proc.url) as suite_token:  # the suite's token was never set here
        assert suite_token.get("/api/workspaces").status_code == 401

    # The CLI finds the file by itself when TAGRUN_TOKEN is unset.
    listed = ok(run_cli("workspace", "list", url=proc.url, token=None,
                        env={"TAGRUN_DATA_DIR": str(data_dir)}))
    assert "default" in listed.stdout

    assert proc.stop() == 0
    log = proc.log_text()
    assert str(token_file) in log  # the user is told where the token is
    assert token not in log
    assert token[3:] not in log


def test_start_with_an_unreachable_database_says_so(tmp_path: Path) -> None:
    url = f"postgresql://tagrun:s3cret-pw@127.0.0.1:{free_port()}/tagrun"
    result = run_cli("start", url="http://127.0.0.1:1", token=None, timeout=60,
                     env={"TAGRUN_DATA_DIR": str(tmp_path), "DATABASE_URL": url,
                          "TAGRUN_PORT": str(free_port()), "TAGRUN_DB_WAIT_S": "1.5"})
    stderr = failed(result)
    assert "DATABASE_URL" in stderr
    assert "server.database_waiting" in stderr  # it waited TAGRUN_DB_WAIT_S, then gave up
    assert url.split("@")[1] in stderr  # host, port and database
    assert "s3cret-pw" not in stderr


def test_start_on_a_taken_port_says_so(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("start", "--mode", "server", "--port", port, url="http://127.0.0.1:1",
                         token=None, timeout=60,
                         env={"TAGRUN_DATA_DIR": str(tmp_path), "DATABASE_URL": database_url,
                              "TAGRUN_SUPERADMIN_TOKEN": SUPERADMIN})
    stderr = failed(result)
    assert port in stderr
    assert "already in use" in stderr



def test_agent_token_commands_and_workers_table(server: TagrunProcess, tmp_path: Path) -> None:
    """`tagrun token create` prints only a token an agent can use; `tagrun workers` shows who
    is connected and warns about tags with queued jobs and no live worker."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, url=server.url)

    tag = unique("cli")
    token = ok(cli("token", "create", "--tags", f"{tag},other", "--group", "cli-pool",
                   "--expires-in", "2h")).stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    listed = ok(cli("token", "list")).stdout
    assert "cli-pool" in listed and token not in listed
    [jti] = [line.split()[0] for line in listed.splitlines() if "cli-pool" in line]
    agent = AgentProcess(server.url, token, tmp_path, name=f"agent-{tag}")
    try:
        ran = ok(cli("job", "run", "--language", "bash", "--tag", tag, "--content",
                     "echo agent-ran", "--wait"))
        assert json.loads(ran.stdout) == "agent-ran"
        orphan = unique("orphan")
        ok(cli("job", "run", "--language", "bash", "--tag", orphan, "--content", "x"))
        table = ok(cli("workers"))
        assert f"agent-{tag}" in table.stdout and "POOLS" in table.stdout
        assert orphan in table.stderr  # the warning names the tag nobody serves
        ok(cli("token", "revoke", jti))
        assert agent.wait_exit(15) == 3
    finally:
        agent.kill()
    assert "not a duration" in failed(cli("token", "create", "--tags", "a", "--group", "g",
                                          "--expires-in", "soon"))


# --- output that reads well, and -o json for scripts ----------------------------------------

MICROSECONDS = re.compile(r"\d\d:\d\d:\d\d\.\d")
RELATIVE = re.compile(r"\d+ (s|min|h|d) ago|just now")


@pytest.fixture(scope="module")
def shown(server: TagrunProcess) -> dict[str, str]:
    """A workspace of this module's with one of everything the list and get commands show
    (but secrets: tests/e2e/test_job_secrets.py lists them)."""
    ws = unique("shown")
    with api_client(server.url) as api:
        assert api.post("/api/workspaces", json={"id": ws}).status_code == 201
        script = "f/cli/shown"
        assert api.post(f"/api/w/{ws}/scripts", json={
            "path": script, "language": "bash", "content": "echo shown"}).status_code == 201
        job = api.post(f"/api/w/{ws}/jobs", json={"script": script}).json()
        wait_until(lambda: api.get(f"/api/w/{ws}/jobs/{job['id']}", params={"wait_s": 5})
                   .json()["status"] == "succeeded", timeout=60, message="the job to succeed")
        schedule = api.post(f"/api/w/{ws}/schedules", json={
            "name": "paris", "cron": "0 9 * * *", "script": script,
            "timezone": "Europe/Paris"}).json()
        revoked = api.post("/api/tokens", json={"workspace": ws, "label": "shown"}).json()
        assert api.delete(f"/api/tokens/{revoked['id']}").status_code == 200
        assert api.post("/api/agent_tokens", json={
            "group": ws, "tags": ["shown"], "label": "shown"}).status_code == 201
    return {"ws": ws, "job": str(job["id"]), "script": script, "schedule": schedule["name"]}


# A list or get command, the API answer its -o json must be, and the headers of its table.
COMMANDS = [
    ("job list -w {ws}", "/api/w/{ws}/jobs", ["ID", "Status", "Created", "Took"]),
    ("job get {job} -w {ws}", "/api/w/{ws}/jobs/{job}", ["Job:", "Created:", "Took:"]),
    ("job logs {job} -w {ws}", "/api/w/{ws}/jobs/{job}/logs", []),
    ("script list -w {ws}", "/api/w/{ws}/scripts", ["Path", "Version", "Deployed"]),
    ("script get {script} -w {ws}", "/api/w/{ws}/scripts/{script}", ["Script:", "Content:"]),
    ("schedule list -w {ws}", "/api/w/{ws}/schedules", ["Name", "Time zone", "Next fire"]),
    ("schedule get {schedule} -w {ws}", "/api/w/{ws}/schedules/{schedule}",
     ["Schedule:", "Next fires:"]),
    ("secret list -w {ws}", "/api/w/{ws}/secrets", []),  # this server has no secrets key
    ("workspace list", "/api/workspaces", ["ID", "Created"]),
    ("workspace token list {ws}", "/api/tokens?workspace={ws}", ["ID", "Label", "Revoked"]),
    ("token list", "/api/agent_tokens", ["Token id", "Group", "Expires", "Revoked"]),
    ("workers", "/api/workers", ["Name", "Active jobs", "Jobs run", "Last seen"]),
    ("settings get", "/api/settings", ["Setting", "Value", "Meaning"]),
]


@pytest.mark.parametrize(("command", "path", "headers"), COMMANDS,
                         ids=[c[0].split(" {")[0] for c in COMMANDS])
def test_every_list_and_get_command_prints_the_api_answer_with_o_json(
        server: TagrunProcess, api: httpx.Client, shown: dict[str, str], command: str,
        path: str, headers: list[str]) -> None:
    args = command.format(**shown).split()
    printed = json.loads(ok(run_cli(*args, "-o", "json", url=server.url)).stdout)
    answer = api.get(path.format(**shown)).json()
    assert isinstance(printed, dict) and set(printed) == set(answer)
    long_form = json.loads(ok(run_cli(*args, "--output", "json", url=server.url)).stdout)
    assert set(long_form) == set(answer)


@pytest.mark.parametrize(("command", "path", "headers"), [c for c in COMMANDS if c[2]],
                         ids=[c[0].split(" {")[0] for c in COMMANDS if c[2]])
def test_tables_and_views_read_well(server: TagrunProcess, shown: dict[str, str],
                                    command: str, path: str, headers: list[str]) -> None:
    """Human headers, yes/no, relative times, no Python values, no microseconds."""
    out = ok(run_cli(*command.format(**shown).split(), url=server.url)).stdout
    for header in headers:
        assert header in out, out
    assert not re.search(r"\b(True|False|None)\b", out), out
    assert not MICROSECONDS.search(out), out
    header = next(line for line in out.splitlines() if line.startswith(headers[0]))
    assert "_" not in header.split(":")[0], out  # human headers, not field names


def test_tables_say_yes_no_and_how_long_ago(server: TagrunProcess,
                                            shown: dict[str, str]) -> None:
    tokens = ok(run_cli("workspace", "token", "list", shown["ws"], url=server.url)).stdout
    [row] = [line for line in tokens.splitlines() if " shown " in line]
    assert row.split()[-1] == "yes"  # revoked
    assert RELATIVE.search(row), row
    schedules = ok(run_cli("schedule", "list", "-w", shown["ws"], url=server.url)).stdout
    [row] = [line for line in schedules.splitlines() if line.startswith("paris ")]
    assert " yes " in row and re.search(r"09:00 \((in \d+ (s|min|h)|just now)\)", row), row
    agent_tokens = ok(run_cli("token", "list", url=server.url)).stdout
    [row] = [line for line in agent_tokens.splitlines() if shown["ws"] in line]
    assert re.search(r"in (29|30) d +no +unlimited$", row), row  # expires in 30 days, not revoked


def test_schedule_times_read_in_its_own_zone_with_utc_beside(server: TagrunProcess,
                                                             shown: dict[str, str]) -> None:
    created = ok(run_cli("schedule", "create", "paris-cli", "-w", shown["ws"], "--cron",
                         "30 9 * * 1", "--script", shown["script"], "--timezone",
                         "Europe/Paris", url=server.url)).stdout
    got = ok(run_cli("schedule", "get", "paris-cli", "-w", shown["ws"], url=server.url)).stdout
    # Paris is UTC+1 in winter, UTC+2 in summer: 09:30 there is 08:30 or 07:30 UTC.
    fires = re.findall(r"\d{4}-\d\d-\d\d 09:30 Europe/Paris \(0[78]:30 UTC\)", got)
    assert len(fires) == 5, got
    assert "Next fires:" in got and "Cron:       30 9 * * 1 in Europe/Paris" in got

    def same_view(text: str) -> list[str]:  # "Updated: ... (just now)" ages between the two
        return [line for line in text.splitlines() if not line.startswith("Updated:")]
    assert same_view(created) == same_view(got)


def test_a_bad_option_is_refused_in_its_own_words_before_any_request() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: the CLI must not ask
    for args, message in [
        (("token", "create", "--tags", "a", "--group", "g", "--expires-in", "30s"),
         "--expires-in must be at least 1m"),
        (("token", "create", "--tags", "a", "--group", "g", "--expires-in", "11000d"),
         "--expires-in must be at most 3650d"),
        (("workspace", "token", "create", "default", "--expires-in", "0"),
         "--expires-in must be at least 1s"),
        (("workers", "pause", "x", "--note", "why", "--for", "31d"),
         "--for must be at most 30d"),
    ]:
        stderr = failed(run_cli(*args, url=nowhere))
        assert f"error: {message}\n" == stderr, stderr


def test_a_value_the_server_refuses_is_explained_in_plain_words(server: TagrunProcess) -> None:
    stderr = failed(run_cli("job", "run", "--language", "bash", "--content", "x",
                            "--priority", "5000", url=server.url))
    assert "priority must be at most 1000 (400 invalid_input)" in stderr
    assert "Expected" not in stderr and "$." not in stderr
