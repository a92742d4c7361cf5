"""The key ring that encrypts jobs' secrets at rest (AES-256-GCM, from `cryptography`).

The database never holds a key. The keys come from TAGRUN_SECRETS_KEY (one or more keys,
comma-separated, each 32 random bytes in URL-safe base64: the first encrypts, every one
decrypts), or, when that is unset and the database is the embedded one, from the key file
`secrets.key` in the data directory (0600, one key per line, created at first start).

Each stored secret records the id of the key that encrypted it (an HMAC of a constant under
the key: it names the key without revealing it), and is bound to its workspace and name as
associated data, so a ciphertext copied onto another secret's row does not decrypt.
A key that does not match fails authentication: never garbage, always a clear error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tagrun.server.config import ConfigError

KEY_VAR = "TAGRUN_SECRETS_KEY"
KEY_FILE = "secrets.key"  # in the data directory, mode 0600
_NONCE_BYTES = 12


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the keys this process holds."""


def new_key() -> str:
    """A fresh key, as TAGRUN_SECRETS_KEY and the key file spell it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _key_bytes(text: str, source: str, position: int) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:  # the message never repeats the key
        raise ConfigError(
            f"{source}: key {position} is not 32 bytes in URL-safe base64 (make one with "
            f"`tagrun secrets new-key`)")
    return raw


def key_id(raw: bytes) -> str:
    return hmac.new(raw, b"tagrun secrets key id", hashlib.sha256).hexdigest()[:12]


@dataclass(frozen=True)
class KeyRing:
    """The keys of this process: `ids[0]` encrypts; every one decrypts."""

    ids: tuple[str, ...]
    _ciphers: dict[str, AESGCM]
    source: str  # where the keys come from, to name in messages (never a key)
    path: Path | None = None  # the key file, when they come from one

    @classmethod
    def of(cls, keys: list[str], source: str, path: Path | None = None) -> KeyRing:
        raws = [_key_bytes(k, source, i + 1) for i, k in enumerate(keys)]
        if not raws:
            raise ConfigError(f"{source} holds no key")
        ciphers = {key_id(r): AESGCM(r) for r in raws}
        return cls(tuple(key_id(r) for r in raws), ciphers, source, path)

    @property
    def primary(self) -> str:
        return self.ids[0]

    def encrypt(self, workspace: str, name: str, value: str) -> tuple[str, bytes]:
        """(key id, nonce + ciphertext) of `value` under the primary key."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.primary].encrypt(
            nonce, value.encode(), _bound(workspace, name))
        return self.primary, nonce + sealed

    def decrypt(self, workspace: str, name: str, kid: str, blob: bytes) -> str:
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretUnreadable(
                f"secret {name} of workspace {workspace} was encrypted with key {kid}, which "
                f"{self.source} does not hold")
        try:
            return cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:],
                                  _bound(workspace, name)).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise SecretUnreadable(
                f"secret {name} of workspace {workspace} does not decrypt with key {kid}: "
                f"the stored value was altered, or the key is not the one that encrypted it"
            ) from None


def _bound(workspace: str, name: str) -> bytes:
    return f"tagrun secret\0{workspace}\0{name}".encode()


def load_keyring(env: Mapping[str, str], data_dir: Path, *, embedded: bool
                 ) -> KeyRing | None:
    """The key ring from TAGRUN_SECRETS_KEY, else (embedded database) the key file, created
    when missing. None: no key (an external database without TAGRUN_SECRETS_KEY): secrets
    cannot be stored, and a start with secrets in the database is refused."""
    raw = env.get(KEY_VAR, "").strip()
    if raw:
        return KeyRing.of([k.strip() for k in raw.split(",") if k.strip()], KEY_VAR)
    if not embedded:
        return None
    path = data_dir / KEY_FILE
    if not path.exists():
        write_key_file(path, [new_key()])
    return read_key_file(path)


def read_key_file(path: Path) -> KeyRing:
    try:
        lines = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise ConfigError(f"cannot read the secrets key file {path}: {reason}") from None
    return KeyRing.of(lines, f"the key file {path}", path)


def write_key_file(path: Path, keys: list[str]) -> None:
    """Write the key file whole or not at all (a temporary file renamed over it), 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("".join(f"{k}\n" for k in keys))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
