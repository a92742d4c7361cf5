"""Wire models: request bodies, decoded and validated by msgspec in one pass."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from tagrun.shared.signing import KEY_ID_PATTERN

# Patterns end in \Z, not $: msgspec searches with `re`, where $ also matches before a final
# newline ("f/x\n" would pass).
# A description completes "<field> must be ..." in the 400 a bad value gets
# (server/validation_errors.py), and shows in the OpenAPI document.
Path = Annotated[str, msgspec.Meta(
    pattern=r"^[a-z0-9_][a-z0-9_.-]*(/[a-z0-9_][a-z0-9_.-]*)*\Z", max_length=255,
    description="a path like f/etl/daily: parts of lowercase letters, digits, '_', '.' and "
                "'-', joined by '/'")]
WorkspaceId = Annotated[str, msgspec.Meta(
    pattern=r"^[a-z0-9][a-z0-9-]{0,62}\Z",
    description="1 to 63 lowercase letters, digits and '-', starting with a letter or a digit")]
Content = Annotated[str, msgspec.Meta(max_length=512 * 1024)]
TagTemplate = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Priority = Annotated[int, msgspec.Meta(ge=-1000, le=1000)]
TimeoutS = Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]
MaxAttempts = Annotated[int, msgspec.Meta(ge=1, le=100)]
# Bounded again by the server (three heartbeats to TAGRUN_MAX_LEASE_S).
LeaseS = Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]
Version = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Label = Annotated[str, msgspec.Meta(max_length=200)]
# The secrets a script's or a job's holder gets as environment variables, by name.
SecretNames = Annotated[list[Annotated[str, msgspec.Meta(
    pattern=r"^[A-Z_][A-Z0-9_]{0,63}\Z",
    description="a name like DB_PASSWORD: up to 64 capital letters, digits and '_', not "
                "starting with a digit")]], msgspec.Meta(max_length=100)]
# Timestamps must stay inside what Python (and so the driver decoding them) can represent:
# a stored year-10000 timestamp would make every later read of its row fail.
MAX_EXPIRES_IN_S = 100 * 366 * 24 * 3600


class _Body(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class SignatureIn(_Body):
    """A signature made by the submitter (docs/signing.md), stored for holders to verify."""

    key_id: Annotated[str, msgspec.Meta(pattern=KEY_ID_PATTERN)]
    # Standard base64 of the 64-byte Ed25519 signature.
    sig: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{86}==\Z")]
    unsigned_args: bool = False

    def stored(self, source: str) -> dict[str, Any]:
        return {"key_id": self.key_id, "sig": self.sig, "unsigned_args": self.unsigned_args,
                "source": source}


class ScriptIn(_Body):
    path: Path
    language: str
    content: Content
    tag: TagTemplate | None = None
    timeout_s: TimeoutS | None = None
    max_attempts: MaxAttempts = 3
    concurrency_limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    lease_s: LeaseS | None = None
    secrets: SecretNames = []
    # The version this deploy must become (409 version_taken otherwise): what a signed
    # deploy signs.
    version: Version | None = None
    signature: SignatureIn | None = None


class JobIn(_Body):
    script: Path | None = None
    # That version of the script rather than its latest.
    script_version: Version | None = None
    language: str | None = None
    content: Content | None = None
    args: dict[str, Any] = {}
    tag: TagTemplate | None = None
    priority: Priority = 0
    run_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    timeout_s: TimeoutS | None = None
    max_attempts: MaxAttempts | None = None
    lease_s: LeaseS | None = None
    # Secrets by name, added to its script's (for a script job).
    secrets: SecretNames = []
    signature: SignatureIn | None = None
    # One child job per agent live for `tag` now, each pinned to its agent; this job is their
    # parent and ends when they all have (services/broadcast.py).
    broadcast: bool = False

    def __post_init__(self) -> None:
        if self.run_at is not None:
            try:
                self.run_at = self.run_at.astimezone(UTC)
            except OverflowError:  # msgspec makes this a 400 naming the field's path
                raise ValueError(
                    f"run_at {self.run_at.isoformat()} is out of range in UTC"
                ) from None


class BatchIn(_Body):
    jobs: Annotated[list[JobIn], msgspec.Meta(min_length=1, max_length=10_000)]


class WorkspaceIn(_Body):
    id: WorkspaceId


class WorkspaceTokenIn(_Body):
    """A workspace token (`workspace` required), or with `"kind": "autoscale"` a token of no
    workspace that reads GET /api/autoscale and nothing else (routes/admin.py checks)."""

    workspace: WorkspaceId | None = None
    label: Label = ""
    kind: Literal["workspace", "autoscale"] = "workspace"
    expires_in_s: Annotated[int, msgspec.Meta(gt=0, le=MAX_EXPIRES_IN_S)] | None = None


class PauseIn(_Body):
    """Pause an agent or a group: it claims nothing new until resumed, or for `for_s`."""

    note: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    for_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] | None = None


class DrainIn(_Body):
    """Drain an agent: it claims nothing more, finishes its jobs, says goodbye and exits 0."""

    note: Annotated[str, msgspec.Meta(max_length=500)] = ""
