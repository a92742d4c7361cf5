"""Agent configuration: read once from options/environment into a typed, validated object.

Messages name the variable and its value, except AGENT_TOKEN's: the token is never shown.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tagrun.agent.errors import ConfigError
from tagrun.agent.policy import LocalPolicy
from tagrun.shared.executors import LANGUAGES, JobUser
from tagrun.shared.interpreters import is_wsl_launcher
from tagrun.shared.redact import DEFAULT_REDACT_VARS
from tagrun.shared.signing import SigningError, Verifier, load_verifier

__all__ = ["AgentConfig", "ConfigError", "load_config"]

log = logging.getLogger("tagrun.agent")

MAX_POLL_WAIT_S = 60.0
DEFAULT_LOG_SPOOL_MB = 64  # per job, while the server is out of reach
# What INIT_SCRIPT may be written in (INIT_SCRIPT_LANGUAGE); the default is the OS's shell.
INIT_SCRIPT_LANGUAGES = ("bash", "sh", "powershell", "python")

Warn = Callable[[str], None]


@dataclass(frozen=True)
class AgentConfig:
    token: str = field(repr=False)
    base_url: str
    name: str
    slots: int = 1
    init_script: str | None = None
    init_script_language: str = "powershell" if os.name == "nt" else "bash"
    # AGENT_BASH: the bash.exe (any OS: bash) that bash jobs run, rather than the one found.
    bash: str | None = None
    work_dir: Path | None = None  # None: a temporary directory made at start, removed at exit
    python: str | None = None
    drain_timeout_s: float = 30.0
    poll_wait_s: float = 25.0
    log_spool_bytes: int = DEFAULT_LOG_SPOOL_MB << 20
    ca_file: Path | None = None
    job_user: JobUser | None = None  # POSIX: jobs run as this user, not as the agent's
    # Ephemeral agents: exit 0 (saying goodbye) after this many jobs, or this long idle.
    exit_after_jobs: int | None = None
    exit_after_idle_s: float | None = None
    # The agent's own variables whose values are redacted from jobs' logs and results
    # (fnmatch patterns, any case): AGENT_REDACT_VARS, "none" for none.
    redact_vars: tuple[str, ...] = DEFAULT_REDACT_VARS
    # AGENT_VERIFY_KEYS and AGENT_VERIFY: jobs' signatures checked before they run.
    verifier: Verifier | None = None
    # AGENT_ALLOW_*: what this machine lets run, whatever the server sends.
    policy: LocalPolicy = LocalPolicy()
    # AGENT_PRE_JOB_HOOK (and its timeout): a local executable that may refuse each job.
    pre_job_hook: Path | None = None
    pre_job_hook_timeout_s: float = 60.0
    # TAGRUN_OTEL or OTEL_EXPORTER_OTLP_ENDPOINT: OpenTelemetry traces (docs/tracing.md).
    tracing: bool = False


def _redact_vars(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_REDACT_VARS
    if raw.strip().lower() == "none":
        return ()
    patterns = tuple(p.strip() for p in raw.split(",") if p.strip())
    for pattern in patterns:
        if not re.fullmatch(r"[A-Za-z0-9_*?\[\]!]{1,200}", pattern):
            raise ConfigError(f"AGENT_REDACT_VARS: {pattern!r} is not a variable name pattern "
                              f"(letters, digits, _ and the wildcards * ? [ ]), e.g. *_TOKEN")
    if not patterns:
        raise ConfigError(f"AGENT_REDACT_VARS={raw!r} names no pattern (\"none\" for none)")
    return patterns


def _log_warning(message: str) -> None:
    log.warning("agent.config_warning", extra={"detail": message})


def _tracing() -> bool:
    """Whether to export OpenTelemetry traces: TAGRUN_OTEL, OTEL_EXPORTER_OTLP_ENDPOINT
    (read from the environment, as every OpenTelemetry SDK reads its own)."""
    from tagrun.shared.tracing import TracingConfigError, wanted

    try:
        return wanted(os.environ)
    except TracingConfigError as exc:
        raise ConfigError(str(exc)) from None


def load_config(values: Mapping[str, str | None], warn: Warn = _log_warning) -> AgentConfig:
    """Build the config from values keyed by environment variable name (None/"" = unset)."""
    v = {k: val for k, val in values.items() if val is not None and val != ""}
    mode = v.get("MODE")
    if mode is not None and mode != "agent":
        raise ConfigError(f"MODE={mode!r}: tagrun-agent runs only MODE=agent (or MODE unset)")
    job_user = _job_user(v.get("AGENT_JOB_USER"))
    if job_user is not None and "AGENT_TOKEN_FILE" in v:
        _closed_to(job_user, v["AGENT_TOKEN_FILE"])
    return AgentConfig(
        tracing=_tracing(),
        token=_token(values.get("AGENT_TOKEN"), v.get("AGENT_TOKEN_FILE")),
        base_url=_base_url(v.get("BASE_INTERNAL_URL"), warn,
                           insecure=_flag(v, "AGENT_ALLOW_INSECURE")),
        name=_name(v.get("AGENT_NAME")),
        slots=int(_number(v, "AGENT_SLOTS", 1, low=1, high=10_000, whole=True)),
        init_script=v.get("INIT_SCRIPT") if (v.get("INIT_SCRIPT") or "").strip() else None,
        init_script_language=_init_script_language(v.get("INIT_SCRIPT_LANGUAGE")),
        bash=_bash(v.get("AGENT_BASH")),
        work_dir=_work_dir(v.get("AGENT_WORK_DIR"), shared=job_user is not None),
        python=_python(v.get("AGENT_PYTHON")),
        drain_timeout_s=_number(v, "AGENT_DRAIN_TIMEOUT_S", 30.0, low=0.0, high=None),
        poll_wait_s=_number(v, "AGENT_POLL_WAIT_S", 25.0, low=1.0, high=MAX_POLL_WAIT_S),
        log_spool_bytes=int(_number(v, "AGENT_LOG_SPOOL_MB", DEFAULT_LOG_SPOOL_MB, low=1,
                                            high=None)
                            * (1 << 20)),
        ca_file=_ca_file(v.get("AGENT_CA_FILE")),
        job_user=job_user,
        exit_after_jobs=int(_number(v, "AGENT_EXIT_AFTER_JOBS", 0, low=1, high=None,
                                    whole=True)) or None
        if "AGENT_EXIT_AFTER_JOBS" in v else None,
        exit_after_idle_s=_number(v, "AGENT_EXIT_AFTER_IDLE_S", 0, low=1.0, high=None)
        if "AGENT_EXIT_AFTER_IDLE_S" in v else None,
        redact_vars=_redact_vars(v.get("AGENT_REDACT_VARS")),
        verifier=_verifier(v),
        policy=_policy(v),
        pre_job_hook=_hook(v.get("AGENT_PRE_JOB_HOOK")),
        pre_job_hook_timeout_s=_number(v, "AGENT_PRE_JOB_HOOK_TIMEOUT_S", 60.0, low=0.1,
                                       high=3600.0),
    )


def _listed(v: Mapping[str, str], name: str, pattern: str, what: str) -> tuple[str, ...] | None:
    if name not in v:
        return None
    items = tuple(dict.fromkeys(i.strip() for i in v[name].split(",") if i.strip()))
    if not items:
        raise ConfigError(f"{name}={v[name]!r} names no {what}")
    for item in items:
        if not re.match(pattern, item):
            raise ConfigError(f"{name}: {item!r} is not a valid {what}")
    return items


def _policy(v: Mapping[str, str]) -> LocalPolicy:
    languages = _listed(v, "AGENT_ALLOW_LANGUAGES", r"^[a-z]{1,20}\Z", "language")
    unknown = [lang for lang in languages or () if lang not in LANGUAGES]
    if unknown:
        raise ConfigError(f"AGENT_ALLOW_LANGUAGES: {', '.join(unknown)} is not one of "
                          f"{', '.join(LANGUAGES)}")
    scripts = _listed(v, "AGENT_ALLOW_SCRIPTS", r"^[a-z0-9_.*?/-]{1,255}\Z",
                      "script glob (lowercase path characters, * and ?)")
    # With script globs, inline jobs (no script to match) are allowed only when said so.
    inline = _flag(v, "AGENT_ALLOW_INLINE") if "AGENT_ALLOW_INLINE" in v else scripts is None
    return LocalPolicy(
        languages=languages,
        workspaces=_listed(v, "AGENT_ALLOW_WORKSPACES", r"^[a-z0-9][a-z0-9-]{0,62}\Z",
                           "workspace id"),
        scripts=scripts, inline=inline)


def _hook(raw: str | None) -> Path | None:
    if raw is None:
        return None
    path = Path(os.path.expanduser(raw))
    if not path.is_file() or (os.name != "nt" and not os.access(path, os.X_OK)):
        raise ConfigError(f"AGENT_PRE_JOB_HOOK={raw!r} is not an executable file")
    return path.absolute()


def _init_script_language(raw: str | None) -> str:
    if raw is None:
        return AgentConfig.init_script_language
    language = raw.strip().lower()
    if language not in INIT_SCRIPT_LANGUAGES:
        raise ConfigError(f"INIT_SCRIPT_LANGUAGE={raw!r} is not one of "
                          f"{', '.join(INIT_SCRIPT_LANGUAGES)}")
    return language


def _bash(raw: str | None) -> str | None:
    if raw is None:
        return None
    path = Path(os.path.expanduser(raw))
    if not path.is_file() or (os.name != "nt" and not os.access(path, os.X_OK)):
        raise ConfigError(f"AGENT_BASH={raw!r} is not an existing executable file (the path "
                          "to bash, e.g. C:\\Program Files\\Git\\bin\\bash.exe)")
    if os.name == "nt" and is_wsl_launcher(str(path.absolute())):
        raise ConfigError(f"AGENT_BASH={raw!r} is WSL's launcher, which runs the script in a "
                          "Linux that cannot see it: use Git for Windows' bash.exe")
    return str(path.absolute())


def _verifier(v: Mapping[str, str]) -> Verifier | None:
    try:
        return load_verifier(v, "AGENT")
    except SigningError as exc:
        raise ConfigError(str(exc)) from None


def _token(raw: str | None, file: str | None) -> str:
    if raw is not None and file is not None:
        raise ConfigError("AGENT_TOKEN and AGENT_TOKEN_FILE are both set: set one of them")
    variable = "AGENT_TOKEN"
    if file is not None:
        variable, raw = "AGENT_TOKEN_FILE", _read_token_file(file)
    if raw is None:
        raise ConfigError("AGENT_TOKEN is not set (nor AGENT_TOKEN_FILE)")
    token = raw.strip()  # a token read from a file usually ends in a newline
    if not token:
        raise ConfigError("AGENT_TOKEN is empty" if file is None
                          else f"AGENT_TOKEN_FILE={file!r} is empty")
    # Checked here so that no HTTP library ever reports a bad header value (the token) back.
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        raise ConfigError(f"{variable} holds characters that cannot be sent in a header")
    return token


def _read_token_file(file: str) -> str:
    try:
        with open(Path(file).expanduser(), encoding="utf-8") as f:
            return f.read(65536)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"AGENT_TOKEN_FILE={file!r} cannot be read: {reason}") from None


def _job_user(raw: str | None) -> JobUser | None:
    if raw is None:
        return None
    if os.name != "posix":
        raise ConfigError(f"AGENT_JOB_USER={raw!r}: running jobs as another user is supported "
                          "on Linux and macOS only")
    import pwd

    name = raw.strip()
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"AGENT_JOB_USER={raw!r} is not a user on this machine") from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)) - {entry.pw_gid}))
    if entry.pw_uid == 0 or entry.pw_gid == 0 or 0 in groups:
        raise ConfigError(f"AGENT_JOB_USER={raw!r} is root or in group root: jobs must run as "
                          "an unprivileged user")
    if os.geteuid() != 0:
        raise ConfigError(
            f"AGENT_JOB_USER={raw!r}: only an agent running as root can start jobs as another "
            f"user, and this one runs as uid {os.geteuid()}: run the agent as root (see "
            "docs/agent-install.md), or unset AGENT_JOB_USER")
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _closed_to(user: JobUser, token_file: str) -> None:
    """AGENT_TOKEN_FILE must not be readable by the jobs' user (by its permission bits)."""
    try:
        info = os.stat(Path(token_file).expanduser())
    except OSError:
        return  # reported by _token, which reads it
    if info.st_uid == user.uid:
        readable = info.st_mode & 0o400
    elif info.st_gid in (user.gid, *user.groups):
        readable = info.st_mode & 0o040
    else:
        readable = info.st_mode & 0o004
    if readable:
        raise ConfigError(
            f"AGENT_TOKEN_FILE={token_file!r} can be read by AGENT_JOB_USER={user.name!r}, so "
            "any job could read the token: make it readable by the agent's user alone "
            "(chown root and chmod 600)")


