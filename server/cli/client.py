"""The HTTP client behind the CLI's client commands (`TAGRUN_URL`, `TAGRUN_TOKEN`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer

from tagrun.server.config import SUPERADMIN_TOKEN_FILE, default_data_dir

DEFAULT_URL = "http://127.0.0.1:8000"


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
    def __init__(self) -> None:
        self.base_url = (os.environ.get("TAGRUN_URL", "").strip() or DEFAULT_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            fail(f"TAGRUN_URL={self.base_url!r} must start with http:// or https://, "
                 f"e.g. {DEFAULT_URL}")
        self._http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {_token()}"},
            timeout=httpx.Timeout(30.0, read=90.0),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            fail(f"cannot reach the tagrun server at {self.base_url} ({exc.__class__.__name__}); "
                 "is it running? (TAGRUN_URL)")
        return self._answer(response, method, path)

    @staticmethod
    def _answer(response: httpx.Response, method: str, path: str) -> Any:
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
            fail(f"{error['message']} ({response.status_code} {error['code']})")
        except (ValueError, KeyError, TypeError):
            fail(f"{response.status_code} from {method} {path}: {response.text[:200]}")

    def get_optional(self, path: str) -> Any:
        """GET `path`; None when it is not there (404)."""
        try:
            response = self._http.get(path)
        except httpx.TransportError:
            return self.get(path)  # says why, and exits
        return None if response.status_code == 404 else self._answer(response, "GET", path)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, headers=headers)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)[:60]
    return str(value)


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
