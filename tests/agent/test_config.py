from __future__ import annotations

import os
from pathlib import Path

import pytest

from tagrun.agent.config import AgentConfig, load_config
from tagrun.agent.errors import ConfigError

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.s3cr3t"


BASE = {"AGENT_TOKEN": TOKEN, "BASE_INTERNAL_URL": "http://127.0.0.1:8000"}


def load(warnings: list[str] | None = None, **values: str | None) -> AgentConfig:
    return load_config({**BASE, **values}, warn=(warnings if warnings is not None else []).append)


def refused(**values: str | None) -> str:
    with pytest.raises(ConfigError) as error:
        load_config({**BASE, **values}, warn=lambda message: None)
    assert TOKEN not in str(error.value)
    return str(error.value)


def test_defaults() -> None:
    config = load()
    assert config.base_url == "http://127.0.0.1:8000"
    assert (config.slots, config.poll_wait_s, config.drain_timeout_s) == (1, 25.0, 30.0)
    assert config.init_script is None and config.work_dir is None and config.python is None
    assert config.ca_file is None
    host, suffix = config.name.rsplit("-", 1)
    assert host and len(suffix) == 6 and int(suffix, 16) >= 0
    assert load().name != config.name


def test_the_token_is_required_and_never_shown() -> None:
    assert refused(AGENT_TOKEN=None) == "AGENT_TOKEN is not set (nor AGENT_TOKEN_FILE)"
    assert refused(AGENT_TOKEN="") == "AGENT_TOKEN is empty"
    assert refused(AGENT_TOKEN="  \n") == "AGENT_TOKEN is empty"
    assert "AGENT_TOKEN" in refused(AGENT_TOKEN=TOKEN + " x")
    assert load(AGENT_TOKEN=TOKEN + "\n").token == TOKEN  # as read from a file
    assert TOKEN not in repr(load())


def test_the_token_can_come_from_a_file_read_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.token"
    path.write_text(TOKEN + "\n")
    assert load(AGENT_TOKEN=None, AGENT_TOKEN_FILE=str(path)).token == TOKEN
    both = refused(AGENT_TOKEN_FILE=str(path))
    assert "AGENT_TOKEN and AGENT_TOKEN_FILE" in both
    missing = refused(AGENT_TOKEN=None, AGENT_TOKEN_FILE=str(tmp_path / "nope"))
    assert missing.startswith("AGENT_TOKEN_FILE=") and "cannot be read" in missing
    assert "cannot be read" in refused(AGENT_TOKEN=None, AGENT_TOKEN_FILE=str(tmp_path))
    (tmp_path / "empty").write_text("\n")
    assert refused(AGENT_TOKEN=None, AGENT_TOKEN_FILE=str(tmp_path / "empty")) \
        == f"AGENT_TOKEN_FILE={str(tmp_path / 'empty')!r} is empty"
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    assert "not UTF-8" in refused(AGENT_TOKEN=None, AGENT_TOKEN_FILE=str(tmp_path / "binary"))


def test_base_url_is_required_and_checked() -> None:
    assert "BASE_INTERNAL_URL is not set" in refused(BASE_INTERNAL_URL=None)
    for bad in ("ftp://host", "localhost:8000", "http://", "http://h:99999", "http://h/?q=1"):
        message = refused(BASE_INTERNAL_URL=bad)
        assert message.startswith("BASE_INTERNAL_URL=") and repr(bad) in message
    message = refused(BASE_INTERNAL_URL="https://user:hunter2@host")
    assert "BASE_INTERNAL_URL" in message and "hunter2" not in message


def test_a_trailing_slash_is_trimmed_with_a_warning() -> None:
    warnings: list[str] = []
    assert load(warnings, BASE_INTERNAL_URL="https://tagrun.example.com/").base_url == \
        "https://tagrun.example.com"
    assert len(warnings) == 1 and "trailing slash" in warnings[0]
    assert load(BASE_INTERNAL_URL="https://h.example/tagrun/").base_url == \
        "https://h.example/tagrun"


@pytest.mark.parametrize("url", ["http://tagrun.example.com", "http://8.8.8.8:8000",
                                 "http://does-not-resolve.invalid"])
