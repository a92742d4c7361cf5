from __future__ import annotations

import subprocess
import sys

# The agent ships alone (one small executable): no server code, no database driver, no ASGI.
CHECK = (
    "import tagrun.agent.cli, sys; "
    "bad=[m for m in sys.modules if m.split('.')[0] in ('asyncpg','starlette') "
    "or m.startswith('tagrun.server')]; print(bad)"
)
EVERY_MODULE = (
    "import sys, tagrun.agent.cli, tagrun.agent.runner, tagrun.agent.client, tagrun.agent.jobs, "
    "tagrun.agent.config, tagrun.agent.errors, tagrun.agent.logs, tagrun.agent.signals, "
    "tagrun.agent.frozen; "
)


def imported_forbidden(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


def test_the_agent_cli_imports_no_server_code() -> None:
    assert imported_forbidden(CHECK) == "[]"


def test_no_agent_module_imports_server_code() -> None:
    # cli imports the runtime lazily, so import every module of the package explicitly too.
    assert imported_forbidden(EVERY_MODULE + CHECK.split("; ", 1)[1]) == "[]"