def _base_url(raw: str | None, warn: Warn, *, insecure: bool) -> str:
    if raw is None:
        raise ConfigError("BASE_INTERNAL_URL is not set (the server's URL, http(s)://host[:port])")
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"BASE_INTERNAL_URL={raw!r} is not an http(s)://host[:port] URL")
    if "@" in parts.netloc:
        # Not echoed: it may hold a password. The agent authenticates with AGENT_TOKEN only.
        raise ConfigError("BASE_INTERNAL_URL must not contain user:password@")
    if parts.query or parts.fragment:
        raise ConfigError(f"BASE_INTERNAL_URL={raw!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"BASE_INTERNAL_URL={raw!r} has an invalid port") from None
    if url.endswith("/"):
        url = url.rstrip("/")
        warn(f"BASE_INTERNAL_URL={raw!r}: trailing slash trimmed, using {url!r}")
    if parts.scheme == "http" and not _is_private(parts.hostname):
        if not insecure:
            raise ConfigError(
                f"BASE_INTERNAL_URL={url!r} is plain http to a host that is neither loopback "
                "nor private: the token and jobs would cross networks unencrypted. Use https "
                "(see AGENT_CA_FILE), or set AGENT_ALLOW_INSECURE=true to send them anyway")
        warn(f"BASE_INTERNAL_URL={url!r} uses plain http to a public host "
             "(AGENT_ALLOW_INSECURE=true): the token and jobs travel unencrypted")
    return url


# Names that never leave a site: single labels and the suffixes reserved for private use.
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


def _is_private(host: str) -> bool:
    """Loopback, private or link-local: the address itself, or every address the name
    resolves to (a name that does not resolve counts as public)."""
    if host == "localhost" or "." not in host.strip(".") and ":" not in host \
            or host.endswith(_PRIVATE_SUFFIXES):
        return True
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return False
        addresses = {ipaddress.ip_address(str(f[4][0]).partition("%")[0]) for f in found}
    return bool(addresses) and all(a.is_loopback or a.is_private or a.is_link_local
                                   for a in addresses)


def _flag(v: Mapping[str, str], name: str) -> bool:
    raw = v.get(name, "false").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name}={v[name]!r} must be true or false")
    return raw in ("true", "1", "yes")