def test_plain_http_to_a_public_host_is_refused_unless_allowed(url: str) -> None:
    message = refused(BASE_INTERNAL_URL=url)
    assert message.startswith(f"BASE_INTERNAL_URL={url!r} is plain http")
    assert "AGENT_ALLOW_INSECURE=true" in message
    warnings: list[str] = []
    assert load(warnings, BASE_INTERNAL_URL=url, AGENT_ALLOW_INSECURE="true").base_url == url
    assert len(warnings) == 1 and "unencrypted" in warnings[0]
    assert "AGENT_ALLOW_INSECURE='maybe'" in refused(BASE_INTERNAL_URL=url,
                                                     AGENT_ALLOW_INSECURE="maybe")


@pytest.mark.parametrize("url", [
    "http://localhost:8000", "http://127.0.0.1", "http://[::1]:8000", "http://10.1.2.3",
    "http://192.168.0.10:8000", "http://172.16.5.4", "https://tagrun.example.com",
    "http://tagrun.internal:8000", "http://buildbox", "http://ci.home.arpa",
])
def test_no_warning_for_local_hosts_or_https(url: str) -> None:
    warnings: list[str] = []
    load(warnings, BASE_INTERNAL_URL=url)
    assert warnings == []


def test_mode_must_be_agent_or_unset() -> None:
    assert load(MODE="agent").base_url
    assert load(MODE="").base_url
    message = refused(MODE="worker")
    assert message.startswith("MODE='worker'")


def test_slots() -> None:
    assert load(AGENT_SLOTS="8").slots == 8
    assert refused(AGENT_SLOTS="0") == "AGENT_SLOTS='0' must be between 1 and 10000"
    assert refused(AGENT_SLOTS="two") == "AGENT_SLOTS='two' is not a whole number"
    assert refused(AGENT_SLOTS="1.5") == "AGENT_SLOTS='1.5' is not a whole number"


def test_log_spool() -> None:
    assert load().log_spool_bytes == 64 << 20
    assert load(AGENT_LOG_SPOOL_MB="2.5").log_spool_bytes == 5 << 19
    assert refused(AGENT_LOG_SPOOL_MB="0.5") == "AGENT_LOG_SPOOL_MB='0.5' must be at least 1"
    assert refused(AGENT_LOG_SPOOL_MB="0").startswith("AGENT_LOG_SPOOL_MB='0' must be")
    assert refused(AGENT_LOG_SPOOL_MB="lots") == "AGENT_LOG_SPOOL_MB='lots' is not a number"


def test_poll_wait() -> None:
    assert load(AGENT_POLL_WAIT_S="5.5").poll_wait_s == 5.5
    assert refused(AGENT_POLL_WAIT_S="61") == "AGENT_POLL_WAIT_S='61' must be between 1 and 60"
    assert refused(AGENT_POLL_WAIT_S="0").startswith("AGENT_POLL_WAIT_S='0'")
    assert refused(AGENT_POLL_WAIT_S="nan").startswith("AGENT_POLL_WAIT_S='nan'")


def test_drain_timeout() -> None:
    assert load(AGENT_DRAIN_TIMEOUT_S="0").drain_timeout_s == 0
    assert load(AGENT_DRAIN_TIMEOUT_S="90").drain_timeout_s == 90
    assert refused(AGENT_DRAIN_TIMEOUT_S="-1") == "AGENT_DRAIN_TIMEOUT_S='-1' must be at least 0"
    assert refused(AGENT_DRAIN_TIMEOUT_S="soon").startswith("AGENT_DRAIN_TIMEOUT_S='soon'")


def test_name() -> None:
    assert load(AGENT_NAME=" gpu-box-1 ").name == "gpu-box-1"
    assert refused(AGENT_NAME="x" * 201).startswith("AGENT_NAME=")
    assert refused(AGENT_NAME="a\nb").startswith("AGENT_NAME=")


