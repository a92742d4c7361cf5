"""No token, token hash or JWT secret in any line any process writes, through a full run."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import asyncpg
import httpx

from tests.support.processes import SUPERADMIN, AgentProcess, api_client


def forms(secret: bytes) -> list[str]:
    """The ways a secret could show up in text: raw, hex, base64 (plain and urlsafe)."""
    return [f for f in (secret.decode(errors="ignore"), secret.hex(),
                        base64.b64encode(secret).decode().rstrip("="),
                        base64.urlsafe_b64encode(secret).decode().rstrip("="))
            if len(f) >= 16]


def test_no_secret_in_any_log_line(start_process, database_url: str, tmp_path: Path) -> None:
    server = start_process("standalone", database_url, env={
        "TAGRUN_LOG_LEVEL": "DEBUG", "TAGRUN_LOG_FORMAT": "json",
        "TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}).wait_healthy()
    with api_client(server.url) as api:
        workspace_token = api.post("/api/tokens", json={"workspace": "default"}).json()["token"]
        minted = api.post("/api/agent_tokens", json={"group": "g", "tags": ["s-tag"]}).json()
        agent = AgentProcess(server.url, minted["token"], tmp_path, name="secret-agent",
                             env={"TAGRUN_LOG_LEVEL": "DEBUG", "TAGRUN_LOG_FORMAT": "json"})
        try:
            with api_client(server.url, workspace_token) as user:
                job = user.post("/api/w/default/jobs", json={
                    "language": "bash", "tag": "s-tag", "content": "echo ran"}).json()
                done = user.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 20})
                assert done.json()["status"] == "succeeded"
            for bad in ("Bearer " + minted["token"][:-3] + "xyz", "Bearer nope", "Basic x"):
                httpx.post(f"{server.url}/api/agent_workers/claim", json={"name": "x"},
                           headers={"Authorization": bad})
                httpx.get(f"{server.url}/api/w/default/jobs", headers={"Authorization": bad})
            api.delete(f"/api/agent_tokens/{minted['jti']}")
            assert agent.wait_exit(15) == 3
        finally:
            agent.kill()
    server.stop()
    jwt_secret = asyncio.run(_jwt_secret(database_url))
    secrets = [SUPERADMIN, workspace_token, minted["token"],
               minted["token"].split(".")[2]]  # the signature alone
    secrets += [hashlib.sha256(t.encode()).hexdigest() for t in (SUPERADMIN, workspace_token)]
    secrets += forms(jwt_secret)
    logs = {"server": server.log_text(), "agent": agent.log_text()}
    assert all(len(text.splitlines()) > 5 for text in logs.values())
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in the {name} log"


async def _jwt_secret(database_url: str) -> bytes:
    conn = await asyncpg.connect(database_url)
    try:
        value: bytes = await conn.fetchval(
            "SELECT value FROM server_secrets WHERE name = 'agent_jwt_hs256'")
        return value
    finally:
        await conn.close()
