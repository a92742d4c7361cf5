"""Signed jobs (docs/signing.md): the payload a signer signs and a holder verifies.

A signer (a person or a CI pipeline, never the server) signs with an Ed25519 key the canonical
payload of a job: what it runs (workspace, script path and version or inline, language, the
SHA-256 of its content) and how (its resolved tag, timeout, the names of its secrets and,
unless the signer opted out, its args). A holder that verifies (AGENT_VERIFY_KEYS,
WORKER_VERIFY_KEYS) recomputes the payload from the job it received, so a job changed after
signing, by anyone, no longer matches.

The payload is `PREFIX` followed by the fields as compact JSON: keys sorted, ASCII only, no
spaces; the timeout in whole milliseconds and whole-valued numbers in args as integers, so
that no float formatting enters it. Signatures
travel as standard base64. `cryptography` is imported only when a key is loaded or a
signature made or checked, so a holder that verifies nothing never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from tagrun.shared.agent_wire import AgentJob

PREFIX = b"tagrun-job-signature-v1\n"
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}\Z"
KEY_ID_LINE = "tagrun-key-id:"  # the private key file's first line: its key id
MODES = ("block", "warn")
# The refusal's error kind, in the job's error and the holder's and server's events.
SIGNATURE_INVALID = "signature_invalid"


class SigningError(ValueError):
    """A key file or key list that cannot be used; the message says why (never a key)."""


def payload(*, workspace: str, script: str | None, version: int | None, language: str,
            content: str, tag: str, timeout_s: float | None, secrets: Sequence[str],
            args: Mapping[str, Any] | None, unsigned_args: bool = False) -> bytes:
    """The bytes signed for a job with these fields (`args` left out when `unsigned_args`)."""
    fields = {
        "workspace": workspace,
        "script": script,
        "version": version,
        "language": language,
        "content_sha256": hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest(),
        "tag": tag,
        "timeout_ms": None if timeout_s is None else round(timeout_s * 1000),
        "secrets": sorted(set(secrets)),
        "unsigned_args": unsigned_args,
        "args": None if unsigned_args else _canonical(dict(args or {})),
    }
    return PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=True, allow_nan=False).encode("ascii")


def _canonical(value: Any) -> Any:
    """Args as every side reads them back: a float with a whole value is written as an
    integer (the database keeps 1e5 as 100000). Past 2**53 such a float is not exact, so it
    cannot be signed: send it as a string."""
    if isinstance(value, float) and value.is_integer():
        if abs(value) >= 2**53:
            raise ValueError(f"the number {value!r} in args is too large to sign exactly; "
                             "send it as a string")
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def job_payload(job: AgentJob, *, unsigned_args: bool) -> bytes:
    """The payload of a job as its holder received it."""
    return payload(
        workspace=job.workspace, script=job.script, version=job.script_version,
        language=job.language, content=job.content, tag=job.tag, timeout_s=job.timeout_s,
        secrets=[*job.secrets, *job.withheld], args=job.args, unsigned_args=unsigned_args)


# -- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    key: Ed25519PrivateKey

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.key.sign(data)).decode("ascii")

    def public_line(self) -> str:
        """This key's line for a verify-keys file: `key_id base64-public-key`."""
        return f"{self.key_id} {public_b64(self.key.public_key())}"


def public_b64(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def default_key_id(key: Ed25519PublicKey) -> str:
    """A key id made from the public key, when the signer names none."""
    return "ed25519-" + hashlib.sha256(base64.b64decode(public_b64(key))).hexdigest()[:16]


def generate(key_id: str | None = None) -> tuple[SigningKey, bytes]:
    """A new key pair: the signing key, and its private key file's bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    key_id = key_id or default_key_id(key.public_key())
    if not re.match(KEY_ID_PATTERN, key_id):
        raise SigningError(f"key id {key_id!r} must be 1 to 64 letters, digits and _.:@- "
                        "(starting with a letter or digit)")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return SigningKey(key_id, key), f"{KEY_ID_LINE} {key_id}\n".encode() + pem


def load_signing_key(path: Path) -> SigningKey:
    """A private key file as `generate` writes it: a `tagrun-key-id:` line, then the PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path} cannot be read: {exc.strerror}") from None
    first = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not first.startswith(KEY_ID_LINE):
        raise SigningError(f"{path} is not a tagrun signing key (its first line should be "
                        f"'{KEY_ID_LINE} <id>'; tagrun keys generate writes one)")
    key_id = first[len(KEY_ID_LINE):].strip()
    if not re.match(KEY_ID_PATTERN, key_id):
        raise SigningError(f"{path}: key id {key_id!r} is not a valid key id")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningError(f"{path} holds no readable unencrypted private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} holds a private key that is not Ed25519")
    return SigningKey(key_id, key)


