"""`tagrun script ...` and `tagrun workspace ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tagrun.server.cli.client import Client, read_content
from tagrun.server.cli.durations import bounds, parse_duration
from tagrun.server.cli.output import (
    Column,
    Detail,
    Format,
    Output,
    ago,
    duration,
    emit,
    moment,
    plain,
    print_detail,
    print_table,
)
from tagrun.server.cli.signing import SignKey, sign_deploy
from tagrun.server.cli.signing import load as load_key
from tagrun.server.models import WorkspaceTokenIn

script_app = typer.Typer(help="Deploy and read scripts.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces and their tokens (superadmin).",
                            no_args_is_help=True)
token_app = typer.Typer(help="Workspace tokens (superadmin).", no_args_is_help=True)
workspace_app.add_typer(token_app, name="token")

Workspace = Annotated[str, typer.Option("--workspace", "-w", envvar="TAGRUN_WORKSPACE",
                                        help="Workspace id.")]


@script_app.command("deploy")
def deploy(
    path: Annotated[str, typer.Argument(help="Where to deploy, e.g. f/etl/daily.")],
    language: Annotated[str, typer.Option(help="bash, sh, python, powershell, identity")],
    file: Annotated[Path | None, typer.Option(help="Read the code from this file.")] = None,
    content: Annotated[str | None, typer.Option(help="The code itself.")] = None,
    workspace: Workspace = "default",
    tag: Annotated[str | None, typer.Option(help="Tag template for its jobs.")] = None,
    timeout_s: float | None = None,
    max_attempts: int = 3,
    concurrency_limit: int | None = None,
    lease_s: Annotated[float | None, typer.Option(
        help="Lease of its jobs: how long a run outlives a lost agent connection.")] = None,
    secret: Annotated[list[str] | None, typer.Option(
        "--secret", help="A secret its jobs get as a variable of that name (repeatable).")
    ] = None,
    sign_key: SignKey = None,
) -> None:
    """Deploy a new version of a script (signed with --sign-key: its jobs and schedules run
    on agents that verify signatures)."""
    body: dict[str, Any] = {
        "path": path, "language": language, "max_attempts": max_attempts,
        "content": read_content(content, file) if language != "identity" else content or "",
    }
    if secret:
        body["secrets"] = secret
    for key, value in (("tag", tag), ("timeout_s", timeout_s),
                       ("concurrency_limit", concurrency_limit), ("lease_s", lease_s)):
        if value is not None:
            body[key] = value
    client = Client()
    if sign_key is not None:
        sign_deploy(client, body, workspace, load_key(sign_key))
    script = client.post(f"/api/w/{workspace}/scripts", body)
    signed = f", signed with key {script['signature']['key_id']}" if script["signature"] else ""
    typer.echo(f"deployed {script['path']} version {script['version']}{signed}")
    show_script(script, content=False)  # the user has just given it


SCRIPT_COLUMNS = [
    Column("path", "Path", width=None), Column("version", "Version"),
    Column("language", "Language"), Column("tag", "Tag"), Column("signed", "Signed"),
    Column("created_at", "Deployed", ago),
]


@script_app.command("list")
def list_scripts(workspace: Workspace = "default", output: Output = Format.TABLE) -> None:
    """List scripts (latest versions)."""
    page = Client().get(f"/api/w/{workspace}/scripts")
    emit(page, output, lambda p: print_table(
        [{**s, "signed": s.get("signature") is not None} for s in p["scripts"]],
        SCRIPT_COLUMNS))


@script_app.command("get")
def get_script(path: str, workspace: Workspace = "default", output: Output = Format.TABLE
               ) -> None:
    """Show a script's latest version, its code last."""
    emit(Client().get(f"/api/w/{workspace}/scripts/{path}"), output, show_script)


def show_script(script: dict[str, Any], content: bool = True) -> None:
    """A script version as `script deploy` and `script get` show it."""
    signature = script.get("signature")
    fields: list[Detail] = [
        ("Script", f"{script['path']} version {script['version']}"),
        ("Language", script["language"]),
        ("Tag", script["tag"] or f"{script['language']} (its language)"),
        ("Timeout", duration(script["timeout_s"])),
        ("Max attempts", plain(script["max_attempts"])),
        ("Concurrency", plain(script["concurrency_limit"])),
        ("Lease", duration(script["lease_s"])),
        ("Secrets", plain(script["secrets"])),
        ("Signed", f"with key {signature['key_id']}" if signature else "no"),
        ("Deployed", moment(script["created_at"])),
    ]
    if content:
        fields.append(("Content", script.get("content") or "-"))
    print_detail(fields)


@workspace_app.command("create")
def create_workspace(workspace_id: str) -> None:
    """Create a workspace."""
    created = Client().post("/api/workspaces", {"id": workspace_id})
    typer.echo(f"created workspace {created['id']}")


@workspace_app.command("list")
def list_workspaces(output: Output = Format.TABLE) -> None:
    """List workspaces."""
    emit(Client().get("/api/workspaces"), output, lambda a: print_table(
        a["workspaces"], [Column("id", "ID", width=None), Column("created_at", "Created", ago)]))


@token_app.command("create")
def create_token(
    workspace_id: Annotated[str, typer.Argument(help="The workspace the token acts in.")],
    label: Annotated[str, typer.Option(help="What the token is for.")] = "",
    expires_in: Annotated[str | None, typer.Option(
        "--expires-in", "--expires-in-s",  # the second: its name when it took seconds only
        help="Lifetime: 90d, 12h, 45m, or seconds (default: it does not expire).")] = None,
) -> None:
    """Create a workspace token; prints only the token."""
    body: dict[str, Any] = {"workspace": workspace_id, "label": label}
    if expires_in is not None:
        body["expires_in_s"] = parse_duration(expires_in, "--expires-in",
                                              bounds(WorkspaceTokenIn, "expires_in_s"))
    typer.echo(Client().post("/api/tokens", body)["token"])


WORKSPACE_TOKEN_COLUMNS = [
    Column("id", "ID"), Column("workspace", "Workspace"), Column("label", "Label"),
    Column("created_at", "Created", ago), Column("expires_at", "Expires", ago),
    Column("revoked", "Revoked"),
]


@token_app.command("list")
def list_tokens(workspace_id: Annotated[str | None, typer.Argument()] = None,
                output: Output = Format.TABLE) -> None:
    """List workspace tokens (never the tokens themselves)."""
    answer = Client().get("/api/tokens", workspace=workspace_id)
    emit(answer, output, lambda a: print_table(a["tokens"], WORKSPACE_TOKEN_COLUMNS))


@token_app.command("revoke")
def revoke_token(token_id: int) -> None:
    """Revoke a workspace token by id."""
    Client().delete(f"/api/tokens/{token_id}")
    typer.echo(f"revoked token {token_id}")
