"""Server configuration, read once from the environment into a typed object."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from tagrun.shared import tracing
from tagrun.shared.executors import available_languages
from tagrun.shared.signing import SigningError, Verifier, load_verifier

MODES = ("standalone", "server", "worker")


class ConfigError(Exception):
    """A configuration value is wrong; the message names the variable and the value."""


SUPERADMIN_TOKEN_FILE = "superadmin.token"  # in the data directory, mode 0600


@dataclass(frozen=True)
class LeaseBounds:
    """The leases a job or script may ask for (`lease_s`): at least three heartbeats (or the
    server's lease, if shorter), at most TAGRUN_MAX_LEASE_S."""

    min_s: float
    max_s: float


@dataclass(frozen=True)
class ServerConfig:
    mode: str
    host: str
    port: int
    data_dir: Path
    database_url: str | None
    superadmin_token: str | None
    worker_tags: tuple[str, ...]
    worker_slots: int
    worker_name: str | None
    lease_s: float
    heartbeat_s: float
    claim_ack_s: float  # 0: agents' claims need no acknowledgement
    max_lease_s: float  # the longest lease_s a job or script may ask for
    db_wait_s: float  # at start, how long to wait for a database that does not answer yet
    poll_interval_s: float
    max_body_bytes: int
    pool_size: int
    retry_backoff_s: float
    stale_after_s: float
    max_log_bytes: int
    max_queued: int
    metrics_token: str | None
    tls_cert: Path | None = None  # with tls_key: serve HTTPS directly
    tls_key: Path | None = None
    # WORKER_VERIFY_KEYS, WORKER_VERIFY: direct workers check jobs' signatures (signing.md).
    worker_verifier: Verifier | None = None
    tracing: bool = False  # OpenTelemetry traces (shared/tracing.py, docs/tracing.md)
    # Quarantine (services/quarantine.py): after this many failed attempts in a row (0: off),
    # for this long (0: until an operator resumes the agent).
    quarantine_after: int = 5
    quarantine_for_s: float = 3600.0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}"

    @property
    def lease_bounds(self) -> LeaseBounds:
        return LeaseBounds(min(self.lease_s, 3 * self.heartbeat_s), self.max_lease_s)

    @property
    def superadmin_token_source(self) -> str:
        """Where the superadmin token comes from, to show to the user (never the token)."""
        return "TAGRUN_SUPERADMIN_TOKEN" if self.superadmin_token else \
            str(self.data_dir / SUPERADMIN_TOKEN_FILE)

    @property
    def runs_http(self) -> bool:
        return self.mode in ("standalone", "server")

    @property
    def runs_worker(self) -> bool:
        return self.mode in ("standalone", "worker")


def _number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float,
    maximum: float = float("inf"),
) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not minimum <= value <= maximum:  # also refuses nan
        limit = f"between {minimum:g} and {maximum:g}" if maximum < float("inf") \
            else f"at least {minimum:g}"
        raise ConfigError(f"{name}={raw!r} must be {limit}")
    return value


def _integer(
    env: Mapping[str, str], name: str, default: int, *, minimum: int,
    maximum: float = float("inf"),
) -> int:
    value = _number(env, name, default, minimum=minimum, maximum=maximum)
    if value != int(value):
        raise ConfigError(f"{name}={env.get(name)!r} is not a whole number")
    return int(value)


def _port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port={port} must be between 0 and 65535")
    return port


def _tags(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("WORKER_TAGS", "")
    if not raw.strip():
        return tuple(available_languages())
    tags = tuple(t.strip() for t in raw.split(",") if t.strip())
    if not tags:
        raise ConfigError(f"WORKER_TAGS={raw!r} names no tag")
    return tags


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("tagrun", appauthor=False))


