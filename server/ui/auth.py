"""The API's authenticator, also accepting a web UI session in place of a bearer token.

Bearer tokens work exactly as before and win when both are sent. A request that carries no
`Authorization` header but a session cookie acts as the session's principal, so the UI's
JavaScript calls the same JSON API (and the same permission checks) as every other client.
The cookie is `SameSite=Strict`, and any request that changes state must also send the
session's CSRF token in `X-CSRF-Token`, which a page of another site can neither read nor set.
"""

from __future__ import annotations

from starlette.requests import Request

from tagrun.server.auth import Authenticator
from tagrun.server.errors import Forbidden, Unauthorized
from tagrun.server.store import Principal, Store
from tagrun.server.ui.session import SESSION_COOKIE, Session, Sessions

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"


class SessionAuthenticator(Authenticator):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.sessions = Sessions(store)

    async def principal(self, request: Request) -> Principal:
        if "authorization" in request.headers or SESSION_COOKIE not in request.cookies:
            return await super().principal(request)
        session = await self.session(request)
        if request.method not in SAFE_METHODS and not await self.sessions.csrf_ok(
                session, request.headers.get(CSRF_HEADER, "")):
            raise Forbidden("missing or wrong CSRF token; reload the page", code="csrf")
        return session.principal

    async def session(self, request: Request) -> Session:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        session = await self.sessions.verify(cookie) if cookie else None
        if session is None:
            raise Unauthorized("not signed in, or the session has ended")
        return session

    def forget(self, token_id: int) -> None:
        super().forget(token_id)
        self.sessions.forget_token(token_id)


def session_authenticator(request: Request) -> SessionAuthenticator:
    auth = request.app.state.auth
    assert isinstance(auth, SessionAuthenticator)
    return auth
