"""Sealing secret values: authenticated encryption (Fernet, from `cryptography`) under berth's keys.

The secrets bucket holds only sealed values (Fernet tokens). A process that must read a value (the
scheduler for env, the router for basic auth, the integrations service for credentials) unseals it
when it needs it; the registry only seals. The keys come from configuration, newest first:
`BERTH_SECRETS_KEY` (comma-separated), else the key file (`BERTH_SECRETS_KEY_FILE`, by default
`<data dir>/secrets.key`, one key per line) that `berth up` makes on its first start, owner-only.

Rotation (`libs.secrets.rotate_key_file`): a new key goes first in the file, every value is sealed
again under it, then the old key leaves the file. Every process reads the keys at each use, so each
seals under the new key and opens the resealed values without a restart.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from libs.config import Settings


class NoSecretsKey(RuntimeError):
    """No key is configured: secrets can neither be written nor read."""


class Unsealable(ValueError):
    """A stored value does not open under any configured key (wrong key, or tampered with)."""


def is_sealed(raw: bytes) -> bool:
    """Whether a stored value is a Fernet token (version byte 0x80, base64url: `gAAAAA…`) rather than
    a value stored in plain text before berth sealed them."""
    return raw.startswith(b"gAAAAA")


def new_key() -> bytes:
    return Fernet.generate_key()


def read_key_file(path: Path) -> list[bytes]:
    try:
        return [line.strip().encode() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def write_key_file(path: Path, keys: list[bytes]) -> None:
    """Owner-only, replaced atomically: a reader sees the old keys or the new ones, never half."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("".join(key.decode() + "\n" for key in keys))
    os.replace(tmp, path)


def ensure_key_file(path: Path) -> bool:
    """Make a key file with one new key unless one exists; whether it was made."""
    if read_key_file(path):
        return False
    write_key_file(path, [new_key()])
    return True


class Sealer:
    """Seals under the newest key; opens under any configured key. The keys are read at each use (a
    small file, or the settings): after a rotation every process seals and opens with the new keys
    without a restart."""

    def __init__(self, load_keys: Callable[[], list[bytes]]) -> None:
        self._load_keys = load_keys
        self._lock = threading.Lock()
        self._held: tuple[tuple[bytes, ...], MultiFernet] | None = None

    @classmethod
    def from_keys(cls, *keys: bytes) -> Sealer:
        return cls(lambda: list(keys))

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        if settings.secrets_key is not None:
            keys = [k.strip().encode() for k in settings.secrets_key.get_secret_value().split(",") if k.strip()]
            return cls(lambda: keys)
        path = settings.resolved_secrets_key_file
        return cls(lambda: read_key_file(path))

    def _keys(self) -> MultiFernet:
        keys = tuple(self._load_keys())
        if not keys:
            raise NoSecretsKey("no secrets key: set BERTH_SECRETS_KEY, or BERTH_SECRETS_KEY_FILE (`berth up` makes one)")
        with self._lock:
            if self._held is None or self._held[0] != keys:
                self._held = (keys, MultiFernet([Fernet(key) for key in keys]))
            return self._held[1]

    def seal(self, value: str) -> bytes:
        return self._keys().encrypt(value.encode())

    def unseal(self, token: bytes) -> str:
        try:
            return self._keys().decrypt(token).decode()
        except InvalidToken:
            raise Unsealable("a secret value does not open under the configured keys") from None

    def reseal(self, token: bytes) -> bytes:
        """The same value sealed under the newest key (MultiFernet.rotate)."""
        try:
            return self._keys().rotate(token)
        except InvalidToken:
            raise Unsealable("a secret value does not open under the configured keys") from None
