"""The CLI's client commands' plumbing: their connection to the server (`tagrun.client`, with
`TAGRUN_URL` and `TAGRUN_TOKEN`), failing readably, and reading their inputs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer

import tagrun.client as api
from tagrun.server.config import SUPERADMIN_TOKEN_FILE, default_data_dir

# Long enough for the answers the server holds open (job waits: wait_s up to 60).
TIMEOUT = httpx.Timeout(30.0, read=90.0)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _token() -> str:
    token = os.environ.get("TAGRUN_TOKEN", "").strip()
    if token:
        return token
    data_dir = Path(os.environ.get("TAGRUN_DATA_DIR") or default_data_dir())
    path = data_dir / SUPERADMIN_TOKEN_FILE
    try:
        return path.read_text().strip()
    except OSError:
        fail(f"no token: set TAGRUN_TOKEN, or start the server once so that {path} exists")


class Client:
    """The CLI's side of `tagrun.client`: API paths in, JSON out, and every error a `fail`
    saying what went wrong. The token falls back to the local superadmin token file."""

    def __init__(self) -> None:
        # TAGRUN_TOKEN is the library's to read (its errors name it); the token file the CLI's.
        token = None if os.environ.get("TAGRUN_TOKEN", "").strip() else _token()
        try:
            # The commands name the workspace in their paths (--workspace): none is read here.
            self._api = api.Client(token=token, workspace="default", timeout=TIMEOUT)
        except api.ConfigError as exc:
            fail(str(exc))
        self.base_url = self._api.url

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        try:
            return self._api.request(method, path, params=params, json=json, headers=headers)
        except api.TagrunError as exc:
            self._fail(exc)

    def get_optional(self, path: str) -> Any:
        """GET `path`; None when it is not there (404)."""
        try:
            return self._api.request("GET", path)
        except api.NotFound:
            return None
        except api.TagrunError as exc:
            self._fail(exc)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, headers=headers)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    @staticmethod
    def _fail(exc: api.TagrunError) -> NoReturn:
        if isinstance(exc, api.TransportError):
            fail(f"{exc}; is it running? (TAGRUN_URL)")
        if isinstance(exc, api.APIError) and exc.code is not None:
            fail(f"{exc.message} ({exc.status} {exc.code})")
        fail(str(exc))


def read_content(value: str | None, file: Path | None) -> str:
    if file is not None:
        try:
            return file.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
    if value is None:
        fail("give the code with --content or --file")
    return value


def parse_args(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"--args is not valid JSON: {exc}")
    if not isinstance(value, dict):
        fail("--args must be a JSON object, e.g. '{\"name\": \"x\"}'")
    return value


def is_tty() -> bool:
    return sys.stderr.isatty()