def load_config(
    env: Mapping[str, str] | None = None,
    *,
    mode: str | None = None,
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> ServerConfig:
    env = os.environ if env is None else env
    mode = mode or env.get("MODE") or "standalone"
    if mode not in MODES:
        raise ConfigError(
            f"MODE={mode!r} is not one of {', '.join(MODES)} (for an agent, run tagrun-agent)"
        )
    lease_s = _number(env, "TAGRUN_LEASE_S", 60.0, minimum=1.0)
    heartbeat_s = _number(env, "TAGRUN_HEARTBEAT_S", lease_s / 3, minimum=0.1)
    if heartbeat_s >= lease_s:
        raise ConfigError(
            f"TAGRUN_HEARTBEAT_S={heartbeat_s:g} must be less than TAGRUN_LEASE_S={lease_s:g}"
        )
    # A lost claim answer costs at most this, not a whole lease; never more than the lease.
    claim_ack_s = _number(env, "TAGRUN_CLAIM_ACK_S", min(5.0, lease_s), minimum=0.0)
    if claim_ack_s > lease_s:
        raise ConfigError(
            f"TAGRUN_CLAIM_ACK_S={claim_ack_s:g} must be at most TAGRUN_LEASE_S={lease_s:g}")
    max_lease_s = _number(env, "TAGRUN_MAX_LEASE_S", max(3600.0, lease_s), minimum=1.0,
                          maximum=7 * 24 * 3600)
    if max_lease_s < lease_s:
        raise ConfigError(
            f"TAGRUN_MAX_LEASE_S={max_lease_s:g} must be at least TAGRUN_LEASE_S={lease_s:g}")
    return ServerConfig(
        mode=mode,
        host=host or env.get("TAGRUN_HOST") or "127.0.0.1",
        port=_port(port) if port is not None else _integer(
            env, "TAGRUN_PORT", 8000, minimum=0, maximum=65535),
        data_dir=data_dir or Path(env.get("TAGRUN_DATA_DIR") or default_data_dir()),
        database_url=env.get("DATABASE_URL") or None,
        superadmin_token=env.get("TAGRUN_SUPERADMIN_TOKEN") or None,
        worker_tags=_tags(env),
        worker_slots=_integer(env, "WORKER_SLOTS", 4, minimum=1),
        worker_name=env.get("WORKER_NAME") or None,
        lease_s=lease_s,
        heartbeat_s=heartbeat_s,
        claim_ack_s=claim_ack_s,
        max_lease_s=max_lease_s,
        db_wait_s=_number(env, "TAGRUN_DB_WAIT_S", 30.0, minimum=0.0),
        poll_interval_s=_number(env, "TAGRUN_POLL_INTERVAL_S", 2.0, minimum=0.05),
        max_body_bytes=_integer(env, "TAGRUN_MAX_BODY_BYTES", 1 << 20, minimum=1024),
        pool_size=_integer(env, "TAGRUN_DB_POOL_SIZE", 9, minimum=2),
        retry_backoff_s=_number(env, "TAGRUN_RETRY_BACKOFF_S", 5.0, minimum=0.0),
        # Long-polling agents are marked seen every 5 s: less would flag live agents.
        stale_after_s=_number(env, "TAGRUN_STALE_AFTER_S", max(30.0, 3 * heartbeat_s),
                              minimum=6.0),
        max_log_bytes=_integer(env, "TAGRUN_MAX_LOG_BYTES", 10 << 20, minimum=1024),
        max_queued=_integer(env, "TAGRUN_MAX_QUEUED", 0, minimum=0),
        metrics_token=env.get("TAGRUN_METRICS_TOKEN") or None,
        **_tls(env, tls_cert, tls_key),
        worker_verifier=_verifier(env),
        tracing=_tracing(env),
        quarantine_after=_integer(env, "TAGRUN_QUARANTINE_AFTER", 5, minimum=0,
                                  maximum=10_000),
        quarantine_for_s=_number(env, "TAGRUN_QUARANTINE_FOR_S", 3600.0, minimum=0.0,
                                 maximum=30 * 86400),
    )


def _tracing(env: Mapping[str, str]) -> bool:
    try:
        return tracing.wanted(env)
    except tracing.TracingConfigError as exc:
        raise ConfigError(str(exc)) from None


def _verifier(env: Mapping[str, str]) -> Verifier | None:
    try:
        return load_verifier(env, "WORKER")
    except SigningError as exc:
        raise ConfigError(str(exc)) from None


def _tls(env: Mapping[str, str], cert: Path | None, key: Path | None) -> dict[str, Path]:
    """--tls-cert/--tls-key (TAGRUN_TLS_CERT/TAGRUN_TLS_KEY): both or neither, loaded once
    here so that a bad pair is refused at start, naming the variables, not at the first
    connection."""
    cert = cert or (Path(env["TAGRUN_TLS_CERT"]) if env.get("TAGRUN_TLS_CERT") else None)
    key = key or (Path(env["TAGRUN_TLS_KEY"]) if env.get("TAGRUN_TLS_KEY") else None)
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        given, missing = ("TAGRUN_TLS_CERT", "TAGRUN_TLS_KEY") if key is None else \
            ("TAGRUN_TLS_KEY", "TAGRUN_TLS_CERT")
        raise ConfigError(f"{given} (--{given[7:].lower().replace('_', '-')}) is set but "
                          f"{missing} is not: HTTPS needs both")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"TAGRUN_TLS_CERT={str(cert)!r} with TAGRUN_TLS_KEY={str(key)!r} "
                          f"cannot be used: {reason}") from None
    return {"tls_cert": cert, "tls_key": key}
