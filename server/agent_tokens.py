"""Agent tokens: JWTs minted by the superadmin, carrying the tags an agent may run.

HS256 with a 32-byte secret kept in the database, so every replica verifies every token.
Verification pins the algorithm and requires exp, aud, iss, jti. Revoked jtis are re-read by
each process every `REFRESH_S` (one query per process, not per agent), so a revocation is
effective everywhere within that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import jwt

from tagrun.server.errors import InvalidInput, Unauthorized
from tagrun.server.store import DATABASE_ERRORS, Store
from tagrun.server.tags import TagError, validate_tag

log = logging.getLogger("tagrun.agent_tokens")

ISSUER = "tagrun"
AUDIENCE = "tagrun-agent"
ALGORITHMS = ["HS256"]
SECRET_NAME = "agent_jwt_hs256"
REFRESH_S = 2.0
VERIFIED_KEPT = 50_000  # tokens remembered as verified (10,000 agents' are well within)


@dataclass(frozen=True)
class AgentIdentity:
    jti: str
    group: str
    tags: tuple[str, ...]
    # Who holds a lease this caller claims: the token, and the agent process's session when
    # it sent one (two agents sharing a token are two holders). See `holder_key`.
    key: str = ""
    # A job-limited token: the jobs it may claim in total (token_budget.py); None: unlimited.
    max_jobs: int | None = None


SESSION_HEADER = "tagrun-agent-session"
FEATURES_HEADER = "tagrun-agent-features"  # what the agent can do: "ack" (routes/agents.claim)
SESSION = re.compile(r"[A-Za-z0-9_-]{16,128}")


def holder_key(jti: str, session: str | None) -> str:
    """The key a lease records for its holder: the jti, and a digest of the agent's session
    (never the session itself: it is a secret of the agent process)."""
    if not session:
        return jti
    if not SESSION.fullmatch(session):
        raise InvalidInput(f"header {SESSION_HEADER} must be 16-128 letters, digits, '-' or '_'")
    return f"{jti}:{hashlib.sha256(session.encode()).hexdigest()[:32]}"


def jti_of(key: str) -> str:
    return key.partition(":")[0]


class AgentTokens:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._secret = b""
        # Tokens already verified: (identity, expiry as a Unix time).
        self._verified: dict[str, tuple[AgentIdentity, float]] = {}
        self._revoked: set[str] = set()
        self._on_revoked: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._secret = await self.store.secret(SECRET_NAME)
        self._revoked = await self.store.revoked_jtis()
        self._task = asyncio.create_task(self._refresh_loop(), name="agent-token-revocations")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on_revoked(self, callback: Callable[[str], None]) -> None:
        self._on_revoked.append(callback)

    async def mint(
        self, group: str, tags: list[str], expires_in_s: int, label: str,
        max_jobs: int | None = None,
    ) -> dict[str, Any]:
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + timedelta(seconds=expires_in_s)
        jti = uuid.uuid4().hex
        claims = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": f"agent-group:{group}", "jti": jti,
            "iat": now, "exp": expires_at, "group": group, "tags": tags,
        }
        if max_jobs is not None:  # in the token: a claim knows it without a query
            claims["max_jobs"] = max_jobs
        await self.store.create_agent_token(jti, group, tags, label, expires_at, max_jobs)
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHMS[0])
        return {"token": token, "jti": jti, "group": group, "tags": tags, "label": label,
                "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
                "max_jobs": max_jobs}

    async def revoke(self, jti: str) -> None:
        await self.store.revoke_agent_token(jti)
        self._revoked_now({jti})

    def verify(self, token: str) -> AgentIdentity:
        """The identity a valid, unrevoked token carries; Unauthorized otherwise. A token
        seen before is not decoded again (an agent sends the same one with every request):
        its expiry and revocation are still checked each time."""
        known = self._verified.get(token)
        if known is not None:
            identity, expires = known
            if time.time() >= expires:
                raise Unauthorized("agent token expired")
            if identity.jti in self._revoked:
                raise Unauthorized("agent token revoked")
            return identity
        identity, expires = self._decode(token)
        if len(self._verified) >= VERIFIED_KEPT:
            self._verified.clear()  # a new start, rather than a cache that only grows
        self._verified[token] = identity, expires
        return identity

    def _decode(self, token: str) -> tuple[AgentIdentity, float]:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=ALGORITHMS, audience=AUDIENCE, issuer=ISSUER,
                options={"require": ["exp", "iat", "aud", "iss", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("agent token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("not a valid agent token") from None
        jti, group, tags = claims.get("jti"), claims.get("group"), claims.get("tags")
        if not isinstance(jti, str) or not isinstance(group, str) or not _valid_tags(tags):
            raise Unauthorized("agent token lacks a valid jti, group or tags claim")
        if jti in self._revoked:
            raise Unauthorized("agent token revoked")
        max_jobs = claims.get("max_jobs")
        if max_jobs is not None and (type(max_jobs) is not int or max_jobs < 1):
            raise Unauthorized("agent token has an invalid max_jobs claim")
        return AgentIdentity(jti=jti, group=group, tags=tuple(cast(list[str], tags)), key=jti,
                             max_jobs=max_jobs), float(claims["exp"])

    def _revoked_now(self, jtis: set[str]) -> None:
        fresh = jtis - self._revoked
        self._revoked |= jtis
        for jti in fresh:
            log.info("agent_token.revoked", extra={"jti": jti})
            for callback in self._on_revoked:
                callback(jti)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                revoked = await self.store.revoked_jtis()
            except DATABASE_ERRORS as exc:
                log.warning("agent_token.refresh_failed", extra={"error": str(exc)})
                continue
            self._revoked_now(revoked)
            self._revoked = revoked  # expired tokens drop out: verification refuses them anyway


def _valid_tags(tags: object) -> bool:
    if not isinstance(tags, list) or not tags:
        return False
    try:
        for tag in tags:
            if not isinstance(tag, str):
                return False
            validate_tag(tag)
    except TagError:
        return False
    return True
