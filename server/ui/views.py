"""What every UI page shares: the session it needs, HTML errors, and links that page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tagrun.server.errors import TagrunError, Unauthorized
from tagrun.server.ui.auth import session_authenticator
from tagrun.server.ui.render import page
from tagrun.server.ui.session import Session
from tagrun.server.ui.signin import signin_url

Handler = Callable[[Request, Session], Awaitable[Response]]

_TITLES = {400: "Invalid request", 403: "Not allowed", 404: "Not found", 409: "Conflict"}


def ui_page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in user: others go to the sign-in page, errors render as HTML."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            session = await session_authenticator(request).session(request)
        except Unauthorized:
            return RedirectResponse(signin_url(request), status_code=303)
        try:
            return await handler(request, session)
        except Unauthorized:
            return RedirectResponse(signin_url(request), status_code=303)
        except TagrunError as exc:
            return await page(request, session, "error.html", {
                "status": exc.status, "title": _TITLES.get(exc.status, "Error"),
                "message": exc.message}, status=exc.status)

    return endpoint


def with_query(request: Request, **changes: str | int | None) -> str:
    """This page's URL with some query parameters changed (None removes one)."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = str(value)
    query = urlencode(params)
    return request.url.path + (f"?{query}" if query else "")
