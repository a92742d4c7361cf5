"""The key ring: AES-GCM under keys the database never holds, bound to each secret's name."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tagrun.server.config import ConfigError
from tagrun.server.vault import KEY_FILE, KeyRing, SecretUnreadable, load_keyring, new_key


def test_the_standalone_key_file_is_made_once_readable_by_its_owner_alone(tmp_path: Path
                                                                         ) -> None:
    ring = load_keyring({}, tmp_path, embedded=True)
    assert ring is not None
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_keyring({}, tmp_path, embedded=True)
    assert again is not None and again.ids == ring.ids  # the same key at every start
    assert load_keyring({}, tmp_path, embedded=False) is None  # an external database: no key


def test_a_value_opens_only_with_its_key_and_under_its_own_name() -> None:
    ring = KeyRing.of([new_key()], "TAGRUN_SECRETS_KEY")
    kid, sealed = ring.encrypt("default", "DB_PASSWORD", "hunter2-value")
    assert b"hunter2" not in sealed
    assert ring.decrypt("default", "DB_PASSWORD", kid, sealed) == "hunter2-value"
    with pytest.raises(SecretUnreadable, match="altered"):  # copied onto another secret
        ring.decrypt("default", "EDGE_TOKEN", kid, sealed)
    with pytest.raises(SecretUnreadable, match="altered"):
        ring.decrypt("default", "DB_PASSWORD", kid, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    other = KeyRing.of([new_key()], "TAGRUN_SECRETS_KEY")
    with pytest.raises(SecretUnreadable, match="does not hold"):
        other.decrypt("default", "DB_PASSWORD", kid, sealed)


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old, new = new_key(), new_key()
    _, sealed = KeyRing.of([old], "k").encrypt("w", "N", "value-1")
    ring = KeyRing.of([new, old], "k")
    assert ring.decrypt("w", "N", KeyRing.of([old], "k").primary, sealed) == "value-1"
    assert ring.encrypt("w", "N", "value-2")[0] == KeyRing.of([new], "k").primary


def test_a_malformed_key_is_refused_without_being_repeated() -> None:
    with pytest.raises(ConfigError) as refused:
        load_keyring({"TAGRUN_SECRETS_KEY": "sekrit-but-short"}, Path("/nonexistent"),
                     embedded=False)
    assert "TAGRUN_SECRETS_KEY" in str(refused.value)
    assert "sekrit" not in str(refused.value)
