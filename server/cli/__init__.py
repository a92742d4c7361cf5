"""The `tagrun` command line: `start` runs a process; the rest are HTTP clients."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer

from tagrun.server.cli.admin import script_app, workspace_app
from tagrun.server.cli.autoscale import autoscale
from tagrun.server.cli.fleet import settings_app, token_app, workers_app
from tagrun.server.cli.jobs import app as job_app
from tagrun.server.cli.schedules import app as schedule_app
from tagrun.server.cli.secrets import app as secret_app
from tagrun.server.cli.signing import app as keys_app
from tagrun.shared.version import __version__

app = typer.Typer(
    help="tagrun: a job server with HTTP-only agent workers.", no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(job_app, name="job")
app.add_typer(script_app, name="script")
app.add_typer(schedule_app, name="schedule")
app.add_typer(secret_app, name="secret")
app.add_typer(secret_app, name="secrets", hidden=True)  # `tagrun secrets rotate-key` reads well
app.add_typer(keys_app, name="keys")
app.add_typer(workspace_app, name="workspace")
app.add_typer(token_app, name="token")
app.add_typer(settings_app, name="settings")
app.add_typer(workers_app, name="workers")
app.command("autoscale")(autoscale)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


@app.command()
def start(
    # Only the flags are parsed here; the environment (MODE, TAGRUN_HOST, TAGRUN_PORT,
    # TAGRUN_DATA_DIR) is read by load_config, whose errors name the variable and the value.
    mode: Annotated[str | None, typer.Option(
        help="standalone (server + worker), server, worker, or agent (env: MODE; default: "
             "standalone)")] = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (env: TAGRUN_HOST; default: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(
        help="Port to listen on (env: TAGRUN_PORT; default: 8000)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Embedded database and superadmin token (env: TAGRUN_DATA_DIR)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        help="Serve HTTPS with this certificate chain, PEM (env: TAGRUN_TLS_CERT)")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        help="The certificate's private key, PEM (env: TAGRUN_TLS_KEY)")] = None,
) -> None:
    """Start tagrun (embedded PostgreSQL unless DATABASE_URL is set)."""
    if (mode or os.environ.get("MODE")) == "agent":
        # The agent reads its own configuration (AGENT_TOKEN, BASE_INTERNAL_URL, ...).
        from tagrun.agent.cli import main as agent_main

        os.environ["MODE"] = "agent"
        agent_main([])
        return
    from tagrun.server.config import ConfigError, load_config
    from tagrun.server.logs import configure_logging
    from tagrun.server.runtime import run
    from tagrun.server.store import DATABASE_ERRORS
    from tagrun.shared.logfmt import LogConfigError, log_format

    try:
        configure_logging()
        config = load_config(mode=mode, host=host, port=port, data_dir=data_dir,
                             tls_cert=tls_cert, tls_key=tls_key)
    except (ConfigError, LogConfigError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    if config.runs_http and log_format() == "text":  # json logs: server.started says it
        typer.echo(f"tagrun {__version__} ({config.mode}) on {config.url}"
                   f"  superadmin token: {config.superadmin_token_source}", err=True)
    try:
        run(config)
    except DATABASE_ERRORS as exc:
        # Startup failures (database unreachable, unknown, or refusing us) are the user's to
        # fix: say what failed in one line rather than with a traceback.
        message = f"{exc.__class__.__name__}: {exc}"
        if config.database_url:
            message = f"cannot use the database at {_redact(config.database_url)} " \
                      f"(DATABASE_URL): {message}"
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _redact(url: str) -> str:
    """The URL without its password."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "(unparsable URL)"


def main() -> None:
    app()
