"""Jobs' secrets: set and listed by users, checked at submit, opened at claim for the one
holder of the lease. Values exist in clear only in this process's memory on their way to a
holder, and in the redactors that keep them out of what a job writes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, NamedTuple

import msgspec

from tagrun.server.errors import Conflict, InvalidInput, NotFound
from tagrun.server.store import ClaimedRow, Store
from tagrun.server.store._base import iso
from tagrun.server.store.secrets import Sealed, SecretInfo
from tagrun.server.vault import (
    KEY_VAR,
    KeyRing,
    SecretUnreadable,
    new_key,
    read_key_file,
    write_key_file,
)
from tagrun.shared.redact import MIN_SECRET_CHARS, Redactor

log = logging.getLogger("tagrun.events")

NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,63}\Z"
SecretName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
MAX_VALUE_BYTES = 64 * 1024
# A job's own identity variables (TAGRUN_JOB_ID, ...) must stay what the holder set.
RESERVED_PREFIX = "TAGRUN_"
EXISTS_TTL_S = 5.0  # how long "the database holds no secret" is believed
OLD_AGENT = "the agent that claimed the job does not redact secrets (an older tagrun-agent)"


class ScopeIn(msgspec.Struct, forbid_unknown_fields=True):
    """Which tags' jobs may use a secret (null: any), its value unchanged."""

    allowed_tags: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=255)]],
                            msgspec.Meta(max_length=100)] | None


class Opened(NamedTuple):
    """A claimed job's secrets: the values its holder gets, and those withheld (why)."""

    values: dict[str, str]
    withheld: dict[str, str]


class SecretIn(msgspec.Struct, forbid_unknown_fields=True):
    value: str
    allowed_tags: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=255)]],
                            msgspec.Meta(max_length=100)] | None = None


class SecretsUnavailable(Conflict):
    code = "secrets_key_missing"


def check_name(name: str) -> str:
    if not re.match(NAME_PATTERN, name):
        raise InvalidInput(
            f"secret name {name!r} is not allowed: use capitals, digits and _, starting with a "
            f"capital or _, at most 64 characters (like DB_PASSWORD)", code="invalid_secret_name")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidInput(f"secret name {name!r} is reserved: names starting with "
                           f"{RESERVED_PREFIX} are tagrun's own", code="invalid_secret_name")
    return name


