"""`tagrun token ...` (agent tokens), `tagrun workers` and `tagrun settings`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from tagrun.server.cli.autoscale import (
    create_autoscale_token,
    list_autoscale_tokens,
    revoke_autoscale_token,
)
from tagrun.server.cli.client import Client, fail
from tagrun.server.cli.durations import bounds, parse_duration
from tagrun.server.cli.output import (
    Column,
    Format,
    Output,
    ago,
    duration,
    emit,
    print_table,
)
from tagrun.server.models import PauseIn
from tagrun.shared.agent_wire import AgentTokenIn

token_app = typer.Typer(help="Agent tokens: mint, list, revoke (superadmin).",
                        no_args_is_help=True)

TOKEN_COLUMNS = [
    Column("jti", "Token id", width=None), Column("group", "Group"), Column("tags", "Tags"),
    Column("label", "Label"), Column("created_at", "Created", ago),
    Column("expires_at", "Expires", ago), Column("revoked", "Revoked"), Column("jobs", "Jobs"),
]
MAX_JOBS = bounds(AgentTokenIn, "max_jobs")


def jobs_used(token: dict[str, Any]) -> str:
    """A job-limited token's budget as read: "3 of 5 used"; "unlimited" without max_jobs."""
    if token.get("max_jobs") is None:
        return "unlimited"
    return f"{token.get('jobs_claimed') or 0} of {token['max_jobs']} used"


@token_app.command("create")
def create(
    tags: Annotated[str | None, typer.Option(
        help="Comma-separated tags the agent may run (required).")] = None,
    group: Annotated[str | None, typer.Option(
        help="The agent pool this token belongs to (required).")] = None,
    expires_in: Annotated[str | None, typer.Option(
        help="Lifetime: 30d, 12h, 45m, or seconds (default: 30d; an autoscale token: none).")]
    = None,
    label: Annotated[str, typer.Option(help="What the token is for.")] = "",
    autoscale: Annotated[bool, typer.Option(
        "--autoscale", help="Instead, a token that reads GET /api/autoscale and nothing else "
                            "(no --tags, --group), for an autoscaler such as KEDA.")] = False,
    max_jobs: Annotated[int | None, typer.Option(
        min=MAX_JOBS[0], max=MAX_JOBS[1],
        help="Jobs the agents using it may claim in total, then only finish them "
             "(one-job tokens for throwaway VMs and pods). Default: unlimited.")] = None,
) -> None:
    """Mint an agent token; prints only the token (give it to the agent as AGENT_TOKEN).
    With --autoscale: a token for an autoscaler, that reads GET /api/autoscale only."""
    if autoscale:
        if tags is not None or group is not None or max_jobs is not None:
            fail("an autoscale token runs no jobs: leave out --tags, --group and --max-jobs")
        typer.echo(create_autoscale_token(label, expires_in))
        return
    if tags is None or group is None:
        fail("give --tags and --group (or --autoscale for an autoscale token)")
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    if not tag_list:
        fail("--tags names no tag")
    minted = Client().post("/api/agent_tokens", {
        "group": group, "tags": tag_list, "label": label,
        **({"max_jobs": max_jobs} if max_jobs is not None else {}),
        "expires_in_s": parse_duration(expires_in or "30d", "--expires-in",
                                       bounds(AgentTokenIn, "expires_in_s"))})
    typer.echo(minted["token"])


@token_app.command("list")
def list_tokens(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked and expired tokens.")]
    = False,
    output: Output = Format.TABLE,
    autoscale: Annotated[bool, typer.Option("--autoscale", help="List autoscale tokens instead.")
                         ] = False,
) -> None:
    """List agent tokens (never the tokens themselves)."""
    if autoscale:
        list_autoscale_tokens(output)
        return
    answer = Client().get("/api/agent_tokens", all="true" if all_ else None)
    emit(answer, output, lambda a: print_table(
        [{**t, "jobs": jobs_used(t)} for t in a["agent_tokens"]], TOKEN_COLUMNS))


@token_app.command("revoke")
def revoke(jti: Annotated[str, typer.Argument(help="The token's id (jti), from token list.")],
           autoscale: Annotated[bool, typer.Option(
               "--autoscale", help="Revoke the autoscale token of this id instead.")] = False,
           ) -> None:
    """Revoke an agent token; agents using it stop within seconds (exit status 3)."""
    if autoscale:
        revoke_autoscale_token(jti)
        return
    Client().delete(f"/api/agent_tokens/{jti}")
    typer.echo(f"revoked agent token {jti}")


