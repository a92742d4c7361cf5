"""Jinja2 rendering for the web UI: one autoescaping environment, filters, and page chrome."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from tagrun.server.store import Store
from tagrun.server.ui.auth import session_authenticator
from tagrun.server.ui.session import Session
from tagrun.shared.version import __version__

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
MAX_WORKSPACES_LISTED = 200


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
    return f"{seconds // 86400:.0f} d {seconds % 86400 // 3600:.0f} h"


def ago(value: str | None) -> str:
    moment = _parse(value)
    if moment is None:
        return "—"
    delta = (datetime.now(UTC) - moment).total_seconds()
    if abs(delta) < 1:
        return "just now"
    short = _rounded(abs(delta))
    return f"{short} ago" if delta > 0 else f"in {short}"


def _rounded(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{round(seconds / size)} {unit}"
    return f"{round(seconds)} s"


def when(value: str | None) -> str:
    moment = _parse(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def duration(start: str | None, end: str | None) -> str:
    begin = _parse(start)
    if begin is None:
        return "—"
    finish = _parse(end) or datetime.now(UTC)
    return _span((finish - begin).total_seconds())


def seconds(value: float) -> str:
    """A wait in seconds, as people read it: 12 ms, 3.4 s, 5 min 3 s."""
    return _span(value)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@cache
def _static_version(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def static(name: str) -> str:
    return f"/static/{name}?v={_static_version(name)}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # everything a user or a job wrote is text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=ago, when=when, duration=duration, pretty=pretty, seconds=seconds)
    env.globals.update(static=static, version=__version__)
    return env


ENV = _environment()


async def workspaces_for(store: Store, session: Session) -> list[str]:
    if session.principal.kind != "superadmin":
        return [session.principal.workspace or "default"]
    return [w["id"] for w in await store.list_workspaces()][:MAX_WORKSPACES_LISTED]


def home_workspace(session: Session) -> str:
    return session.principal.workspace or "default"


async def page(request: Request, session: Session | None, template: str,
               context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
    chrome: dict[str, Any] = {"request": request, "session": session, "csrf": "",
                              "workspaces": [], "superadmin": False, "nav": "",
                              "workspace": context.get("workspace")}
    if session is not None:
        store: Store = request.app.state.store
        chrome.update(
            csrf=await session_authenticator(request).sessions.csrf_token(session),
            workspaces=await workspaces_for(store, session),
            superadmin=session.principal.kind == "superadmin",
        )
        chrome["workspace"] = context.get("workspace") or home_workspace(session)
    html = ENV.get_template(template).render({**chrome, **context})
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
