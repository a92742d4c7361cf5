"""The token safe on the wire: the server serving HTTPS itself, and a real agent reaching it
with a private CA through an HTTP CONNECT proxy that wants credentials, as on a corporate
network; a certificate it does not trust ends it with a clear message."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.support.connect_proxy import ConnectProxy
from tests.support.processes import SUPERADMIN, AgentProcess, TagrunProcess

FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(start_process: Any, database_url: str, ca: trustme.CA, tmp_path: Path
                 ) -> TagrunProcess:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(chain), append=True)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return start_process(  # type: ignore[no-any-return]
        "standalone", database_url, env=FAST, ca_file=ca_file,
        args=["--tls-cert", str(chain), "--tls-key", str(key)]).wait_healthy()


@pytest.fixture
def api(https_server: TagrunProcess, tmp_path: Path) -> Iterator[httpx.Client]:
    verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with httpx.Client(base_url=https_server.url, verify=verify, timeout=30,
                      headers={"Authorization": f"Bearer {SUPERADMIN}"}) as client:
        yield client


def test_the_server_refuses_plain_http_once_it_serves_https(https_server: TagrunProcess
                                                            ) -> None:
    assert https_server.url.startswith("https://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{https_server.port}/api/health", timeout=5)
    assert f'"url": "{https_server.url}"' in https_server.log_text()


def test_an_agent_runs_jobs_over_https_through_an_authenticating_proxy(
    api: httpx.Client, https_server: TagrunProcess, tmp_path: Path
) -> None:
    tag = f"tls-{uuid.uuid4().hex[:6]}"
    minted = api.post("/api/agent_tokens", json={"group": "edge", "tags": [tag]}).json()
    proxy = ConnectProxy("egress", "pr0xy-pass")
    agent = AgentProcess(https_server.url, minted["token"], tmp_path, name="behind-proxy", env={
        "AGENT_CA_FILE": str(tmp_path / "ca.pem"), "HTTPS_PROXY": proxy.url, "NO_PROXY": "",
        "https_proxy": proxy.url, "no_proxy": ""})
    try:
        for body, expected in (
            ({"language": "bash", "content": 'echo "{\\"over\\": \\"tls\\"}"'}, {"over": "tls"}),
            ({"language": "python", "content": "def main():\n    return 42\n"}, 42),
        ):
            job = api.post("/api/w/default/jobs", json={**body, "tag": tag}).json()
            done = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 30}).json()
            assert (done["status"], done["worker"], done["result"]) \
                == ("succeeded", "behind-proxy", expected)
        assert f"127.0.0.1:{https_server.port}" in proxy.tunnels
        assert proxy.refused == 0
        log = agent.log_text()
        assert minted["token"] not in log and "pr0xy-pass" not in log
    finally:
        agent.kill()
        proxy.close()


def test_a_certificate_the_agent_does_not_trust_ends_it_with_a_clear_message(
    api: httpx.Client, https_server: TagrunProcess, tmp_path: Path
) -> None:
    minted = api.post("/api/agent_tokens", json={"group": "edge", "tags": ["tls"]}).json()
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    agent = AgentProcess(https_server.url, minted["token"], tmp_path, name="wrong-ca",
                         env={"AGENT_CA_FILE": str(other_ca)})
    try:
        assert agent.wait_exit(30) == 1
        log = agent.log_text()
        assert "the server's certificate is not trusted" in log and "AGENT_CA_FILE" in log
        assert '"event": "agent.retrying"' not in log  # refused at once, not retried in silence
        assert minted["token"] not in log
    finally:
        agent.kill()


@pytest.mark.parametrize("args, env, expected", [
    (["--tls-cert", "cert.pem"], {}, "TAGRUN_TLS_CERT (--tls-cert) is set but TAGRUN_TLS_KEY"),
    ([], {"TAGRUN_TLS_KEY": "key.pem"}, "TAGRUN_TLS_KEY (--tls-key) is set but TAGRUN_TLS_CERT"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], {},
     "TAGRUN_TLS_CERT='missing.pem' with TAGRUN_TLS_KEY='missing.key' cannot be used"),
])
def test_a_bad_tls_setting_stops_the_server_at_start_naming_it(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tagrun.server", "start", "--port", "0", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("TAGRUN_")}
        | {"TAGRUN_DATA_DIR": str(tmp_path / "data"), **env},
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr
