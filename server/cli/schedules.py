"""`tagrun schedule ...`: cron schedules of a workspace."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from tagrun.server.cli.client import Client, fail, parse_args
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
    print_table,
)
from tagrun.server.cli.signing import SignKey, UnsignedArgs, sign_script_job
from tagrun.server.cli.signing import load as load_key

app = typer.Typer(help="Cron schedules: create, list, show, enable, disable, delete.",
                  no_args_is_help=True)

Workspace = Annotated[str, typer.Option("--workspace", "-w", envvar="TAGRUN_WORKSPACE",
                                        help="Workspace id.")]


def _path(workspace: str, name: str | None = None) -> str:
    return f"/api/w/{workspace}/schedules" + (f"/{name}" if name is not None else "")


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Name, e.g. nightly-etl.")],
    cron: Annotated[str, typer.Option(
        help="5 fields (minute hour day month weekday), or 6 with seconds first.")],
    script: Annotated[str, typer.Option(help="Path of the deployed script to run.")],
    workspace: Workspace = "default",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron fields.")] = "UTC",
    args: Annotated[str | None, typer.Option(help="Arguments as a JSON object.")] = None,
    overlap: Annotated[str, typer.Option(
        help="When a fire comes while the previous run is queued or running: queue (wait "
             "for it), skip (drop this fire), replace (cancel it).")] = "queue",
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    timeout_s: Annotated[float | None, typer.Option(help="Kill a run after this long.")]
    = None,
    tag: Annotated[str | None, typer.Option(help="Tag (default: the script's, else the "
                                            "language).")] = None,
    sign_key: SignKey = None,
    unsigned_args: UnsignedArgs = False,
) -> None:
    """Create a schedule and show its next fire times. With --sign-key its runs are signed
    (args included) and it fires the script version signed, even after a redeploy."""
    body: dict[str, Any] = {"name": name, "cron": cron, "script": script, "timezone": timezone,
                            "args": parse_args(args), "overlap": overlap,
                            "enabled": not disabled}
    for key, value in (("timeout_s", timeout_s), ("tag", tag)):
        if value is not None:
            body[key] = value
    client = Client()
    if sign_key is not None:
        sign_script_job(client, body, workspace, load_key(sign_key), unsigned_args)
    elif unsigned_args:
        fail("--unsigned-args applies to a signed schedule (--sign-key)")
    show_schedule(client.post(_path(workspace), body))


SCHEDULE_COLUMNS = [
    Column("name", "Name", width=None), Column("cron", "Cron"),
    Column("timezone", "Time zone"),
    Column("script", "Script"), Column("overlap", "Overlap"), Column("enabled", "Enabled"),
    Column("next_fire", "Next fire"), Column("last_run", "Last run"),
]


@app.command("list")
def list_(workspace: Workspace = "default", output: Output = Format.TABLE) -> None:
    """List the schedules of a workspace (built-in maintenance is in `default`)."""
    emit(Client().get(_path(workspace), limit=1000), output, show_schedules)


def show_schedules(page: dict[str, Any]) -> None:
    rows = []
    for s in page["schedules"]:
        last = s["last_runs"][0] if s["last_runs"] else None
        first = s["next_fires"][0] if s["next_fires"] else None
        rows.append({**s, "script": s["script"] or "(built-in)",
                     "next_fire": first and f"{local_time(first, s['timezone'])} ({ago(first)})",
                     "last_run": last and f"{last['status']} {ago(last['fire_at'])}"})
    print_table(rows, SCHEDULE_COLUMNS)


@app.command("get")
def get(name: str, workspace: Workspace = "default", output: Output = Format.TABLE) -> None:
    """Show one schedule, with its next fire times and last runs."""
    emit(Client().get(_path(workspace, name)), output, show_schedule)


@app.command("enable")
def enable(name: str, workspace: Workspace = "default") -> None:
    """Enable a schedule: it fires from the next time after now (no catch-up)."""
    show_schedule(Client().request("PATCH", _path(workspace, name), json={"enabled": True}))


@app.command("disable")
def disable(name: str, workspace: Workspace = "default") -> None:
    """Disable a schedule; runs already queued or running carry on."""
    show_schedule(Client().request("PATCH", _path(workspace, name), json={"enabled": False}))


@app.command("delete")
def delete(name: str, workspace: Workspace = "default") -> None:
    """Delete a schedule (built-in ones cannot be: disable them instead)."""
    Client().delete(_path(workspace, name))
    typer.echo(f"schedule {name}: deleted")


def show_schedule(schedule: dict[str, Any]) -> None:
    """A schedule as create, get, enable and disable show it: its times in its own time zone,
    UTC beside them."""
    zone = schedule["timezone"]
    state = "enabled" if schedule["enabled"] else "disabled"
    fields: list[Detail] = [
        ("Schedule", f"{schedule['name']} ({state})"), ("Workspace", schedule["workspace"]),
        ("Cron", f"{schedule['cron']} in {zone}"), ("Runs", _runs(schedule)),
        ("Overlap", schedule["overlap"]), ("Args", plain(schedule["args"] or None)),
        ("Tag", plain(schedule["tag"])), ("Timeout", duration(schedule["timeout_s"])),
    ]
    signature = schedule.get("signature")
    if signature:
        fields.append(("Signature", f"signed with key {signature['key_id']}: fires "
                                    f"{schedule['script']} version {schedule['script_version']}"))
    fields += [
        ("Next fires", [local_time(f, zone, full=True) for f in schedule["next_fires"]]),
        ("Last runs", [_run(r, zone) for r in schedule["last_runs"]]),
        ("Updated", moment(schedule["updated_at"])),
    ]
    print_detail(fields)


def _runs(schedule: dict[str, Any]) -> str:
    if schedule["script"] is None:
        return f"(built-in) {schedule.get('description') or ''}".rstrip()
    return str(schedule["script"])


def _run(run: dict[str, Any], zone: str) -> str:
    job = f" (job {run['job_id']})" if run.get("job_id") else ""
    message = f": {run['message']}" if run.get("message") else ""
    return f"{local_time(run['fire_at'], zone, full=True)}: {run['status']}{job}{message}"


def _zone(name: str) -> tzinfo:
    """The schedule's time zone; UTC where this machine does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def local_time(fire: str, zone: str, full: bool = False) -> str:
    """A time in the schedule's zone: "2026-12-07 09:00"; `full` names the zone and puts UTC
    beside it: "2026-12-07 09:00 Europe/Paris (08:00 UTC)", dated when that date differs."""
    utc = parse_time(fire)
    tz = _zone(zone)
    local = utc.astimezone(tz)
    if not full:
        return _clock(local, date=True)
    if tz is UTC or zone == "UTC":
        return f"{_clock(utc, date=True)} UTC"
    return f"{_clock(local, date=True)} {zone} ({_clock(utc, utc.date() != local.date())} UTC)"


def _clock(moment_: datetime, date: bool) -> str:
    """09:00, or 09:00:30 when the second is not 0 (six-field crons), dated if asked."""
    text = moment_.strftime("%H:%M:%S" if moment_.second else "%H:%M")
    return f"{moment_:%Y-%m-%d} {text}" if date else text
