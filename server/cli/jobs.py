"""`tagrun job ...`: submit, follow, list and control jobs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tagrun.server.cli import signing
from tagrun.server.cli.client import (
    Client,
    fail,
    parse_args,
    print_json,
    print_table,
    read_content,
)
from tagrun.server.cli.signing import SignKey, UnsignedArgs
from tagrun.server.job_states import FINAL_STATES

app = typer.Typer(help="Submit, follow, list and control jobs.", no_args_is_help=True)

PROGRESS_EVERY_S = 30.0  # while a job waits, say so this often

Workspace = Annotated[str, typer.Option("--workspace", "-w", envvar="TAGRUN_WORKSPACE",
                                        help="Workspace id.")]


@contextlib.contextmanager
def interruptible(job_id: int) -> Iterator[None]:
    """Ctrl+C stops the waiting, not the job: say so, and how to stop the job too."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("", err=True)
        fail(f"stopped waiting; job {job_id} carries on (tagrun job cancel {job_id} stops it)",
             code=130)


def wait_for(client: Client, workspace: str, job_id: int, *, follow_logs: bool,
             said: str | None = None) -> dict[str, Any]:
    """Wait for a final state, printing logs as they arrive, why the job waits whenever that
    changes, and a progress line now and then while it does."""
    offset = 0
    started = time.monotonic()
    progress_at = started + PROGRESS_EVERY_S
    while True:
        if follow_logs:
            logs = client.get(f"/api/w/{workspace}/jobs/{job_id}/logs", offset=offset)
            if logs["data"]:
                typer.echo(logs["data"], nl=False, err=True)
            offset = logs["offset"]
        job: dict[str, Any] = client.get(f"/api/w/{workspace}/jobs/{job_id}",
                                         wait_s=1 if follow_logs else 10)
        if job["status"] in FINAL_STATES:
            if follow_logs:
                logs = client.get(f"/api/w/{workspace}/jobs/{job_id}/logs", offset=offset)
                typer.echo(logs["data"], nl=False, err=True)
            return job
        reason = job.get("pending_reason") or {}
        now = time.monotonic()
        if reason.get("message") and reason["message"] != said:
            typer.echo(f"… job {job_id} waits: {reason['message']}", err=True)
            said, progress_at = reason["message"], now + PROGRESS_EVERY_S
        elif now >= progress_at or not follow_logs:
            typer.echo(f"… job {job_id} {job['status']} ({now - started:.0f}s)", err=True)
            progress_at = now + PROGRESS_EVERY_S


