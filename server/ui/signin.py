"""Signing in with a token (superadmin or workspace) and signing out."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tagrun.server.errors import Unauthorized
from tagrun.server.store import Store, hash_token
from tagrun.server.ui.auth import session_authenticator
from tagrun.server.ui.render import home_workspace, page
from tagrun.server.ui.security import is_ui_path
from tagrun.server.ui.session import SESSION_COOKIE, SESSION_TTL_S, SIGNIN_COOKIE, Session

log = logging.getLogger("tagrun.ui")
MAX_FORM_BYTES = 16 * 1024


def home(session: Session) -> str:
    if session.principal.kind == "superadmin":
        return "/workers"
    return f"/w/{home_workspace(session)}/jobs"


def safe_next(value: str | None) -> str | None:
    """Only a path of this UI: never another site (`//host`, `/\\host`) or the API."""
    if (not value or not value.startswith("/") or value.startswith(("//", "/\\"))
            or not value.isprintable() or not is_ui_path(value) or value.startswith("/sign")):
        return None
    return value


def signin_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/signin?next=" + quote(target, safe="")


async def read_form(request: Request) -> dict[str, str]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def _form_page(request: Request, nonce: str, *, error: str = "", next_url: str = "",
                     status: int = 200) -> Response:
    sessions = session_authenticator(request).sessions
    response = await page(request, None, "signin.html", {
        "signin_csrf": await sessions.signin_csrf(nonce), "error": error, "next": next_url,
    }, status=status)
    response.set_cookie(SIGNIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                        secure=_secure(request), path="/signin")
    return response


async def signin_form(request: Request) -> Response:
    next_url = safe_next(request.query_params.get("next")) or ""
    try:
        session = await session_authenticator(request).session(request)
    except Unauthorized:
        nonce = request.cookies.get(SIGNIN_COOKIE, "")
        if not (16 <= len(nonce) <= 64 and nonce.replace("-", "").replace("_", "").isalnum()):
            nonce = secrets.token_urlsafe(24)
        return await _form_page(request, nonce, next_url=next_url)
    return RedirectResponse(next_url or home(session), status_code=303)


async def signin(request: Request) -> Response:
    auth = session_authenticator(request)
    form = await read_form(request)
    nonce = request.cookies.get(SIGNIN_COOKIE, "")
    next_url = safe_next(form.get("next")) or ""
    fresh = secrets.token_urlsafe(24)
    if not nonce or not await auth.sessions.csrf_ok_for_signin(nonce, form.get("csrf", "")):
        return await _form_page(request, fresh, next_url=next_url, status=403,
                                error="The form expired or cookies are blocked: try again.")
    token = form.get("token", "").strip()
    store: Store = request.app.state.store
    principal = await store.find_principal(token) if token else None
    if principal is None:
        log.info("ui.signin_refused", extra={"ip": request.client.host if request.client
                                             else None})
        return await _form_page(request, fresh, next_url=next_url, status=401,
                                error="That token is not recognised, has expired or was revoked.")
    if principal.kind == "autoscale":  # it reads GET /api/autoscale and nothing else
        return await _form_page(request, fresh, next_url=next_url, status=403,
                                error="An autoscale token cannot sign in: it reads "
                                      "/api/autoscale only.")
    cookie, session = await auth.sessions.issue(principal, hash_token(token))
    log.info("ui.signed_in", extra={"kind": principal.kind, "workspace": principal.workspace,
                                    "token_id": principal.token_id})
    response = RedirectResponse(next_url or home(session), status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_TTL_S, httponly=True,
                        samesite="strict", secure=_secure(request), path="/")
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


async def signout(request: Request) -> Response:
    auth = session_authenticator(request)
    form = await read_form(request)
    response = RedirectResponse("/signin", status_code=303)
    try:
        session = await auth.session(request)
    except Unauthorized:
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    if not await auth.sessions.csrf_ok(session, form.get("csrf", "")):
        return await page(request, session, "error.html", {
            "status": 403, "title": "Not signed out",
            "message": "The form expired: reload the page and sign out again."}, status=403)
    await auth.sessions.end(request.cookies[SESSION_COOKIE], session)
    log.info("ui.signed_out", extra={"kind": session.principal.kind,
                                     "token_id": session.principal.token_id})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def root(request: Request) -> Response:
    try:
        session = await session_authenticator(request).session(request)
    except Unauthorized:
        return RedirectResponse("/signin", status_code=303)
    return RedirectResponse(home(session), status_code=303)


routes = [
    Route("/", root, methods=["GET"]),
    Route("/signin", signin_form, methods=["GET"]),
    Route("/signin", signin, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
]