def parse_public_keys(text: str, source: str) -> dict[str, Ed25519PublicKey]:
    """A verify-keys file: one `key_id base64-public-key` per line; # comments, blank lines."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[str, Ed25519PublicKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not re.match(KEY_ID_PATTERN, parts[0]):
            raise SigningError(f"{source} line {number}: expected 'key_id public-key' "
                            "(as tagrun keys generate prints it)")
        key_id, raw = parts
        try:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            raise SigningError(f"{source} line {number}: key {key_id!r} is not a base64 "
                            "Ed25519 public key (32 bytes)") from None
        if key_id in keys:
            raise SigningError(f"{source} line {number}: key id {key_id!r} appears twice")
        keys[key_id] = key
    if not keys:
        raise SigningError(f"{source} holds no key")
    return keys


# -- verification ------------------------------------------------------------------------------


def verifies(key: Ed25519PublicKey, sig: str, data: bytes) -> bool:
    """Whether `sig` (base64) is `key`'s signature of `data`."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(base64.b64decode(sig, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Verdict:
    """What a holder found: `ok` (the signature checked out), the key id it names, and a
    sentence for the job's log and error."""

    ok: bool
    key_id: str | None
    message: str


@dataclass(frozen=True)
class Verifier:
    """A holder's trusted keys and what it does with a job that does not verify."""

    keys: Mapping[str, Ed25519PublicKey]
    mode: str = "block"  # block: refuse it unrun; warn: run it, saying so
    source: str = "AGENT_VERIFY_KEYS"

    @property
    def blocks(self) -> bool:
        return self.mode == "block"

    def key_ids(self) -> list[str]:
        return sorted(self.keys)

    def header(self) -> str:
        """What a holder tells the server of its checking (Tagrun-Agent-Verify)."""
        return f"{self.mode}; keys={','.join(self.key_ids())}"

    def check(self, job: AgentJob) -> Verdict:
        from cryptography.exceptions import InvalidSignature

        signature = job.signature
        if signature is None:
            return Verdict(False, None, "the job is not signed")
        key = self.keys.get(signature.key_id)
        if key is None:
            return Verdict(False, signature.key_id, f"the job is signed with key "
                           f"{signature.key_id!r}, which is not in {self.source}")
        try:
            raw = base64.b64decode(signature.sig, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 64:
            return Verdict(False, signature.key_id, "the job's signature is malformed "
                           "(not 64 bytes of base64)")
        try:
            key.verify(raw, job_payload(job, unsigned_args=signature.unsigned_args))
        except InvalidSignature:
            return Verdict(False, signature.key_id, (
                f"the signature (key {signature.key_id!r}) does not match the job as "
                "received: its content, args, tag, workspace, timeout, language, script or "
                "secrets changed after signing"))
        except (TypeError, ValueError) as exc:  # args that are not JSON cannot match
            return Verdict(False, signature.key_id, f"the job cannot be checked: {exc}")
        unsigned = " (its args are not signed)" if signature.unsigned_args else ""
        return Verdict(True, signature.key_id,
                       f"signature checked: key {signature.key_id!r}{unsigned}")


def parse_verify_header(raw: str) -> dict[str, Any] | None:
    """A holder's Tagrun-Agent-Verify header as {mode, keys}; None when it makes no sense."""
    mode, _, rest = raw[:2000].partition(";")
    mode, rest = mode.strip().lower(), rest.strip()
    if mode not in MODES or not rest.startswith("keys="):
        return None
    keys = [k for k in rest[5:].split(",") if re.match(KEY_ID_PATTERN, k)][:50]
    return {"mode": mode, "keys": keys}


def load_verifier(values: Mapping[str, str | None], prefix: str) -> Verifier | None:
    """`{prefix}_VERIFY_KEYS` and `{prefix}_VERIFY` (block, the default, or warn) as a
    Verifier; None when no keys are set. SigningError names the variable that is wrong."""
    keys_var, mode_var = f"{prefix}_VERIFY_KEYS", f"{prefix}_VERIFY"
    path, mode = values.get(keys_var), (values.get(mode_var) or "").strip().lower()
    if mode and mode not in MODES:
        raise SigningError(f"{mode_var}={values.get(mode_var)!r} must be block or warn")
    if not path:
        if mode:
            raise SigningError(f"{mode_var} is set but {keys_var} is not: set {keys_var} to a "
                            "file of trusted public keys")
        return None
    try:
        text = Path(os.path.expanduser(path)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SigningError(f"{keys_var}={path!r} cannot be read: {reason}") from None
    return Verifier(parse_public_keys(text, f"{keys_var}={path!r}"), mode or "block", keys_var)