@app.command("run")
def run(
    workspace: Workspace = "default",
    script: Annotated[str | None, typer.Option(help="Path of a deployed script.")] = None,
    language: Annotated[str | None, typer.Option(help="bash, sh, python, powershell, identity")]
    = None,
    content: Annotated[str | None, typer.Option(help="The code to run.")] = None,
    file: Annotated[Path | None, typer.Option(help="Read the code from this file.")] = None,
    args: Annotated[str | None, typer.Option(help="Arguments as a JSON object.")] = None,
    tag: Annotated[str | None, typer.Option(help="Tag (default: the script's, else language).")]
    = None,
    priority: int = 0,
    timeout_s: Annotated[float | None, typer.Option(help="Kill the job after this long.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Runs allowed, retries included.")]
    = None,
    lease_s: Annotated[float | None, typer.Option(
        help="Its lease: how long it outlives a lost agent connection.")] = None,
    secret: Annotated[list[str] | None, typer.Option(
        "--secret", help="A secret it gets as a variable of that name (repeatable).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait, stream logs, print the result.")]
    = False,
    sign_key: SignKey = None,
    unsigned_args: UnsignedArgs = False,
) -> None:
    """Submit a job; with --wait, follow its logs and print its result."""
    body: dict[str, Any] = {"args": parse_args(args), "priority": priority}
    if secret:
        body["secrets"] = secret
    if script is not None:
        body["script"] = script
    else:
        if language is None:
            fail("give --script, or --language with --content or --file")
        body["language"] = language
        body["content"] = read_content(content, file) if language != "identity" else content or ""
    for key, value in (("tag", tag), ("timeout_s", timeout_s), ("max_attempts", max_attempts),
                       ("lease_s", lease_s)):
        if value is not None:
            body[key] = value
    client = Client()
    if sign_key is not None:
        signer = signing.load(sign_key)
        if script is not None:
            signing.sign_script_job(client, body, workspace, signer, unsigned_args)
        else:
            signing.sign_inline(body, workspace, signer, unsigned_args)
    elif unsigned_args:
        fail("--unsigned-args applies to a signed job (--sign-key)")
    job = client.post(f"/api/w/{workspace}/jobs", body)
    if not wait:
        typer.echo(job["id"])
        return
    with interruptible(job["id"]):
        typer.echo(f"job {job['id']} queued (tag {job['tag']})", err=True)
        # The submit's answer says nothing of why it would wait (that costs queries): ask.
        view = client.get(f"/api/w/{workspace}/jobs/{job['id']}")
        reason = view.get("pending_reason") or {}
        if reason.get("code") == "no_live_worker":
            typer.secho(f"warning: {reason['message']}", fg=typer.colors.YELLOW, err=True)
        job = wait_for(client, workspace, job["id"], follow_logs=True,
                       said=reason.get("message") if reason.get("code") == "no_live_worker"
                       else None)
    if job["status"] == "succeeded":
        print_json(job["result"])
        return
    error = job.get("error") or {}
    fail(f"job {job['id']} {job['status']}: {error.get('kind')}: {error.get('message')}")


@app.command("get")
def get(job_id: int, workspace: Workspace = "default",
        wait: Annotated[bool, typer.Option("--wait", help="Wait for a final state.")] = False,
        ) -> None:
    """Show one job as JSON."""
    client = Client()
    if wait:
        with interruptible(job_id):
            job = wait_for(client, workspace, job_id, follow_logs=False)
    else:
        job = client.get(f"/api/w/{workspace}/jobs/{job_id}")
    print_json(job)


@app.command("list")
def list_(
    workspace: Workspace = "default",
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, "
                                               "cancelled")] = None,
    tag: str | None = None,
    script: str | None = None,
    limit: int = 20,
    cursor: Annotated[str | None, typer.Option(help="Show jobs older than this id.")] = None,
) -> None:
    """List jobs, newest first."""
    page = Client().get(f"/api/w/{workspace}/jobs", status=status, tag=tag, script=script,
                        limit=limit, cursor=cursor)
    print_table(page["jobs"], ["id", "status", "tag", "script", "attempt", "worker",
                               "created_at", "finished_at"])
    if page["next_cursor"]:
        typer.echo(f"more: --cursor {page['next_cursor']}", err=True)


@app.command("logs")
def logs(job_id: int, workspace: Workspace = "default",
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")]
         = False) -> None:
    """Print a job's logs."""
    client = Client()
    offset = 0
    with interruptible(job_id):
        while True:
            chunk = client.get(f"/api/w/{workspace}/jobs/{job_id}/logs", offset=offset)
            typer.echo(chunk["data"], nl=False)
            offset = chunk["offset"]
            if not follow or chunk["done"]:
                return
            if not chunk["data"]:
                client.get(f"/api/w/{workspace}/jobs/{job_id}", wait_s=1)


@app.command("cancel")
def cancel(job_id: int, workspace: Workspace = "default") -> None:
    """Cancel a queued or running job."""
    job = Client().post(f"/api/w/{workspace}/jobs/{job_id}/cancel")
    state = "cancel requested" if job["status"] == "running" else job["status"]
    typer.echo(f"job {job_id}: {state}")


@app.command("retry")
def retry(job_id: int, workspace: Workspace = "default") -> None:
    """Run a failed or cancelled job again, with fresh attempts."""
    job = Client().post(f"/api/w/{workspace}/jobs/{job_id}/retry")
    typer.echo(f"job {job_id}: {job['status']}")
