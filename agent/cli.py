"""The `tagrun-agent` command: each option mirrors an environment variable.

Kept light at import time (typer and the version only) so `--version` answers fast; the
runtime is imported when the agent actually starts.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from tagrun.agent.frozen import PYTHON_FLAG, run_python, runs_python
from tagrun.shared.version import __version__

if TYPE_CHECKING:
    from tagrun.agent.config import AgentConfig

app = typer.Typer(
    add_completion=False,
    # Pretty tracebacks print local variables, which would include the token.
    pretty_exceptions_enable=False,
    context_settings={"max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.command(help="Run a tagrun agent: claim jobs from the server over HTTP, run them, "
                  "report their results. Stop with SIGTERM or Ctrl+C (twice: at once).")
def agent(
    token: Annotated[str | None, typer.Option(
        "--token", envvar="AGENT_TOKEN", metavar="JWT", show_envvar=True,
        help="Agent token (this or AGENT_TOKEN_FILE). Jobs cannot read it: the agent "
             "restarts itself without it in its environment or arguments.")] = None,
    token_file: Annotated[str | None, typer.Option(
        "--token-file", envvar="AGENT_TOKEN_FILE", metavar="PATH", show_envvar=True,
        help="File holding the agent token, read once at start (instead of AGENT_TOKEN).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", envvar="BASE_INTERNAL_URL", metavar="URL", show_envvar=True,
        help="The server, http(s)://host[:port] (required).")] = None,
    init_script: Annotated[str | None, typer.Option(
        "--init-script", envvar="INIT_SCRIPT", metavar="SCRIPT", show_envvar=True,
        help="Shell script run once before the first claim; failure exits with 1.")] = None,
    init_script_language: Annotated[str | None, typer.Option(
        "--init-script-language", envvar="INIT_SCRIPT_LANGUAGE", metavar="LANGUAGE",
        show_envvar=True,
        help="What INIT_SCRIPT is written in: bash, sh, powershell or python (default: "
             "powershell on Windows, bash elsewhere).")] = None,
    bash: Annotated[str | None, typer.Option(
        "--bash", envvar="AGENT_BASH", metavar="PATH", show_envvar=True,
        help="The bash that bash jobs run (default: bash on PATH; on Windows Git for "
             "Windows' bash.exe, never WSL's).")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", envvar="AGENT_NAME", metavar="NAME", show_envvar=True,
        help="How the agent appears on the server (default: host name + random suffix).")
    ] = None,
    slots: Annotated[str | None, typer.Option(
        "--slots", envvar="AGENT_SLOTS", metavar="N", show_envvar=True,
        help="Jobs run at once (default: 1).")] = None,
    work_dir: Annotated[str | None, typer.Option(
        "--work-dir", envvar="AGENT_WORK_DIR", metavar="DIR", show_envvar=True,
        help="Where jobs run, a directory each (default: a temporary directory).")] = None,
    job_user: Annotated[str | None, typer.Option(
        "--job-user", envvar="AGENT_JOB_USER", metavar="USER", show_envvar=True,
        help="Linux and macOS: run jobs as this unprivileged user, so that no job can reach "
             "the agent's token or memory (the agent runs as root).")] = None,
    python: Annotated[str | None, typer.Option(
        "--python", envvar="AGENT_PYTHON", metavar="PATH", show_envvar=True,
        help="Python interpreter for Python jobs (default: the agent's own).")] = None,
    drain_timeout_s: Annotated[str | None, typer.Option(
        "--drain-timeout-s", envvar="AGENT_DRAIN_TIMEOUT_S", metavar="SECONDS",
        show_envvar=True,
        help="On stop, how long running jobs may finish before they are killed and "
             "released (default: 30).")] = None,
    poll_wait_s: Annotated[str | None, typer.Option(
        "--poll-wait-s", envvar="AGENT_POLL_WAIT_S", metavar="SECONDS", show_envvar=True,
        help="How long the server holds one claim open, 1 to 60 (default: 25).")] = None,
    log_spool_mb: Annotated[str | None, typer.Option(
        "--log-spool-mb", envvar="AGENT_LOG_SPOOL_MB", metavar="MB", show_envvar=True,
        help="While the server is out of reach, each job's log waits on disk in the work "
             "directory up to this much; past it output is dropped with a marker "
             "(default: 64).")] = None,
    exit_after_jobs: Annotated[str | None, typer.Option(
        "--exit-after-jobs", envvar="AGENT_EXIT_AFTER_JOBS", metavar="N", show_envvar=True,
        help="Ephemeral: after N jobs, claim no more, finish them, say goodbye and exit 0.")
    ] = None,
    exit_after_idle_s: Annotated[str | None, typer.Option(
        "--exit-after-idle-s", envvar="AGENT_EXIT_AFTER_IDLE_S", metavar="SECONDS",
        show_envvar=True,
        help="Ephemeral: after this long with no job to run, say goodbye and exit 0.")
    ] = None,
    redact_vars: Annotated[str | None, typer.Option(
        "--redact-vars", envvar="AGENT_REDACT_VARS", metavar="PATTERNS", show_envvar=True,
        help="The agent's own variables whose values are redacted from jobs' logs and "
             "results, comma-separated wildcards (default: *_TOKEN,*_SECRET,*_PASSWORD,"
             "*_KEY,*_PRIVATE_KEY; none: none).")] = None,
    verify_keys: Annotated[str | None, typer.Option(
        "--verify-keys", envvar="AGENT_VERIFY_KEYS", metavar="PATH", show_envvar=True,
        help="A file of trusted public keys ('key_id key' per line): every job's signature "
             "is checked against them before it runs (docs/signing.md).")] = None,
    verify: Annotated[str | None, typer.Option(
        "--verify", envvar="AGENT_VERIFY", metavar="MODE", show_envvar=True,
        help="block (the default with keys): a job that does not verify fails unrun; "
             "warn: it runs, with a warning in its log.")] = None,
    allow_languages: Annotated[str | None, typer.Option(
        "--allow-languages", envvar="AGENT_ALLOW_LANGUAGES", metavar="LIST", show_envvar=True,
        help="Run only jobs of these languages, comma-separated (default: any).")] = None,
    allow_workspaces: Annotated[str | None, typer.Option(
        "--allow-workspaces", envvar="AGENT_ALLOW_WORKSPACES", metavar="LIST",
        show_envvar=True, help="Run only jobs of these workspaces (default: any).")] = None,
    allow_scripts: Annotated[str | None, typer.Option(
        "--allow-scripts", envvar="AGENT_ALLOW_SCRIPTS", metavar="GLOBS", show_envvar=True,
        help="Run only scripts whose path matches one of these globs, e.g. 'f/deploy/*' "
             "(default: any; inline jobs then need --allow-inline).")] = None,
    allow_inline: Annotated[str | None, typer.Option(
        "--allow-inline", envvar="AGENT_ALLOW_INLINE", metavar="BOOL", show_envvar=True,
        help="Run inline jobs (no deployed script): default true, false with "
             "--allow-scripts.")] = None,
    pre_job_hook: Annotated[str | None, typer.Option(
        "--pre-job-hook", envvar="AGENT_PRE_JOB_HOOK", metavar="PATH", show_envvar=True,
        help="An executable run before each job with its metadata as JSON on stdin; a "
             "non-zero exit refuses the job (its first output line says why).")] = None,
    pre_job_hook_timeout_s: Annotated[str | None, typer.Option(
        "--pre-job-hook-timeout-s", envvar="AGENT_PRE_JOB_HOOK_TIMEOUT_S", metavar="SECONDS",
        show_envvar=True, help="A hook still running after this refuses (default: 60).")
    ] = None,
    ca_file: Annotated[str | None, typer.Option(
        "--ca-file", envvar="AGENT_CA_FILE", metavar="PATH", show_envvar=True,
        help="CA bundle trusted to verify the server, besides the operating system's trust "
             "store and SSL_CERT_FILE.")
    ] = None,
    allow_insecure: Annotated[str | None, typer.Option(
        "--allow-insecure", envvar="AGENT_ALLOW_INSECURE", metavar="BOOL", show_envvar=True,
        help="true: allow plain http to a host that is neither loopback nor private "
             "(default: false, refused).")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    from tagrun.agent.config import load_config
    from tagrun.agent.errors import ConfigError
    from tagrun.agent.logs import LogConfigError, configure_logging
    from tagrun.agent.secrecy import take_token

    handed = take_token()  # set when hide_token re-executed this process

    try:
        configure_logging()
    except LogConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    values = {
        "MODE": os.environ.get("MODE"),
        # click reads an empty variable as unset; an empty token must still be refused as such.
        "AGENT_TOKEN": handed if handed is not None
        else os.environ.get("AGENT_TOKEN") if token is None else token,
        "AGENT_TOKEN_FILE": token_file,
        "BASE_INTERNAL_URL": base_url, "INIT_SCRIPT": init_script, "AGENT_NAME": name,
        "INIT_SCRIPT_LANGUAGE": init_script_language, "AGENT_BASH": bash,
        "AGENT_SLOTS": slots, "AGENT_WORK_DIR": work_dir, "AGENT_PYTHON": python,
        "AGENT_JOB_USER": job_user,
        "AGENT_DRAIN_TIMEOUT_S": drain_timeout_s, "AGENT_POLL_WAIT_S": poll_wait_s,
        "AGENT_LOG_SPOOL_MB": log_spool_mb, "AGENT_CA_FILE": ca_file,
        "AGENT_ALLOW_INSECURE": allow_insecure, "AGENT_EXIT_AFTER_JOBS": exit_after_jobs,
        "AGENT_EXIT_AFTER_IDLE_S": exit_after_idle_s, "AGENT_REDACT_VARS": redact_vars,
        "AGENT_VERIFY_KEYS": verify_keys, "AGENT_VERIFY": verify,
        "AGENT_ALLOW_LANGUAGES": allow_languages, "AGENT_ALLOW_WORKSPACES": allow_workspaces,
        "AGENT_ALLOW_SCRIPTS": allow_scripts, "AGENT_ALLOW_INLINE": allow_inline,
        "AGENT_PRE_JOB_HOOK": pre_job_hook,
        "AGENT_PRE_JOB_HOOK_TIMEOUT_S": pre_job_hook_timeout_s,
    }
    try:
        config = load_config(values)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(_run(config))


def _run(config: AgentConfig) -> int:
    import asyncio

    from tagrun.agent.runner import run_agent
    from tagrun.agent.secrecy import forbid_inspection

    forbid_inspection()
    if not config.tracing:
        return asyncio.run(run_agent(config))
    from tagrun.shared import tracing  # the SDK and exporter load only now

    tracing.setup("tagrun-agent")
    try:
        return asyncio.run(run_agent(config))
    finally:
        tracing.shutdown()  # the spans still waiting are sent


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == [PYTHON_FLAG] or runs_python(args):  # a Python job, or what one started
        sys.exit(run_python(args))  # with sys.executable (frozen only): see frozen.py
    from tagrun.agent.secrecy import hide_token

    app(args=hide_token(args), prog_name="tagrun-agent")
