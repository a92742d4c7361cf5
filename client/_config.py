"""Where a client connects and as whom: arguments first, then TAGRUN_URL, TAGRUN_TOKEN and
TAGRUN_WORKSPACE. A bad value is refused at once, naming where it came from."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import httpx

from tagrun.client._errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_WORKSPACE = "default"
# Long polls add their wait to the read timeout (see _calls.timeout_for).
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
WORKSPACE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class Settings:
    url: str
    token: str = field(repr=False)
    workspace: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def settings(url: str | None, token: str | None, workspace: str | None) -> Settings:
    return Settings(url=_url(url), token=_token(token), workspace=_workspace(workspace))


def _given(value: str | None, argument: str, variable: str) -> tuple[str, str]:
    """The value and how to name its source in an error: the argument, else the variable."""
    if value is not None:
        return value.strip(), argument
    return os.environ.get(variable, "").strip(), variable


def _url(value: str | None) -> str:
    url, source = _given(value, "url", "TAGRUN_URL")
    url = (url or DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{source}={url!r} must start with http:// or https://, "
                          f"e.g. {DEFAULT_URL}")
    return url


def _token(value: str | None) -> str:
    token, source = _given(value, "token", "TAGRUN_TOKEN")
    if not token:
        raise ConfigError("no token: pass token= or set TAGRUN_TOKEN (a local server's superadmin "
                          "token is the file superadmin.token in its data directory)")
    if not token.isprintable() or any(c.isspace() for c in token):
        # Never echoed: a token is a credential, even a malformed one.
        raise ConfigError(f"{source} holds spaces or control characters; a tagrun token has none")
    return token


def _workspace(value: str | None) -> str:
    workspace, source = _given(value, "workspace", "TAGRUN_WORKSPACE")
    workspace = workspace or DEFAULT_WORKSPACE
    if not WORKSPACE.fullmatch(workspace):
        raise ConfigError(f"{source}={workspace!r} is not a workspace id: lower-case letters, "
                          f"digits and -, at most 63, like {DEFAULT_WORKSPACE!r}")
    return workspace
