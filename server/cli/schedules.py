"""`tagrun schedule ...`: cron schedules of a workspace."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tagrun.server.cli.client import Client, fail, parse_args, print_json, print_table
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
    schedule = client.post(_path(workspace), body)
    _describe(schedule)


@app.command("list")
def list_(workspace: Workspace = "default") -> None:
    """List the schedules of a workspace (built-in maintenance is in `default`)."""
    rows = []
    for s in Client().get(_path(workspace), limit=1000)["schedules"]:
        last = s["last_runs"][0] if s["last_runs"] else {}
        rows.append({**s, "script": s["script"] or "(built-in)",
                     "next_fire": s["next_fires"][0] if s["next_fires"] else None,
                     "last_run": f"{last['status']} {last['fire_at']}" if last else None})
    print_table(rows, ["name", "cron", "timezone", "script", "overlap", "enabled", "next_fire",
                       "last_run"])


@app.command("get")
def get(name: str, workspace: Workspace = "default") -> None:
    """Show one schedule as JSON, with its next fire times and last runs."""
    print_json(Client().get(_path(workspace, name)))


@app.command("enable")
def enable(name: str, workspace: Workspace = "default") -> None:
    """Enable a schedule: it fires from the next time after now (no catch-up)."""
    _describe(Client().request("PATCH", _path(workspace, name), json={"enabled": True}))


@app.command("disable")
def disable(name: str, workspace: Workspace = "default") -> None:
    """Disable a schedule; runs already queued or running carry on."""
    _describe(Client().request("PATCH", _path(workspace, name), json={"enabled": False}))


@app.command("delete")
def delete(name: str, workspace: Workspace = "default") -> None:
    """Delete a schedule (built-in ones cannot be: disable them instead)."""
    Client().delete(_path(workspace, name))
    typer.echo(f"schedule {name}: deleted")


def _describe(schedule: dict[str, Any]) -> None:
    state = "enabled" if schedule["enabled"] else "disabled"
    typer.echo(f"schedule {schedule['name']}: {state}, cron {schedule['cron']!r} "
               f"({schedule['timezone']}), overlap {schedule['overlap']}")
    if schedule.get("signature"):
        typer.echo(f"  signed with key {schedule['signature']['key_id']}: fires "
                   f"{schedule['script']} version {schedule['script_version']}")
    for fire in schedule["next_fires"]:
        typer.echo(f"  next: {fire}")
