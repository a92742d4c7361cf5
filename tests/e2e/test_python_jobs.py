"""Python jobs behave like Python, on the agent executable's bundled interpreter and on the venv's:
`sys.executable` runs -c, -m, -u and scripts; multiprocessing pools and ProcessPoolExecutor
work over functions the job defines, whatever the start method; zoneinfo has its data even
with no zone files on the machine; stdlib HTTPS verifies against SSL_CERT_FILE and against the
operating system's CA bundle, as the agent's own HTTPS does.

The server serves HTTPS with a private CA (trustme). The operating system's trust store is
shown by starting an agent in a private mount namespace whose system CA bundle also holds that
CA: nothing changes outside that process tree. The executable is dist/tagrun-agent/tagrun-agent (or
TAGRUN_AGENT_BINARY), skipped without one as in test_agent_binary.py.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.support.database import DatabaseFactory
from tests.support.processes import (
    SUPERADMIN,
    AgentProcess,
    TagrunProcess,
    agent_token,
    finished,
    require_agent_binary,
)

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("TAGRUN_AGENT_BINARY")
              or ROOT / "dist" / "tagrun-agent" / "tagrun-agent")
# Debian's, as update-ca-certificates writes it.
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

SYS_EXECUTABLE = '''
import os, subprocess, sys, threading

def run(*args):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr[-2000:]}

def unbuffered():
    """With -u (and no PYTHONUNBUFFERED) a line arrives while the child still runs: it waits
    for its stdin to close, which happens only once the line was read or 20 s have passed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    child = subprocess.Popen(
        [sys.executable, "-u", "-c", "import sys; print('early'); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    reader = threading.Thread(target=lambda: lines.append(child.stdout.readline()))
    reader.start()
    reader.join(20)
    while_running = not reader.is_alive()
    child.stdin.close()
    child.wait(30)
    reader.join()
    return {"line": lines[0], "while_running": while_running}

def main():
    with open("data.json", "w") as f:
        f.write('{"b": 1, "a": [1, 2]}')
    with open("greet.py", "w") as f:
        f.write("import sys\\nif __name__ == '__main__':\\n    print('hello', *sys.argv[1:])\\n")
    return {
        "c": run("-c", "import sys, sqlite3; db = sqlite3.connect(':memory:'); "
                       "print(sys.argv[1:], db.execute('select 6 * 7').fetchone()[0])", "x"),
        "exit": run("-c", "raise SystemExit(3)"),
        "m": run("-m", "json.tool", "--sort-keys", "data.json"),
        "script": run("greet.py", "a", "b"),
        "u": unbuffered(),
    }
'''

MULTIPROCESSING = '''
import concurrent.futures
import multiprocessing

def square(x):
    return x * x

def main():
    squares = {}
    for method in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context(method)
        with context.Pool(2) as pool:
            squares[f"pool {method}"] = pool.map(square, range(6))
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            squares[f"executor {method}"] = list(executor.map(square, range(6)))
    return squares
'''

ZONEINFO = '''
import zoneinfo
from datetime import datetime

def main():
    zoneinfo.reset_tzpath(to=[])  # no zone files, as on Windows: the tzdata package only
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    return [datetime(2024, month, 15, tzinfo=paris).utcoffset().total_seconds() / 3600
            for month in (1, 7)]
'''

HTTPS = '''
import os, ssl, urllib.request

def main(url, env):
    os.environ.update(env)
    with urllib.request.urlopen(url + "/api/health", timeout=30) as answer:
        status = answer.status
    return {"status": status, "ssl_context": ssl.SSLContext.__module__}
'''

# The distribution's bundle only, as when the bundled OpenSSL's compiled-in CA paths (the
# build machine's) do not exist here; then, for comparison, without truststore.
ELSEWHERE = '''
import os, ssl, urllib.request

def fetch(url):
    try:
        with urllib.request.urlopen(url + "/api/health", timeout=30) as answer:
            return answer.status
    except OSError as exc:
        return type(getattr(exc, "reason", exc)).__name__

def main(url, nowhere):
    os.environ.update(SSL_CERT_FILE=nowhere, SSL_CERT_DIR=nowhere)
    found = fetch(url)
    import truststore
    truststore.extract_from_ssl()
    return {"truststore": found, "openssl_alone": fetch(url)}
'''


@dataclass
class Runner:
    """A server over HTTPS and one agent, from the venv or the agent executable."""

    how: str
    api: httpx.Client
    server: TagrunProcess
    tag: str
    ca_file: Path

    def run(self, content: str, args: dict[str, Any] | None = None) -> Any:
        return run_job(self.api, self.tag, content, args)


def run_job(api: httpx.Client, tag: str, content: str, args: dict[str, Any] | None = None
            ) -> Any:
    job = api.post("/api/w/default/jobs", json={
        "language": "python", "tag": tag, "content": content, "args": args or {}}).json()
    final = finished(api, job["id"], timeout=180)
    logs = api.get(f"/api/w/default/jobs/{job['id']}/logs").json()["data"]
    assert final["status"] == "succeeded", (final.get("error"), logs[-3000:])
    return final["result"]


def agent_command(how: str) -> list[str] | None:
    return [str(require_agent_binary(BINARY))] if how == "frozen" else None


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ca.pem, and server.pem and server.key for 127.0.0.1 signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(folder / "server.key"))
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(folder / "server.pem"), append=i > 0)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return folder


@pytest.fixture(scope="module")
def https_server(databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory,
                 tls: Path) -> Iterator[TagrunProcess]:
    server = TagrunProcess(
        "standalone", database_url=databases.new(), data_dir=tmp_path_factory.mktemp("server"),
        ca_file=tls / "ca.pem",
        args=["--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key")])
    try:
        yield server.wait_healthy()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(https_server: TagrunProcess, tls: Path) -> Iterator[httpx.Client]:
    verify = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    with httpx.Client(base_url=https_server.url, verify=verify, timeout=30,
                      headers={"Authorization": f"Bearer {SUPERADMIN}"}) as client:
        yield client


@pytest.fixture(scope="module", params=["venv", "frozen"])
def runner(request: pytest.FixtureRequest, https_server: TagrunProcess, api: httpx.Client,
           tls: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """An agent that trusts the server through AGENT_CA_FILE."""
    how = request.param
    command = agent_command(how)
    tag = f"py-{how}-{uuid.uuid4().hex[:6]}"
    agent = AgentProcess(https_server.url, agent_token(api, [tag]),
                         tmp_path_factory.mktemp(f"agent-{how}"), name=f"py-{how}",
                         command=command, env={"AGENT_CA_FILE": str(tls / "ca.pem")})
    try:
        agent.wait_logged("agent.started", timeout=30)
        yield Runner(how, api, https_server, tag, tls / "ca.pem")
    finally:
        agent.kill()


def test_sys_executable_is_a_python_interpreter(runner: Runner) -> None:
    ran = runner.run(SYS_EXECUTABLE)
    assert ran["c"] == {"code": 0, "out": "['x'] 42\n", "err": ""}
    assert ran["exit"]["code"] == 3
    assert ran["m"] == {"code": 0, "err": "",
                        "out": '{\n    "a": [\n        1,\n        2\n    ],\n    "b": 1\n}\n'}
    assert ran["script"] == {"code": 0, "out": "hello a b\n", "err": ""}
    assert ran["u"] == {"line": "early\n", "while_running": True}


def test_process_pools_run_functions_the_job_defines(runner: Runner) -> None:
    squares = runner.run(MULTIPROCESSING)
    methods = {"spawn"} if sys.platform == "win32" else {"spawn", "fork"}
    assert methods <= {name.split()[1] for name in squares}
    assert squares == dict.fromkeys(squares, [0, 1, 4, 9, 16, 25])


def test_zoneinfo_has_its_data_without_zone_files(runner: Runner) -> None:
    assert runner.run(ZONEINFO) == [1.0, 2.0]


def test_stdlib_https_verifies_with_ssl_cert_file(runner: Runner) -> None:
    done = runner.run(HTTPS, {"url": runner.server.url,
                              "env": {"SSL_CERT_FILE": str(runner.ca_file)}})
    assert done["status"] == 200
    if runner.how == "frozen":  # the bundled Python verifies with the OS (truststore)
        assert done["ssl_context"] == "truststore._api"


def trust_store_namespace(bundle: Path) -> list[str]:
    """A command prefix that runs its command in a mount namespace of its own, where the
    system CA bundle is `bundle`; skips where this machine allows no such namespace."""
    if not SYSTEM_CA_BUNDLE.is_file() or shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip(f"needs root, unshare and {SYSTEM_CA_BUNDLE}")
    prefix = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
              f'mount --bind "$0" {SYSTEM_CA_BUNDLE} && exec "$@"', str(bundle)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    return prefix


@pytest.mark.parametrize("how", ["venv", "frozen"])
def test_the_operating_systems_ca_bundle_is_trusted(
    how: str, https_server: TagrunProcess, api: httpx.Client, tls: Path, tmp_path: Path
) -> None:
    """No AGENT_CA_FILE, no SSL_CERT_FILE: the server's CA is only in the system's bundle
    (the agent used to trust certifi's alone), and a job's urllib trusts it too."""
    command = agent_command(how)
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_bytes(SYSTEM_CA_BUNDLE.read_bytes() + (tls / "ca.pem").read_bytes())
    prefix = trust_store_namespace(bundle)
    tag = f"os-{how}-{uuid.uuid4().hex[:6]}"
    agent = AgentProcess(https_server.url, agent_token(api, [tag]), tmp_path, name=f"os-{how}",
                         command=[*prefix, *(command or [str(Path(sys.executable).parent
                                                              / "tagrun-agent")])])
    try:
        done = run_job(api, tag, HTTPS, {"url": https_server.url, "env": {}})
        assert done["status"] == 200
        if how == "frozen":
            # Where the bundled OpenSSL's own CA paths do not exist, truststore still finds
            # the distribution's bundle; OpenSSL alone would trust nothing.
            nowhere = str(tmp_path / "nowhere")
            assert run_job(api, tag, ELSEWHERE, {"url": https_server.url, "nowhere": nowhere}) \
                == {"truststore": 200, "openssl_alone": "SSLCertVerificationError"}
    finally:
        agent.kill()
    assert "not trusted" not in agent.log_text()
