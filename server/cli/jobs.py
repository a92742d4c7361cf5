"""`tagrun job ...`: submit, follow, list and control jobs."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tagrun.server.cli import signing
from tagrun.server.cli.client import Client, fail, parse_args, read_content
from tagrun.server.cli.output import (
    Column,
    Detail,
    Format,
    Output,
    ago,
    duration,
    emit,
    moment,
    parse_time,
    plain,
    print_detail,
    print_json,
    print_table,
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
        output: Output = Format.TABLE) -> None:
    """Show one job: what it runs, its state, times, and result or error."""
    client = Client()
    if wait:
        with interruptible(job_id):
            job = wait_for(client, workspace, job_id, follow_logs=False)
    else:
        job = client.get(f"/api/w/{workspace}/jobs/{job_id}")
    emit(job, output, show_job)


JOB_COLUMNS = [
    Column("id", "ID"), Column("status", "Status"), Column("tag", "Tag"),
    Column("runs", "Runs"), Column("attempts_used", "Attempt"), Column("worker", "Worker"),
    Column("created_at", "Created", ago), Column("took_s", "Took", duration),
    Column("note", "Note", width=60),
]


@app.command("list")
def list_(
    workspace: Workspace = "default",
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, "
                                               "cancelled")] = None,
    tag: str | None = None,
    script: str | None = None,
    limit: int = 20,
    cursor: Annotated[str | None, typer.Option(help="Show jobs older than this id.")] = None,
    output: Output = Format.TABLE,
) -> None:
    """List jobs, newest first."""
    page = Client().get(f"/api/w/{workspace}/jobs", status=status, tag=tag, script=script,
                        limit=limit, cursor=cursor)
    emit(page, output, show_jobs)


def show_jobs(page: dict[str, Any]) -> None:
    print_table([{**job, "runs": _runs(job), "attempts_used": _attempt(job),
                  "took_s": _took(job), "note": _note(job)} for job in page["jobs"]],
                JOB_COLUMNS)
    if page["next_cursor"]:
        typer.echo(f"more: --cursor {page['next_cursor']}", err=True)


CHILD_COLUMNS = [
    Column("id", "Job"), Column("agent", "Agent"), Column("status", "Status"),
    Column("took_s", "Took", duration), Column("note", "Result or error", width=60),
]


def show_job(job: dict[str, Any]) -> None:
    """A job as `job get` shows it."""
    fields: list[Detail] = [
        ("Job", f"{job['id']} ({job['status']})"), ("Workspace", job["workspace"]),
        ("Runs", _runs(job)), ("Tag", job["tag"]), ("Args", plain(job["args"] or None)),
        ("Attempt", _attempt(job)), ("Worker", plain(job["worker"])),
        ("Created", moment(job["created_at"])),
    ]
    if job["run_at"] and parse_time(job["run_at"]) > parse_time(job["created_at"]):
        fields.append(("Runs at", moment(job["run_at"])))
    fields += [("Started", moment(job["started_at"])), ("Finished", moment(job["finished_at"])),
               ("Took", duration(_took(job)))]
    fields += _job_extras(job)
    print_detail(fields)
    if job.get("children") is not None:  # a broadcast: one job per agent
        typer.echo(f"\nAGENTS ({len(job['children'])})")
        print_table([{**c, "took_s": _took(c), "note": _error(c["error"]) if c["error"]
                      else c["status"] == "succeeded" and _result(c["result"]) or None}
                     for c in job["children"]], CHILD_COLUMNS)


def _job_extras(job: dict[str, Any]) -> list[Detail]:
    """The lines a job has only sometimes: why it waits, its limits, result, error..."""
    reason = (job.get("pending_reason") or {}).get("message")
    signature = job.get("signature")
    check = job.get("signature_check")
    return [(label, value) for label, value in (
        ("Waits", reason),
        ("Timeout", job["timeout_s"] and duration(job["timeout_s"])),
        ("Lease", job["lease_s"] and duration(job["lease_s"])),
        ("Secrets", job["secrets"] and plain(job["secrets"])),
        ("Signed", signature and f"with key {signature.get('key_id')}"),
        ("Signature", check and f"{check['verdict']} {check.get('message') or ''}".strip()),
        ("Refusals", [f"{r.get('worker')}: {r.get('kind')}: {r.get('reason')}"
                      for r in job["refusals"]]),
        ("Cancel", job["cancel_requested"] and job["status"] == "running" and "requested"),
        ("Broadcast", job.get("parent_id") and
         f"one of job {job['parent_id']}'s, pinned to agent {job.get('pinned_to')}"),
        ("Result", job["status"] == "succeeded" and not job.get("broadcast")
         and _result(job["result"])),
        ("Error", job["error"] and _error(job["error"])),
    ) if value]


def _runs(job: dict[str, Any]) -> str:
    if job["script"]:
        return f"{job['script']} v{job['script_version']}" if job["script_version"] \
            else job["script"]
    return f"inline {job['language']}"


def _attempt(job: dict[str, Any]) -> str:
    return f"{job['attempt']}/{job['max_attempts']}"


def _took(job: dict[str, Any]) -> float | None:
    if not (job["started_at"] and job["finished_at"]):
        return None
    return (parse_time(job["finished_at"]) - parse_time(job["started_at"])).total_seconds()


def _note(job: dict[str, Any]) -> str | None:
    """Why a queued job waits, why a job failed."""
    if job["error"]:
        return _error(job["error"])
    return (job.get("pending_reason") or {}).get("message")


def _error(error: dict[str, Any]) -> str:
    return f"{error.get('kind')}: {error.get('message')}"


def _result(result: Any) -> str:
    """One line of JSON, or an indented block when that line would be long."""
    line = json.dumps(result, ensure_ascii=False)
    return line if len(line) <= 80 else json.dumps(result, indent=2, ensure_ascii=False)


@app.command("logs")
def logs(job_id: int, workspace: Workspace = "default",
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")]
         = False, output: Output = Format.TABLE,
         timestamps: Annotated[bool, typer.Option(
             "--timestamps", "-t", help="Each line after its time (UTC) and stream.")] = False,
         ) -> None:
    """Print a job's logs (-o json: the API's answers, one JSON object a line)."""
    client = Client()
    by_line = timestamps and output is not Format.JSON
    offset = end = 0
    with interruptible(job_id):
        while True:
            chunk = client.get(f"/api/w/{workspace}/jobs/{job_id}/logs", offset=offset)
            if output is Format.JSON:
                typer.echo(json.dumps(chunk, ensure_ascii=False))
            elif by_line:
                for line in chunk["lines"]:
                    typer.echo(_timestamped(line))
            else:
                typer.echo(chunk["data"], nl=False)
            # By line, the next read begins where the complete lines end.
            grew, end = chunk["offset"] != end, chunk["offset"]
            start, offset = offset, chunk["lines_end"] if by_line else chunk["offset"]
            if not follow or chunk["done"]:
                if by_line and offset < end:  # a line still being written: as it is so far
                    typer.echo(_timestamped({"text": chunk["data"][offset - start:]}))
                return
            if not grew:
                client.get(f"/api/w/{workspace}/jobs/{job_id}", wait_s=1)


def _timestamped(line: dict[str, Any]) -> str:
    """`2024-05-01T12:00:00.123Z stderr text`; a line whose holder did not say: dashes."""
    return f"{line.get('at') or '-':<24} {line.get('stream') or '-':<6} {line['text']}"


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
