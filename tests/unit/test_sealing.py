"""Sealing secret values: authenticated, keyed, rotatable; the key file is the owner's only."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.config import Settings
from libs.sealing import NoSecretsKey, Sealer, Unsealable, ensure_key_file, new_key, read_key_file, write_key_file


def test_a_sealed_value_hides_the_value_and_opens_only_under_the_key() -> None:
    sealer = Sealer.from_keys(new_key())
    token = sealer.seal("hunter2-plain")
    assert b"hunter2" not in token
    assert sealer.unseal(token) == "hunter2-plain"
    assert sealer.seal("hunter2-plain") != token  # a fresh IV each time: equal values do not look equal
    with pytest.raises(Unsealable):
        Sealer.from_keys(new_key()).unseal(token)


def test_a_tampered_value_does_not_open() -> None:
    sealer = Sealer.from_keys(new_key())
    token = bytearray(sealer.seal("value"))
    token[-5] ^= 0x01
    with pytest.raises(Unsealable):
        sealer.unseal(bytes(token))


def test_no_key_refuses_to_seal() -> None:
    with pytest.raises(NoSecretsKey):
        Sealer.from_keys().seal("value")


def test_the_key_file_is_made_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secrets.key"
    assert ensure_key_file(path)
    first = read_key_file(path)
    assert not ensure_key_file(path) and read_key_file(path) == first  # the next start keeps it
    assert path.stat().st_mode & 0o077 == 0


def test_a_running_process_seals_and_opens_with_the_keys_of_the_file_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    old, new = new_key(), new_key()
    write_key_file(path, [old])
    process = Sealer.from_settings(Settings(secrets_key=None, secrets_key_file=path, _env_file=None))
    assert process.unseal(Sealer.from_keys(old).seal("v1")) == "v1"
    write_key_file(path, [new])
    assert process.unseal(Sealer.from_keys(new).seal("v2")) == "v2"
    assert Sealer.from_keys(new).unseal(process.seal("v3")) == "v3"  # the writer seals under the new key


def test_the_variable_takes_keys_newest_first() -> None:
    old, new = new_key(), new_key()
    sealer = Sealer.from_settings(Settings(secrets_key=f"{new.decode()},{old.decode()}", _env_file=None))
    assert sealer.unseal(Sealer.from_keys(old).seal("kept")) == "kept"
    assert Sealer.from_keys(new).unseal(sealer.seal("sealed under the newest")) == "sealed under the newest"
