"""Signed jobs, attacked as someone who owns the database would: a key made and used with the
CLI, signed jobs run by an agent that verifies; then queued jobs rewritten in SQL (content,
args, tag, workspace, timeout, language, script version), a fresh unsigned row, a job signed
by an unknown key: every one is refused unrun (the marker its script would write never
appears), fails at once as signature_invalid without a retry, and is logged on both sides.
An agent in warn mode runs an unsigned job and says so; a direct worker verifies the same way;
the Workers list shows who verifies with which keys."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.test_cli import TAGRUN, cli_env
from tests.e2e.test_job_secrets import signed_in
from tests.support.database import query
from tests.support.processes import (
    SUPERADMIN,
    AgentProcess,
    agent_token,
    api_client,
    finished,
    wait_until,
)


def cli(url: str, *argv: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TAGRUN), *argv], env=cli_env(url, env=env), capture_output=True,
                          text=True, timeout=60, check=False)


def marker_script(markers: Path) -> str:
    """Writes a marker named after its job: proof that it ran."""
    return f'touch "{markers}/ran-$TAGRUN_JOB_ID"\necho "ran with $(cat _tagrun_args.json)"\n'


def make_key(tmp_path: Path, url: str, name: str) -> tuple[Path, str]:
    """`tagrun keys generate`: the private key file (0600) and its public line."""
    out = tmp_path / f"{name}.key"
    done = cli(url, "keys", "generate", "--out", str(out), "--key-id", name)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    public = (tmp_path / f"{name}.key.pub").read_text().strip()
    assert public.startswith(f"{name} ") and public in done.stdout
    assert "PRIVATE" not in done.stdout
    return out, public


def submit(url: str, key: Path | None, *argv: str) -> int:
    extra = ["--sign-key", str(key)] if key else []
    done = cli(url, "job", "run", *argv, *extra)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_a_verifying_agent_runs_signed_jobs_and_refuses_every_tampered_one(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    server = start_process("server", database_url, env={
        "TAGRUN_LOG_FORMAT": "json"}).wait_healthy()
    url = server.url
    markers = tmp_path / "markers"
    markers.mkdir()
    key, public = make_key(tmp_path, url, "ci-prod")
    rogue, _ = make_key(tmp_path, url, "rogue")
    keys_file = tmp_path / "trusted.keys"
    keys_file.write_text(f"# keys this agent trusts\n{public}\n")
    script = tmp_path / "mark.sh"
    script.write_text(marker_script(markers))
    with api_client(url) as api:
        assert api.post("/api/workspaces", json={"id": "other"}).status_code in (200, 201)
        deployed = cli(url, "script", "deploy", "f/mark", "--language", "bash", "--file",
                       str(script), "--tag", "signed", "--timeout-s", "60", "--sign-key",
                       str(key))
        assert deployed.returncode == 0, deployed.stderr
        assert "version 1, signed with key ci-prod" in deployed.stdout
        # Signed at deploy (args left out), signed per job, inline: three honest jobs.
        honest = [submit(url, None, "--script", "f/mark", "--args", '{"n": 1}'),
                  submit(url, key, "--script", "f/mark", "--args", '{"n": 2.0, "s": "x"}'),
                  submit(url, key, "--language", "bash", "--content", marker_script(markers),
                         "--tag", "signed", "--args", '{"n": 3}')]
        # What the attacker rewrites, each queued job one field (the agent is not running).
        tampered = {
            field: submit(url, key, "--script", "f/mark", "--args", '{"n": 4}',
                          "--max-attempts", "3")
            for field in ("content", "args", "tag", "workspace", "timeout", "language",
                          "version", "malformed")}
        tampered["unsigned"] = submit(url, None, "--language", "bash", "--content",
                                      marker_script(markers), "--tag", "signed")
        tampered["rogue key"] = submit(url, rogue, "--language", "bash", "--content",
                                       marker_script(markers), "--tag", "signed")
        redeployed = cli(url, "script", "deploy", "f/mark", "--language", "bash", "--content",
                         "echo v2", "--tag", "signed")
        assert redeployed.returncode == 0, redeployed.stderr
        evil = f'touch "{markers}/ran-$TAGRUN_JOB_ID"; echo pwned'
        sql = {
            "content": ("UPDATE jobs SET content = $2 WHERE id = $1", evil),
            "args": ("UPDATE jobs SET args = $2::jsonb WHERE id = $1", '{"n": 5}'),
            "tag": ("WITH j AS (UPDATE jobs SET tag = $2 WHERE id = $1) "
                    "UPDATE queue SET tag = $2 WHERE job_id = $1", "other-tag"),
            "workspace": ("UPDATE jobs SET workspace = $2 WHERE id = $1", "other"),
            "timeout": ("UPDATE jobs SET timeout_s = $2::float8 WHERE id = $1", 3600.0),
            "language": ("UPDATE jobs SET language = $2 WHERE id = $1", "sh"),
            "version": ("UPDATE jobs SET script_version = $2, content = 'echo v2' "
                        "WHERE id = $1", 2),
            "malformed": ("UPDATE jobs SET signature = jsonb_set(signature, '{sig}', "
                          "to_jsonb($2::text)) WHERE id = $1", "AAAA"),
        }
        for field, (statement, value) in sql.items():
            query(database_url, statement, tampered[field], value)
        # A row the attacker writes from scratch: no signature at all.
        [row] = query(database_url, """
            WITH j AS (INSERT INTO jobs (workspace, language, content, args, tag, run_at,
                                         max_attempts)
                       VALUES ('default', 'bash', $1, '{}', 'signed', now(), 3) RETURNING id)
            INSERT INTO queue (job_id, tag, priority, run_at)
            SELECT id, 'signed', 0, now() FROM j RETURNING job_id""", evil)
        tampered["inserted"] = row["job_id"]

        agent = AgentProcess(url, agent_token(api, ["signed", "other-tag"]), tmp_path,
                             name="verifier", env={"AGENT_VERIFY_KEYS": str(keys_file),
                                                   "TAGRUN_LOG_FORMAT": "json"})
        try:
            for job_id in honest:
                job = finished(api, job_id)
                assert job["status"] == "succeeded", job
                assert job["signature"]["key_id"] == "ci-prod", job
                assert job["signature_check"]["verdict"] == "verified", job
                assert (markers / f"ran-{job_id}").exists()
            # Run again: each copy carries the signature unchanged, and still verifies.
            for job_id in honest:
                copy = api.post(f"/api/w/default/jobs/{job_id}/rerun")
                assert copy.status_code == 201, copy.text
                job = finished(api, copy.json()["id"])
                assert job["status"] == "succeeded", job
                assert job["signature_check"]["verdict"] == "verified", job
                assert job["signature"] == finished(api, job_id)["signature"]
                assert (markers / f"ran-{job['id']}").exists()
            assert api.get(f"/api/w/default/jobs/{honest[0]}").json()["signature"] == {
                "key_id": "ci-prod", "unsigned_args": True, "source": "script"}
            assert api.get(f"/api/w/default/jobs/{honest[1]}").json()["signature"][
                "source"] == "job"
            for what, job_id in tampered.items():
                workspace = "other" if what == "workspace" else "default"
                job = finished(api, job_id, workspace)
                assert job["status"] == "failed", (what, job)
                assert job["error"]["kind"] == "signature_invalid", (what, job)
                assert job["attempt"] == 1, (what, job)  # never retried
                assert job["signature_check"]["verdict"] == "refused", (what, job)
                assert not (markers / f"ran-{job_id}").exists(), what
            message = finished(api, tampered["args"])["error"]["message"]
            assert "changed after signing" in message and "refused unrun by verifier" in message
            assert "not signed" in finished(api, tampered["unsigned"])["error"]["message"]
            assert "malformed" in finished(api, tampered["malformed"])["error"]["message"]
            assert "'rogue', which is not in AGENT_VERIFY_KEYS" in \
                finished(api, tampered["rogue key"])["error"]["message"]
            dead = api.get("/api/w/default/jobs", params={"status": "failed"}).json()["jobs"]
            assert {j["id"] for j in dead} >= {tampered["args"], tampered["unsigned"]}
            [listed] = [w for w in api.get("/api/workers").json()["agents"]
                        if w["name"] == "verifier"]
            assert listed["verify"] == {"mode": "block", "keys": ["ci-prod"]}
            with contextlib.closing(signed_in(url, SUPERADMIN)) as ui:
                page = ui.get(f"/w/default/jobs/{honest[1]}").text
                assert "key <span class=\"mono\">ci-prod</span>" in page
                assert ">verified</span>" in page
                page = ui.get(f"/w/default/jobs/{tampered['content']}").text
                assert ">refused</span>" in page and "signature_invalid" in page
        finally:
            agent.kill()
    refused = [json.loads(line) for line in agent.log_text().splitlines()
               if '"job.signature_refused"' in line]
    assert {r["job_id"] for r in refused} == set(tampered.values())
    assert server.log_text().count('"event": "job.signature_refused"') == len(tampered)
    assert "BEGIN PRIVATE KEY" not in agent.log_text() + server.log_text()


def test_warn_mode_runs_an_unsigned_job_and_says_so(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    server = start_process("server", database_url).wait_healthy()
    _, public = make_key(tmp_path, server.url, "ci")
    keys_file = tmp_path / "trusted.keys"
    keys_file.write_text(public + "\n")
    with api_client(server.url) as api:
        agent = AgentProcess(server.url, agent_token(api, ["warned"]), tmp_path, name="warner",
                             env={"AGENT_VERIFY_KEYS": str(keys_file), "AGENT_VERIFY": "warn"})
        try:
            job_id = api.post("/api/w/default/jobs", json={
                "language": "bash", "content": "echo hello", "tag": "warned"}).json()["id"]
            job = finished(api, job_id)
            assert job["status"] == "succeeded", job
            assert job["signature"] is None
            assert job["signature_check"]["verdict"] == "unverified"
            logs = api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"]
            assert "signature not verified: the job is not signed; running it anyway " \
                   "(AGENT_VERIFY=warn)" in logs and "hello" in logs
            [listed] = [w for w in api.get("/api/workers").json()["agents"]
                        if w["name"] == "warner"]
            assert listed["verify"] == {"mode": "warn", "keys": ["ci"]}
            table = cli(server.url, "workers").stdout
            assert "Verifies" in table and "warn:ci" in table, table
            with contextlib.closing(signed_in(server.url, SUPERADMIN)) as ui:
                page = ui.get(f"/w/default/jobs/{job_id}").text
                assert "Signature not verified: the job is not signed" in page
                assert "<span class=\"muted\">unsigned</span>" in page
                workers = ui.get("/workers").text
                row = workers.split('data-agent="warner"', 1)[1].split("</tr>", 1)[0]
                assert ">warn</span>" in row and ">ci</span>" in row
        finally:
            agent.kill()


def test_a_direct_worker_verifies_like_an_agent(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    bootstrap = start_process("server", database_url).wait_healthy()
    key, public = make_key(key_dir, bootstrap.url, "ops")
    bootstrap.stop()
    keys_file = key_dir / "trusted.keys"
    keys_file.write_text(public + "\n")
    server = start_process("standalone", database_url, data_dir=tmp_path / "data2", env={
        "WORKER_TAGS": "direct", "WORKER_VERIFY_KEYS": str(keys_file),
        "WORKER_NAME": "direct-verifier", "TAGRUN_LOG_FORMAT": "json"}).wait_healthy()
    with api_client(server.url) as api:
        good = submit(server.url, key, "--language", "bash", "--content", "echo signed-ok",
                      "--tag", "direct")
        unsigned = api.post("/api/w/default/jobs", json={
            "language": "bash", "content": "echo nope", "tag": "direct"}).json()["id"]
        assert finished(api, good)["status"] == "succeeded"
        job = finished(api, unsigned)
        assert job["status"] == "failed" and job["error"]["kind"] == "signature_invalid", job
        assert "WORKER_VERIFY=block" in job["error"]["message"]
        logs = api.get(f"/api/w/default/jobs/{unsigned}/logs").json()["data"]
        assert "nope" not in logs.replace("echo nope", "")
        wait_until(lambda: any(w["name"] == "direct-verifier" and w["verify"] for w in
                               api.get("/api/workers").json()["agents"]), message="verify")


def test_signing_refuses_what_it_cannot_vouch_for(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """A deployed version the server changed is not signed again; a tag that depends on
    args cannot be signed at deploy; bad keys and key files are named clearly."""
    server = start_process("server", database_url).wait_healthy()
    url = server.url
    key, _ = make_key(tmp_path, url, "ci")
    assert cli(url, "script", "deploy", "f/x", "--language", "bash", "--content", "echo 1",
               "--sign-key", str(key)).returncode == 0
    query(database_url, "UPDATE scripts SET content = 'echo evil' WHERE path = 'f/x'")
    done = cli(url, "job", "run", "--script", "f/x", "--sign-key", str(key))
    assert done.returncode == 1
    assert "does not match the signature it was deployed with" in done.stderr
    done = cli(url, "script", "deploy", "f/y", "--language", "bash", "--content", "echo 1",
               "--tag", "host-$args[host]", "--sign-key", str(key))
    assert done.returncode == 1 and "depends on its args" in done.stderr
    again = cli(url, "keys", "generate", "--out", str(key))
    assert again.returncode == 1 and "exists already" in again.stderr
    not_key = tmp_path / "not.key"
    not_key.write_text("hello\n")
    done = cli(url, "job", "run", "--language", "bash", "--content", "echo", "--sign-key",
               str(not_key))
    assert done.returncode == 1 and "not a tagrun signing key" in done.stderr
    with api_client(url) as api:
        bad = api.post("/api/w/default/jobs", json={
            "language": "bash", "content": "echo", "signature": {"key_id": "ci", "sig": "x"}})
        assert bad.status_code == 400 and "sig" in bad.json()["error"]["message"]
        taken = api.post("/api/w/default/scripts", json={
            "path": "f/x", "language": "bash", "content": "echo", "version": 1})
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "version_taken"


def docs_example() -> str:
    """The plain-Python signing example of docs/signing.md, as written there."""
    text = (Path(__file__).parents[2] / "docs" / "signing.md").read_text()
    section = text.split("## Signing from plain Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_plain_python_example_in_the_docs_signs_jobs_agents_run(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    example = docs_example()
    assert len(example.splitlines()) <= 35 and "tagrun" not in example.split("import")[1]
    server = start_process("server", database_url).wait_healthy()
    key, public = make_key(tmp_path, server.url, "ci-prod")
    keys_file = tmp_path / "trusted.keys"
    keys_file.write_text(public + "\n")
    (tmp_path / "sign.py").write_text(example)
    done = subprocess.run([sys.executable, str(tmp_path / "sign.py")], capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"], "TAGRUN_SIGNING_KEY": str(key)})
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    with api_client(server.url) as api:
        agent = AgentProcess(server.url, agent_token(api, ["prod"]), tmp_path, name="prod-1",
                             env={"AGENT_VERIFY_KEYS": str(keys_file)})
        try:
            job_id = api.post("/api/w/default/jobs", json=body).json()["id"]
            job = finished(api, job_id)
            assert job["status"] == "succeeded", job
            assert job["signature_check"]["verdict"] == "verified"
            logs = api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"]
            assert 'deploying {"release": "v42"}' in logs, logs
            body["args"] = {"release": "v43"}  # the same signature on other args
            job_id = api.post("/api/w/default/jobs", json=body).json()["id"]
            assert finished(api, job_id)["error"]["kind"] == "signature_invalid"
        finally:
            agent.kill()


def test_a_signed_schedule_fires_its_signed_version_and_a_re_pointed_one_is_refused(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    server = start_process("server", database_url).wait_healthy()
    url = server.url
    markers = tmp_path / "markers"
    markers.mkdir()
    key, public = make_key(tmp_path, url, "sched")
    keys_file = tmp_path / "trusted.keys"
    keys_file.write_text(public + "\n")
    assert cli(url, "script", "deploy", "f/nightly", "--language", "bash", "--content",
               marker_script(markers), "--tag", "cron", "--sign-key", str(key)).returncode == 0
    evil = f'touch "{markers}/ran-$TAGRUN_JOB_ID"; echo evil'
    assert cli(url, "script", "deploy", "f/evil", "--language", "bash", "--content", evil,
               "--tag", "cron").returncode == 0
    created = cli(url, "schedule", "create", "nightly", "--script", "f/nightly", "--cron",
                  "* * * * * *", "--args", '{"db": "main"}', "--sign-key", str(key))
    assert created.returncode == 0, created.stderr
    assert "signed with key sched: fires f/nightly version 1" in created.stdout
    # A redeploy does not change what the signed schedule fires.
    assert cli(url, "script", "deploy", "f/nightly", "--language", "bash", "--content",
               "echo v2", "--tag", "cron").returncode == 0
    with api_client(url) as api:
        agent = AgentProcess(url, agent_token(api, ["cron"]), tmp_path, name="cron-agent",
                             env={"AGENT_VERIFY_KEYS": str(keys_file)})
        try:
            def runs(status: str) -> list[dict[str, Any]]:
                jobs: list[dict[str, Any]] = api.get("/api/w/default/jobs", params={
                    "status": status, "limit": 1000}).json()["jobs"]
                return jobs

            wait_until(lambda: runs("succeeded"), 30, message="a signed run")
            run = api.get(f"/api/w/default/jobs/{runs('succeeded')[0]['id']}").json()
            assert (run["script_version"], run["args"]) == (1, {"db": "main"})
            assert run["signature"] == {"key_id": "sched", "unsigned_args": False,
                                        "source": "schedule"}
            assert run["signature_check"]["verdict"] == "verified"
            assert (markers / f"ran-{run['id']}").exists()
            # The attacker re-points the schedule at another script in SQL.
            query(database_url, "UPDATE schedules SET script_path = 'f/evil', "
                  "script_version = NULL WHERE name = 'nightly'")
            wait_until(lambda: runs("failed"), 30, message="a refused run")
            refused = runs("failed")[0]
            assert refused["script"] == "f/evil" and \
                refused["error"]["kind"] == "signature_invalid", refused
            assert not (markers / f"ran-{refused['id']}").exists()
            # Changing what it runs through the API drops the signature, which would never
            # verify again; the schedule says so.
            patched = api.patch("/api/w/default/schedules/nightly", json={
                "script": "f/nightly", "script_version": 1, "enabled": False})
            assert patched.status_code == 200 and patched.json()["signature"] is None
            assert api.delete("/api/w/default/schedules/nightly").status_code == 200
        finally:
            agent.kill()