def check_value(name: str, value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise InvalidInput(f"secret {name}'s value is over {MAX_VALUE_BYTES} bytes",
                           code="secret_too_large")
    if len(value) < MIN_SECRET_CHARS:
        raise InvalidInput(
            f"secret {name}'s value is shorter than {MIN_SECRET_CHARS} characters: so short a "
            f"value cannot be redacted from logs without hiding ordinary text",
            code="secret_too_short")
    if "\0" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidInput(f"secret {name}'s value holds a NUL or an unpaired surrogate, "
                           f"which no environment variable can carry", code="invalid_secret")
    return value


def check_use(names: Sequence[str], scopes: Mapping[str, list[str] | None], workspace: str,
              tag: str | None) -> None:
    """At deploy (tag None) or submit: every name exists, and a job of `tag` may use it.
    `scopes`: the `allowed_tags` of each existing secret among `names`."""
    missing = [n for n in names if n not in scopes]
    if missing:
        raise InvalidInput(f"no secret {', '.join(missing)} in workspace {workspace!r}",
                           code="unknown_secret")
    if tag is None:
        return
    for name in names:
        allowed = scopes[name]
        if allowed is not None and tag not in allowed:
            raise InvalidInput(
                f"secret {name} may not be used by jobs of tag {tag!r}: it is allowed for "
                f"tag {', '.join(allowed) or '(none)'} only", code="secret_not_allowed")


def author(kind: str, token_id: int) -> str:
    """Who set a secret, as the listing shows it: never a token, only which one."""
    return "superadmin" if kind == "superadmin" else f"token {token_id}"


def info_view(info: SecretInfo) -> dict[str, object]:
    return {"name": info.name, "allowed_tags": info.allowed_tags,
            "created_at": _iso(info.created_at), "created_by": info.created_by,
            "updated_at": _iso(info.updated_at), "updated_by": info.updated_by}


def _iso(value: datetime) -> str:
    return iso(value) or ""


class SecretBox:
    """The secrets of every workspace, through this process's key ring (None: no key)."""

    def __init__(self, store: Store, keys: KeyRing | None) -> None:
        self.store = store
        self.keys = keys
        # Per job: the redactor of the secrets it was given (defence in depth at ingest).
        self._redactors: OrderedDict[int, Redactor | None] = OrderedDict()
        self._any, self._any_checked_at = True, float("-inf")

    def _ring(self) -> KeyRing:
        if self.keys is None:
            raise SecretsUnavailable(
                f"this server has no secrets key: set {KEY_VAR} (the same on every replica) to "
                f"store secrets")
        return self.keys

    async def check_keys(self) -> None:
        """At start: every stored secret must open with this process's keys, or the start
        is refused (never run jobs with secrets that would not decrypt)."""
        uses = await self.store.secret_key_uses()
        if not uses:
            return
        if self.keys is None:
            raise SecretUnreadable(
                f"the database holds {sum(u.secrets for u in uses)} secrets but this server "
                f"has no key to open them: set {KEY_VAR} to the key that encrypted them")
        for use in uses:
            if use.key_id not in self.keys.ids:
                raise SecretUnreadable(
                    f"the database holds {use.secrets} secrets (such as {use.example}) "
                    f"encrypted with key {use.key_id}, which {self.keys.source} does not hold "
                    f"(it holds {', '.join(self.keys.ids)}): start with the key that encrypted "
                    f"them")
        sample = {u.example for u in uses}
        for sealed in await self.store.all_sealed():
            if f"{sealed.workspace}/{sealed.name}" in sample:
                self.keys.decrypt(sealed.workspace, sealed.name, sealed.key_id, sealed.sealed)

    async def put(self, workspace: str, name: str, body: SecretIn, by: str
                  ) -> tuple[SecretInfo, bool]:
        check_name(name)
        value = check_value(name, body.value)
        ring = self._ring()
        kid, sealed = ring.encrypt(workspace, name, value)
        info, created = await self.store.put_secret(workspace, name, sealed, kid,
                                                    body.allowed_tags, by)
        self._redactors.clear()  # a job's secret may have changed: look again
        self._any = True
        log.info("secret.set", extra={"workspace": workspace, "secret": name, "by": by,
                                      "new": created})
        return info, created

    async def scope(self, workspace: str, name: str, body: ScopeIn, by: str) -> SecretInfo:
        info = await self.store.scope_secret(workspace, check_name(name), body.allowed_tags, by)
        if info is None:
            raise NotFound(f"no secret {name} in workspace {workspace!r}",
                           code="secret_not_found")
        log.info("secret.scoped", extra={"workspace": workspace, "secret": name, "by": by,
                                         "allowed_tags": body.allowed_tags})
        return info

    async def delete(self, workspace: str, name: str, by: str) -> bool:
        deleted = await self.store.delete_secret(workspace, check_name(name))
        if deleted:
            log.info("secret.deleted", extra={"workspace": workspace, "secret": name, "by": by})
        return deleted

    async def open_for(self, rows: Sequence[ClaimedRow]) -> dict[int, Opened]:
        """The secrets of each claimed job that names some, opened for its holder. One
        deleted since the submit, no longer allowed for the job's tag, or that does not
        open is withheld, with the reason (the holder says it in the job's log)."""
        wanted = {(r.workspace, n) for r in rows for n in (r.secrets or ())}
        for row in rows:
            if not row.secrets:
                self._remember(row.id, None)  # nothing to redact when it reports
        if not wanted:
            return {}
        sealed: dict[tuple[str, str], Sealed] = {
            (s.workspace, s.name): s for s in await self.store.sealed_secrets(sorted(wanted))}
        scopes: dict[tuple[str, str], list[str] | None] = {}
        for workspace in {w for w, _ in wanted}:
            names = [n for w, n in wanted if w == workspace]
            for name, allowed in (await self.store.secret_scopes(workspace, names)).items():
                scopes[(workspace, name)] = allowed
        opened: dict[int, Opened] = {}
        for row in rows:
            if not row.secrets:
                continue
            values: dict[str, str] = {}
            withheld: dict[str, str] = {}
            for name in row.secrets:
                item = sealed.get((row.workspace, name))
                allowed = scopes.get((row.workspace, name))
                if item is None:
                    withheld[name] = "it was deleted"
                elif allowed is not None and row.tag not in allowed:
                    withheld[name] = f"it is no longer allowed for tag {row.tag}"
                elif self.keys is None:
                    withheld[name] = f"this server process has no secrets key ({KEY_VAR})"
                else:
                    try:
                        values[name] = self.keys.decrypt(item.workspace, name, item.key_id,
                                                         item.sealed)
                    except SecretUnreadable as exc:
                        withheld[name] = str(exc)
                if name in values:
                    log.info("secret.used", extra={"job_id": row.id, "secret": name,
                                                   "workspace": row.workspace})
                else:
                    log.warning("secret.withheld", extra={"job_id": row.id, "secret": name,
                                                          "reason": withheld[name]})
            opened[row.id] = Opened(values, withheld)
            self._remember(row.id, Redactor(values) if values else None)
        return opened

    def _remember(self, job_id: int, redactor: Redactor | None) -> None:
        self._redactors[job_id] = redactor
        self._redactors.move_to_end(job_id)
        while len(self._redactors) > 10_000:
            self._redactors.popitem(last=False)

    async def redactors(self, job_ids: Sequence[int]) -> dict[int, Redactor | None]:
        """`redactor` of each job: those this process knows at once, the others looked up
        side by side (an agent's outcomes may reach a replica that did not hand the jobs out)."""
        known = {i: self._redactors[i] for i in job_ids if i in self._redactors}
        unknown = list(dict.fromkeys(i for i in job_ids if i not in known))
        if unknown and not await self._secrets_exist():  # asked once, not once per job
            known.update(dict.fromkeys(unknown))
        elif unknown:
            looked_up = await asyncio.gather(*(self.redactor(i) for i in unknown))
            known.update(zip(unknown, looked_up, strict=True))
        return known

    async def redactor(self, job_id: int) -> Redactor | None:
        """The redactor of a job's secrets (None: it has none), to redact again what an
        agent sends of it (defence in depth: an old or modified agent). Jobs this process
        handed out are known; for others it asks the database once, and not at all while
        the database holds no secret."""
        if job_id in self._redactors:
            return self._redactors[job_id]
        if not await self._secrets_exist():
            return None
        found = await self.store.job_secret_names(job_id)
        redactor: Redactor | None = None
        if found is not None and found[1] and self.keys is not None:
            workspace, names = found
            values = {}
            for item in await self.store.sealed_secrets([(workspace, n) for n in names]):
                with contextlib.suppress(SecretUnreadable):
                    values[item.name] = self.keys.decrypt(workspace, item.name, item.key_id,
                                                          item.sealed)
            redactor = Redactor(values) if values else None
        self._remember(job_id, redactor)
        return redactor

    async def _secrets_exist(self) -> bool:
        """Whether the database holds any secret, asked at most once per EXISTS_TTL_S."""
        now = time.monotonic()
        if self._any_checked_at + EXISTS_TTL_S < now:
            self._any = await self.store.any_secrets()
            self._any_checked_at = now
        return self._any

    async def rotate(self) -> dict[str, object]:
        """Re-encrypt every secret under the primary key. With a key file, a new key is made
        first and written in front of the old one, which is dropped once nothing uses it."""
        ring = self._ring()
        file_keys: list[str] | None = None
        if ring.path is not None:
            file_keys = ring.path.read_text(encoding="ascii").split()
            write_key_file(ring.path, [new_key(), *file_keys])
            ring = self.keys = read_key_file(ring.path)
        resealed = 0
        for item in await self.store.all_sealed():
            if item.key_id == ring.primary:
                continue
            value = ring.decrypt(item.workspace, item.name, item.key_id, item.sealed)
            kid, sealed = ring.encrypt(item.workspace, item.name, value)
            resealed += await self.store.reseal(item, sealed, kid)
        left = [u for u in await self.store.secret_key_uses() if u.key_id != ring.primary]
        if ring.path is not None and file_keys is not None and not left:
            current = ring.path.read_text(encoding="ascii").split()
            write_key_file(ring.path, current[:1])
            ring = self.keys = read_key_file(ring.path)
        log.info("secret.key_rotated", extra={"key_id": ring.primary, "resealed": resealed})
        return {"key_id": ring.primary, "resealed": resealed,
                "keys_in_use": sorted({ring.primary, *(u.key_id for u in left)})}