workers_app = typer.Typer(help="Agents and workers: list them, pause, resume and drain.")

AGENT_COLUMNS = [
    Column("name", "Name", width=None), Column("kind", "Kind"), Column("state", "State"),
    Column("group", "Group"), Column("tags", "Tags"), Column("active_count", "Active jobs"),
    Column("jobs_executed", "Jobs run"), Column("last_seen", "Last seen", ago),
    Column("ip", "IP"), Column("version", "Version"), Column("verifies", "Verifies"),
]
POOL_COLUMNS = [
    Column("group", "Group"), Column("tags", "Tags"), Column("live_agents", "Live agents"),
    Column("running_now", "Running"), Column("pending_now", "Queued"),
]
TAG_COLUMNS = [
    Column("tag", "Tag"), Column("queued", "Queued"), Column("running", "Running"),
    Column("live_workers", "Live workers"),
    Column("oldest_queued_s", "Oldest queued", duration),
    Column("wait_p50_s", "Wait p50", duration), Column("wait_p95_s", "Wait p95", duration),
]
STATES = ("live", "busy", "paused", "draining", "quarantined", "stopped", "stale",
          "token_revoked", "version_refused")


@workers_app.callback(invoke_without_command=True)
def workers(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(
        help=f"Only agents in this state: {', '.join(STATES)}.")] = None,
    group: Annotated[str | None, typer.Option(help="Only agents of this group.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only agents serving this tag.")] = None,
    name: Annotated[str | None, typer.Option(help="Only agents whose name has this in it.")
                    ] = None,
    output: Output = Format.TABLE,
    json_: Annotated[bool, typer.Option("--json", hidden=True, help="Same as -o json.")]
    = False,
) -> None:
    """Show agents and workers (every page), their states, pools, and tags with queued jobs."""
    if ctx.invoked_subcommand is not None:
        return
    client = Client()
    filters = {"state": state, "group": group, "tag": tag, "name": name}
    fleet: dict[str, Any] = client.get("/api/workers", **filters)
    while fleet["next_cursor"]:
        more = client.get("/api/workers", **filters, cursor=fleet["next_cursor"])
        fleet["agents"] += more["agents"]
        fleet["next_cursor"] = more["next_cursor"]
    emit(fleet, Format.JSON if json_ else output, show_fleet)


def show_fleet(fleet: dict[str, Any]) -> None:
    from tagrun.server.services.settings import CAPS  # the caps, named in one place

    caps = "".join(f"  {key}={fleet[key]}" for key in CAPS if key in fleet)
    typer.echo(f"tagrun {fleet['version']}{caps}")
    counts = fleet["totals"]
    typer.echo(f"{counts['all']} agents and workers: "
               + ", ".join(f"{counts[s]} {s}" for s in STATES))
    typer.echo("\nAGENTS AND WORKERS")
    agents = [{**agent, "verifies": _verifies(agent)} for agent in fleet["agents"]]
    print_table(agents, AGENT_COLUMNS)
    typer.echo("\nPOOLS")
    print_table(fleet["pools"], POOL_COLUMNS)
    typer.echo("\nTAGS")
    print_table(fleet["tags"], TAG_COLUMNS)
    for paused in fleet.get("paused_tags") or []:
        until = f" until {paused['paused_until']}" if paused["paused_until"] else ""
        typer.echo(f"tag {paused['tag']} paused by {paused['paused_by'] or '?'}{until}: "
                   f"{paused['note']}")
    outdated = [a["name"] for a in fleet["agents"] if a.get("outdated")]
    if outdated:
        typer.secho(f"\nagents below the recommended version "
                    f"{fleet.get('recommended_agent_version')}: {', '.join(outdated)}",
                    fg=typer.colors.YELLOW, err=True)
    orphaned = [t["tag"] for t in fleet["tags"] if t["queued"] and not t["live_workers"]]
    if orphaned:
        typer.secho(f"\nwarning: queued jobs and no live worker for: {', '.join(orphaned)}",
                    fg=typer.colors.YELLOW, err=True)