def _name(raw: str | None) -> str:
    if raw is None:
        return f"{socket.gethostname() or 'agent'}-{secrets.token_hex(3)}"
    name = raw.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise ConfigError(f"AGENT_NAME={raw!r} must be 1 to 200 printable characters")
    return name


def _number(
    v: Mapping[str, str], name: str, default: float, *, low: float, high: float | None,
    whole: bool = False,
) -> float:
    raw = v.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name}={raw!r} is not {kind}") from None
    if value != value or value < low or (high is not None and value > high):  # NaN fails too
        bound = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise ConfigError(f"{name}={raw!r} must be {bound}")
    return value


def _work_dir(raw: str | None, *, shared: bool) -> Path | None:
    """Made the agent's alone when missing (0711 with AGENT_JOB_USER, whose jobs pass through
    it; on Windows an ACL for the owner and Administrators, which CPython 3.12.4 and later
    make of mode 0o700 and older ones do not); refused when other users can write to it."""
    if raw is None:
        return None
    path = Path(raw).expanduser()
    mode = 0o711 if shared else 0o700
    try:
        created = not path.exists()
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        if created and os.name == "posix":
            path.chmod(mode)  # whatever the umask
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"AGENT_WORK_DIR={raw!r} cannot be used: {exc.strerror}") from None
    if os.name == "posix":
        _private_dir(raw, path, info)
    return path.resolve()


def _private_dir(raw: str, path: Path, info: os.stat_result) -> None:
    """Another user who can write to the work root could swap a job's files, or the
    directories of its jobs, for their own: the agent (and a python job, whose directory is
    first on sys.path) would then run what they put there."""
    if info.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"AGENT_WORK_DIR={raw!r} belongs to another user (uid {info.st_uid}): "
                          "use a directory of the agent's user (or root's)")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"AGENT_WORK_DIR={raw!r} can be written by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), who could replace what jobs run: make it the "
            "agent's alone (chmod 700, or 711 with AGENT_JOB_USER)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"AGENT_WORK_DIR={raw!r} cannot be written by the agent's user")


def _python(raw: str | None) -> str | None:
    if raw is None:
        return None
    found = shutil.which(raw)
    if found is None:
        raise ConfigError(f"AGENT_PYTHON={raw!r} is not an executable file or command")
    return found


def _ca_file(raw: str | None) -> Path | None:
    if raw is None:
        return None
    path = Path(raw).expanduser()
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"AGENT_CA_FILE={raw!r} is not a readable CA bundle: {exc}") from None
    return path