def test_work_dir_is_created(tmp_path: Path) -> None:
    assert load(AGENT_WORK_DIR=str(tmp_path / "a" / "b")).work_dir == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    assert refused(AGENT_WORK_DIR=str(tmp_path / "file")).startswith("AGENT_WORK_DIR=")


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_work_dir_made_by_the_agent_is_its_alone(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        load(AGENT_WORK_DIR=str(tmp_path / "private"))
    finally:
        os.umask(old)
    assert oct((tmp_path / "private").stat().st_mode & 0o7777) == "0o700"


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes and owners")
def test_a_work_dir_other_users_can_write_to_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for mode in (0o777, 0o770, 0o722):
        work.chmod(mode)
        assert refused(AGENT_WORK_DIR=str(work)) == (
            f"AGENT_WORK_DIR={str(work)!r} can be written by other users (mode {mode:04o}), "
            "who could replace what jobs run: make it the agent's alone (chmod 700, or 711 "
            "with AGENT_JOB_USER)")
    for mode in (0o1777, 0o755, 0o711, 0o700):  # sticky: no one removes another's entries
        work.chmod(mode)
        assert load(AGENT_WORK_DIR=str(work)).work_dir == work
    if os.geteuid() == 0:  # root can hand it to another user
        os.chown(work, 65534, 65534)
        assert refused(AGENT_WORK_DIR=str(work)) == (
            f"AGENT_WORK_DIR={str(work)!r} belongs to another user (uid 65534): use a "
            "directory of the agent's user (or root's)")


def test_python_must_be_an_executable(tmp_path: Path) -> None:
    assert load(AGENT_PYTHON="python3").python
    assert refused(AGENT_PYTHON=str(tmp_path / "nope")).startswith("AGENT_PYTHON=")


def test_ca_file_must_be_a_ca_bundle(tmp_path: Path) -> None:
    assert refused(AGENT_CA_FILE=str(tmp_path / "missing.pem")).startswith("AGENT_CA_FILE=")
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert refused(AGENT_CA_FILE=str(tmp_path / "junk.pem")).startswith("AGENT_CA_FILE=")


def test_init_script() -> None:
    assert load(INIT_SCRIPT="pip install x").init_script == "pip install x"
    assert load(INIT_SCRIPT="  ").init_script is None


def test_a_ca_bundle_is_accepted() -> None:
    import certifi

    assert load(AGENT_CA_FILE=certifi.where()).ca_file == Path(certifi.where())


@pytest.mark.skipif(os.name != "posix", reason="AGENT_JOB_USER exists on Linux and macOS only")
def test_the_job_user_must_be_a_real_unprivileged_user() -> None:
    assert refused(AGENT_JOB_USER="no-such-user-here") \
        == "AGENT_JOB_USER='no-such-user-here' is not a user on this machine"
    for root in ("root", "0"):
        assert refused(AGENT_JOB_USER=root) == (
            f"AGENT_JOB_USER={root!r} is root or in group root: jobs must run as an "
            "unprivileged user")


@pytest.mark.skipif(os.name != "posix", reason="AGENT_JOB_USER exists on Linux and macOS only")
def test_the_job_user_needs_a_root_agent_and_a_token_file_it_cannot_read(
    tmp_path: Path
) -> None:
    """As root (CI): the user is resolved, and a token file it could read is refused. As an
    ordinary user: the agent says that only root can switch users."""
    import pwd  # POSIX only, like this test

    from tests.support.users import unprivileged_user

    name = unprivileged_user("tagrun-test-job")
    if name is None:
        assert "only an agent running as root" in refused(AGENT_JOB_USER="nobody")
        return
    entry = pwd.getpwnam(name)
    user = load(AGENT_JOB_USER=name).job_user
    assert user is not None
    assert (user.name, user.uid, user.gid, user.home) \
        == (name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
    assert load(AGENT_JOB_USER=str(entry.pw_uid)).job_user == user
    shared = tmp_path / "shared"  # its jobs pass through the work root to their directory
    assert load(AGENT_JOB_USER=name, AGENT_WORK_DIR=str(shared)).work_dir == shared
    assert oct(shared.stat().st_mode & 0o7777) == "0o711"
    path = tmp_path / "agent.token"
    path.write_text(TOKEN)
    for mode, owner in ((0o600, 0), (0o640, 0), (0o604, 0), (0o600, entry.pw_uid)):
        os.chown(path, owner, entry.pw_gid if mode == 0o640 else 0)
        path.chmod(mode)
        values = {"AGENT_TOKEN": None, "AGENT_TOKEN_FILE": str(path), "AGENT_JOB_USER": name}
        if (mode, owner) == (0o600, 0):
            assert load(**values).token == TOKEN
        else:
            assert refused(**values) == (
                f"AGENT_TOKEN_FILE={str(path)!r} can be read by AGENT_JOB_USER={name!r}, so "
                "any job could read the token: make it readable by the agent's user alone "
                "(chown root and chmod 600)")


def test_verify_keys_and_mode(tmp_path: Path) -> None:
    from tagrun.shared import signing

    key, _ = signing.generate("ci")
    keys = tmp_path / "keys"
    keys.write_text(f"# trusted\n\n{key.public_line()}  # ci's key\n")
    config = load(AGENT_VERIFY_KEYS=str(keys))
    assert config.verifier is not None and config.verifier.mode == "block"
    assert config.verifier.key_ids() == ["ci"]
    assert load(AGENT_VERIFY_KEYS=str(keys), AGENT_VERIFY="WARN").verifier.mode == "warn"  # type: ignore[union-attr]
    assert load().verifier is None
    assert refused(AGENT_VERIFY_KEYS=str(keys), AGENT_VERIFY="maybe") == \
        "AGENT_VERIFY='maybe' must be block or warn"
    assert "AGENT_VERIFY is set but AGENT_VERIFY_KEYS is not" in refused(AGENT_VERIFY="warn")
    assert "cannot be read" in refused(AGENT_VERIFY_KEYS=str(tmp_path / "missing"))
    keys.write_text(f"{key.public_line()}\n{key.public_line()}\n")
    assert "line 2: key id 'ci' appears twice" in refused(AGENT_VERIFY_KEYS=str(keys))
    keys.write_text("ci not-base64!\n")
    assert "line 1: key 'ci' is not a base64 Ed25519 public key" in \
        refused(AGENT_VERIFY_KEYS=str(keys))
    keys.write_text("# nothing\n")
    assert "holds no key" in refused(AGENT_VERIFY_KEYS=str(keys))


def test_local_policy_and_hook(tmp_path: Path) -> None:
    policy = load(AGENT_ALLOW_LANGUAGES="bash, python", AGENT_ALLOW_WORKSPACES="prod",
                  AGENT_ALLOW_SCRIPTS="f/deploy/*,f/backup/?").policy
    assert (policy.languages, policy.workspaces, policy.scripts, policy.inline) == \
        (("bash", "python"), ("prod",), ("f/deploy/*", "f/backup/?"), False)
    assert load(AGENT_ALLOW_SCRIPTS="f/*", AGENT_ALLOW_INLINE="true").policy.inline is True
    assert not load().policy.restricts and load().policy.wire() is None
    assert refused(AGENT_ALLOW_LANGUAGES="bash,cobol").startswith(
        "AGENT_ALLOW_LANGUAGES: cobol is not one of")
    assert refused(AGENT_ALLOW_WORKSPACES=" , ") == \
        "AGENT_ALLOW_WORKSPACES=' , ' names no workspace id"
    assert "AGENT_ALLOW_SCRIPTS: 'F/Deploy' is not a valid script glob" in \
        refused(AGENT_ALLOW_SCRIPTS="F/Deploy")
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    if os.name != "nt":  # Windows has no execute bit: any file will do there
        assert refused(AGENT_PRE_JOB_HOOK=str(hook)).startswith("AGENT_PRE_JOB_HOOK=")
        hook.chmod(0o755)
    assert refused(AGENT_PRE_JOB_HOOK=str(tmp_path / "missing")).endswith(
        "is not an executable file")
    assert load(AGENT_PRE_JOB_HOOK=str(hook)).pre_job_hook == hook
    assert "AGENT_PRE_JOB_HOOK_TIMEOUT_S" in refused(AGENT_PRE_JOB_HOOK=str(hook),
                                                     AGENT_PRE_JOB_HOOK_TIMEOUT_S="0")