def _verifies(agent: dict[str, Any]) -> str:
    """How it checks signatures: "block:ci,ops", or "no"."""
    verify = agent.get("verify")
    return f"{verify['mode']}:{','.join(verify['keys'])}" if verify else "no"


def _target(name: str, group: bool, tag: bool = False) -> str:
    from urllib.parse import quote

    if tag:
        return f"/api/tags/{quote(name, safe='')}"
    return f"/api/pools/{quote(name, safe='')}" if group else \
        f"/api/workers/{quote(name, safe='')}"


def _what(group: bool, tag: bool) -> str:
    if group and tag:
        fail("give --group or --tag, not both")
    return "group " if group else "tag " if tag else ""


@workers_app.command("pause")
def workers_pause(
    name: Annotated[str, typer.Argument(help="The agent's name (or the group's, with --group).")],
    note: Annotated[str, typer.Option(help="Why: shown with its state (required).")],
    for_: Annotated[str | None, typer.Option(
        "--for", help="Resume by itself after this long: 10m, 2h, 1d or seconds.")] = None,
    group: Annotated[bool, typer.Option("--group", help="Pause every agent of group NAME.")
                     ] = False,
    tag: Annotated[bool, typer.Option(
        "--tag", help="Pause tag NAME: its jobs stay queued, no agent or worker claims them.")
                   ] = False,
) -> None:
    """Pause an agent, a group or a tag: running jobs go on, nothing new is claimed."""
    what = _what(group, tag)
    body: dict[str, Any] = {"note": note}
    if for_ is not None:
        body["for_s"] = parse_duration(for_, "--for", bounds(PauseIn, "for_s"))
    Client().post(f"{_target(name, group, tag)}/pause", body)
    typer.echo(f"paused {what}{name}" + (f" for {for_}" if for_ else " until resumed"))


@workers_app.command("resume")
def workers_resume(
    name: Annotated[str, typer.Argument(help="The agent's name (or the group's, with --group).")],
    group: Annotated[bool, typer.Option("--group", help="Resume group NAME.")] = False,
    tag: Annotated[bool, typer.Option("--tag", help="Resume tag NAME.")] = False,
) -> None:
    """Resume a paused agent, group or tag."""
    what = _what(group, tag)
    Client().post(f"{_target(name, group, tag)}/resume")
    typer.echo(f"resumed {what}{name}")


@workers_app.command("drain")
def workers_drain(
    name: Annotated[str, typer.Argument(help="The agent's name.")],
    note: Annotated[str, typer.Option(help="Why (optional).")] = "",
) -> None:
    """Drain an agent: it claims nothing more, finishes its jobs, says goodbye and exits 0."""
    Client().post(f"{_target(name, False)}/drain", {"note": note} if note else {})
    typer.echo(f"draining {name}: it finishes its jobs, then stops")


settings_app = typer.Typer(help="Server settings (superadmin): concurrency caps.",
                           no_args_is_help=True)


@settings_app.command("get")
def settings_get(key: Annotated[str | None, typer.Argument(help="One setting's name.")] = None,
                 output: Output = Format.TABLE) -> None:
    """Show settings (with KEY: its value alone, as JSON)."""
    answer: dict[str, Any] = Client().get("/api/settings")
    values: dict[str, Any] = answer["settings"]
    if key is None:
        emit(answer, output, lambda a: print_table(_setting_rows(values), SETTING_COLUMNS))
        return
    if key not in values:
        fail(f"unknown setting {key!r}; known: {', '.join(sorted(values))}")
    typer.echo(json.dumps(values[key]))


SETTING_COLUMNS = [Column("name", "Setting"), Column("value", "Value"),
                   Column("help", "Meaning", width=80)]


def _setting_rows(values: dict[str, Any]) -> list[dict[str, Any]]:
    from tagrun.server.services.settings import SETTINGS

    return [{"name": name, "value": value, "help": SETTINGS[name].help if name in SETTINGS
             else None} for name, value in values.items()]


@settings_app.command("set")
def settings_set(key: str, value: Annotated[str, typer.Argument(help="A JSON value.")]) -> None:
    """Change a setting, e.g. `tagrun settings set task_max_concurrent 10`."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        fail(f"{value!r} is not a JSON value (a number: 10)")
    values = Client().request("PUT", "/api/settings", json={"key": key, "value": parsed})
    typer.echo(f"{key} = {json.dumps(values['settings'][key])}")
