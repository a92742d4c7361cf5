"""Web UI sessions: a signed cookie naming the token it was made from, and CSRF tokens.

The cookie is `base64url(payload) "." base64url(mac)`: the payload says who (principal kind,
workspace, token id), until when, and a random session id; the MAC is HMAC-SHA256 with a
secret kept in the database (so every replica accepts every cookie) over the payload and
the stored hash of the token. It never carries the token or its hash, yet a session stops
working as soon as its token is revoked, expires or is replaced (a new superadmin token
keeps its row but changes the hash), because each check reads the token row by id. A
signed-out session id is recorded until its expiry, so a copy of the cookie dies with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from tagrun.server.store import Principal, Store

SESSION_COOKIE = "tagrun_session"
SIGNIN_COOKIE = "tagrun_signin"
SECRET_NAME = "ui_session"
SESSION_TTL_S = 12 * 3600
_CACHE_TTL_S = 2.0  # like bearer tokens: a revocation is seen within this on every replica


@dataclass(frozen=True)
class Session:
    principal: Principal
    sid: str
    expires_at: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _payload(session: Session) -> str:
    p = session.principal
    body = {"v": 1, "k": p.kind, "w": p.workspace, "t": p.token_id, "e": session.expires_at,
            "s": session.sid}
    return _b64(json.dumps(body, separators=(",", ":")).encode())


def _parse(payload: str) -> Session | None:
    try:
        body = json.loads(_unb64(payload))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(body, dict) or body.get("v") != 1:
        return None
    kind, workspace, token_id = body.get("k"), body.get("w"), body.get("t")
    expires_at, sid = body.get("e"), body.get("s")
    if (kind not in ("superadmin", "workspace") or not isinstance(token_id, int)
            or not isinstance(expires_at, int) or not isinstance(sid, str)
            or not (workspace is None or isinstance(workspace, str))):
        return None
    return Session(Principal(kind, workspace, token_id), sid, expires_at)


class Sessions:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._key = b""
        self._cache: dict[str, tuple[float, Session | None]] = {}

    async def key(self) -> bytes:
        if not self._key:
            self._key = await self.store.secret(SECRET_NAME)
        return self._key

    def _mac(self, key: bytes, payload: str, token_hash: bytes) -> str:
        message = b"tagrun-ui-session\x00" + payload.encode() + b"\x00" + token_hash
        return _b64(hmac.new(key, message, hashlib.sha256).digest())

    async def issue(self, principal: Principal, token_hash: bytes) -> tuple[str, Session]:
        """A new session for a principal whose token hashes to `token_hash`."""
        session = Session(principal, secrets.token_urlsafe(16), int(time.time()) + SESSION_TTL_S)
        payload = _payload(session)
        return f"{payload}.{self._mac(await self.key(), payload, token_hash)}", session

    async def verify(self, cookie: str) -> Session | None:
        now = time.monotonic()
        cached = self._cache.get(cookie)
        if cached is None or cached[0] < now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = (now + _CACHE_TTL_S, await self._verify(cookie))
            self._cache[cookie] = cached
        session = cached[1]
        if session is not None and session.expires_at <= time.time():
            return None
        return session

    async def _verify(self, cookie: str) -> Session | None:
        payload, _, mac = cookie.partition(".")
        session = _parse(payload) if len(cookie) <= 1024 else None
        if session is None or session.expires_at <= time.time():
            return None
        row = await self.store.session_token(session.principal.token_id, session.sid)
        if row is None or row.ended:
            return None
        expected = self._mac(await self.key(), payload, row.token_hash)
        if not hmac.compare_digest(expected, mac):
            return None
        if (row.kind, row.workspace) != (session.principal.kind, session.principal.workspace):
            return None
        return session

    async def end(self, cookie: str, session: Session) -> None:
        await self.store.end_session(session.sid,
                                     datetime.fromtimestamp(session.expires_at, UTC))
        self._cache[cookie] = (time.monotonic() + SESSION_TTL_S, None)

    def forget_token(self, token_id: int) -> None:
        for cookie, (_, session) in list(self._cache.items()):
            if session is not None and session.principal.token_id == token_id:
                del self._cache[cookie]

    async def csrf_token(self, session: Session) -> str:
        return await self._derive(b"csrf", session.sid)

    async def csrf_ok(self, session: Session, given: str) -> bool:
        return bool(given) and hmac.compare_digest(await self.csrf_token(session), given)

    async def signin_csrf(self, nonce: str) -> str:
        """The sign-in form's CSRF token, bound to a nonce cookie (there is no session yet)."""
        return await self._derive(b"signin", nonce)

    async def csrf_ok_for_signin(self, nonce: str, given: str) -> bool:
        return bool(given) and hmac.compare_digest(await self.signin_csrf(nonce), given)

    async def _derive(self, purpose: bytes, value: str) -> str:
        message = b"tagrun-ui-" + purpose + b"\x00" + value.encode()
        return _b64(hmac.new(await self.key(), message, hashlib.sha256).digest())
