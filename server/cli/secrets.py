"""`tagrun secret ...` (also `tagrun secrets ...`): set, list, delete, rotate the key.

A value is read from stdin or a file, never from an argument, which would land in the shell's
history and in the process list."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tagrun.server.cli.admin import Workspace
from tagrun.server.cli.client import Client, fail
from tagrun.server.cli.output import Column, Format, Output, ago, emit, plain, print_table

app = typer.Typer(help="Secrets for jobs: encrypted at rest, never shown back.",
                  no_args_is_help=True)


def _value(from_file: Path | None) -> str:
    if from_file is not None:
        try:
            return from_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            fail(f"cannot read {from_file}: {reason}")
    if sys.stdin.isatty():
        value = typer.prompt("value (not shown)", hide_input=True, err=True)
        return str(value)
    value = sys.stdin.read()
    # `echo "$X" | tagrun secret set ...` adds one newline that is not part of the value.
    return value[:-1] if value.endswith("\n") and value.count("\n") == 1 else value


@app.command("set")
def set_secret(
    name: Annotated[str, typer.Argument(help="Its name, like DB_PASSWORD: the variable the "
                                              "job gets.")],
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="Read the value from this file (as is); else from stdin.")] = None,
    allowed_tags: Annotated[str | None, typer.Option(
        "--allowed-tags", help="Comma-separated tags whose jobs may use it (default: any).")
    ] = None,
    workspace: Workspace = "default",
) -> None:
    """Set a secret (its value from stdin or --from-file, never an argument)."""
    body: dict[str, object] = {"value": _value(from_file)}
    if allowed_tags is not None:
        body["allowed_tags"] = [t.strip() for t in allowed_tags.split(",") if t.strip()]
    info = Client().request("PUT", f"/api/w/{workspace}/secrets/{name}", json=body)
    scope = ", ".join(info["allowed_tags"]) if info["allowed_tags"] is not None else "any tag"
    typer.echo(f"secret {info['name']} set in workspace {workspace} (for {scope})")


@app.command("scope")
def scope_secret(
    name: str,
    allowed_tags: Annotated[str | None, typer.Option(
        "--allowed-tags", help="Comma-separated tags whose jobs may use it.")] = None,
    any_tag: Annotated[bool, typer.Option("--any-tag", help="Jobs of any tag may use it.")
                       ] = False,
    workspace: Workspace = "default",
) -> None:
    """Change which tags' jobs may use a secret, keeping its value."""
    if (allowed_tags is None) == (not any_tag):
        fail("give --allowed-tags a,b or --any-tag")
    tags = None if any_tag else [t.strip() for t in (allowed_tags or "").split(",") if t.strip()]
    info = Client().request("PATCH", f"/api/w/{workspace}/secrets/{name}",
                            json={"allowed_tags": tags})
    scope = ", ".join(info["allowed_tags"]) if info["allowed_tags"] is not None else "any tag"
    typer.echo(f"secret {info['name']} in workspace {workspace} is now for {scope}")


SECRET_COLUMNS = [
    Column("name", "Name", width=None),
    Column("allowed_tags", "Allowed tags", lambda tags: "(any)" if tags is None
           else plain(tags)),
    Column("updated_at", "Updated", ago), Column("updated_by", "Updated by"),
]


@app.command("list")
def list_secrets(workspace: Workspace = "default", output: Output = Format.TABLE) -> None:
    """List secrets: names, scope and times (never a value)."""
    answer = Client().get(f"/api/w/{workspace}/secrets")
    emit(answer, output, lambda a: print_table(a["secrets"], SECRET_COLUMNS))


@app.command("delete")
def delete_secret(name: str, workspace: Workspace = "default") -> None:
    """Delete a secret (jobs that name it are refused from now on)."""
    Client().delete(f"/api/w/{workspace}/secrets/{name}")
    typer.echo(f"secret {name} deleted from workspace {workspace}")


@app.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every secret under the server's first key (superadmin). With the key
    file of a standalone server, a new key is made first; with TAGRUN_SECRETS_KEY, put the
    new key first on every replica, restart them, then run this."""
    done = Client().post("/api/secrets/rotate-key")
    typer.echo(f"{done['resealed']} secrets re-encrypted under key {done['key_id']}; "
               f"keys in use: {', '.join(done['keys_in_use'])}")


@app.command("new-key")
def new_key() -> None:
    """Print a fresh key for TAGRUN_SECRETS_KEY (nothing is sent anywhere)."""
    from tagrun.server.vault import new_key as make

    typer.echo(make())
