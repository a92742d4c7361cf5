"""`tagrun token ...` (agent tokens) and `tagrun workers`."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer

from tagrun.server.cli.client import Client, fail, print_json, print_table

token_app = typer.Typer(help="Agent tokens: mint, list, revoke (superadmin).",
                        no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(raw: str, *, option: str = "--expires-in") -> int:
    """'30d', '12h', '45m', '90s', '2w', or plain seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", raw)
    if not match:
        fail(f"{option} {raw!r} is not a duration like 30d, 12h, 45m or 3600")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


@token_app.command("create")
def create(
    tags: Annotated[str, typer.Option(help="Comma-separated tags the agent may run.")],
    group: Annotated[str, typer.Option(help="The agent pool this token belongs to.")],
    expires_in: Annotated[str, typer.Option(help="Lifetime: 30d, 12h, 45m, or seconds.")]
    = "30d",
    label: Annotated[str, typer.Option(help="What the token is for.")] = "",
) -> None:
    """Mint an agent token; prints only the token (give it to the agent as AGENT_TOKEN)."""
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    if not tag_list:
        fail("--tags names no tag")
    minted = Client().post("/api/agent_tokens", {
        "group": group, "tags": tag_list, "expires_in_s": parse_duration(expires_in),
        "label": label})
    typer.echo(minted["token"])


@token_app.command("list")
def list_tokens(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked and expired tokens.")]
    = False,
) -> None:
    """List agent tokens (never the tokens themselves)."""
    tokens = Client().get("/api/agent_tokens", all="true" if all_ else None)["agent_tokens"]
    print_table(tokens, ["jti", "group", "tags", "label", "expires_at", "revoked"])


@token_app.command("revoke")
def revoke(jti: Annotated[str, typer.Argument(help="The token's id (jti), from token list.")]
           ) -> None:
    """Revoke an agent token; agents using it stop within seconds (exit status 3)."""
    Client().delete(f"/api/agent_tokens/{jti}")
    typer.echo(f"revoked agent token {jti}")


workers_app = typer.Typer(help="Agents and workers: list them, pause, resume and drain.")


@workers_app.callback(invoke_without_command=True)
def workers(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(
        help="Only agents in this state: live, busy, paused, draining, stopped, stale, "
             "token_revoked.")] = None,
    group: Annotated[str | None, typer.Option(help="Only agents of this group.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only agents serving this tag.")] = None,
    name: Annotated[str | None, typer.Option(help="Only agents whose name has this in it.")
                    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
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
    if json_:
        print_json(fleet)
        return
    from tagrun.server.services.settings import SETTINGS  # the caps, named in one place

    caps = "".join(f"  {key}={fleet[key]}" for key in SETTINGS if key in fleet)
    typer.echo(f"tagrun {fleet['version']}{caps}")
    counts = fleet["totals"]
    typer.echo(f"{counts['all']} agents and workers: " + ", ".join(
        f"{counts[s]} {s}" for s in ("live", "busy", "paused", "draining", "stopped", "stale",
                                     "token_revoked")))
    typer.echo("\nAGENTS AND WORKERS")
    for agent in fleet["agents"]:  # how it checks signatures: "block:ci,ops", or "no"
        verify = agent.get("verify")
        agent["verifies"] = f"{verify['mode']}:{','.join(verify['keys'])}" if verify else "no"
    print_table(fleet["agents"], ["name", "kind", "state", "group", "tags", "active_count",
                                  "jobs_executed", "last_seen", "ip", "version", "verifies"])
    typer.echo("\nPOOLS")
    print_table(fleet["pools"], ["group", "tags", "live_agents", "running_now", "pending_now"])
    typer.echo("\nTAGS")
    print_table(fleet["tags"], ["tag", "queued", "running", "live_workers"])
    orphaned = [t["tag"] for t in fleet["tags"] if t["queued"] and not t["live_workers"]]
    if orphaned:
        typer.secho(f"\nwarning: queued jobs and no live worker for: {', '.join(orphaned)}",
                    fg=typer.colors.YELLOW, err=True)


def _target(name: str, group: bool) -> str:
    from urllib.parse import quote

    return f"/api/pools/{quote(name, safe='')}" if group else \
        f"/api/workers/{quote(name, safe='')}"


@workers_app.command("pause")
def workers_pause(
    name: Annotated[str, typer.Argument(help="The agent's name (or the group's, with --group).")],
    note: Annotated[str, typer.Option(help="Why: shown with its state (required).")],
    for_: Annotated[str | None, typer.Option(
        "--for", help="Resume by itself after this long: 10m, 2h, 1d or seconds.")] = None,
    group: Annotated[bool, typer.Option("--group", help="Pause every agent of group NAME.")
                     ] = False,
) -> None:
    """Pause an agent or a group: it keeps its running jobs and claims nothing new."""
    body: dict[str, Any] = {"note": note}
    if for_ is not None:
        body["for_s"] = parse_duration(for_, option="--for")
    Client().post(f"{_target(name, group)}/pause", body)
    typer.echo(f"paused {'group ' if group else ''}{name}"
               + (f" for {for_}" if for_ else " until resumed"))


@workers_app.command("resume")
def workers_resume(
    name: Annotated[str, typer.Argument(help="The agent's name (or the group's, with --group).")],
    group: Annotated[bool, typer.Option("--group", help="Resume group NAME.")] = False,
) -> None:
    """Resume a paused agent or group."""
    Client().post(f"{_target(name, group)}/resume")
    typer.echo(f"resumed {'group ' if group else ''}{name}")


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
def settings_get(key: Annotated[str | None, typer.Argument(help="One setting's name.")] = None
                 ) -> None:
    """Show settings."""
    values: dict[str, Any] = Client().get("/api/settings")["settings"]
    if key is not None:
        if key not in values:
            fail(f"unknown setting {key!r}; known: {', '.join(sorted(values))}")
        typer.echo(json.dumps(values[key]))
        return
    for name, value in values.items():
        typer.echo(f"{name} = {json.dumps(value)}")


@settings_app.command("set")
def settings_set(key: str, value: Annotated[str, typer.Argument(help="A JSON value.")]) -> None:
    """Change a setting, e.g. `tagrun settings set task_max_concurrent 10`."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        fail(f"{value!r} is not a JSON value (a number: 10)")
    values = Client().request("PUT", "/api/settings", json={"key": key, "value": parsed})
    typer.echo(f"{key} = {json.dumps(values['settings'][key])}")
