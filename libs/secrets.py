"""Project secrets, kept sealed in a JetStream key-value bucket that only the spec-registry writes.

A spec refers to a secret as `secret:<name>`; services that need the value (the scheduler for env,
the router for basic auth) resolve it here at the last moment. The bucket holds only sealed values
(libs/sealing.py): whoever reads the bucket without the key learns nothing but the names. Values never
go into events, logs or API answers. Which names a project has is the registry's SQL index (services/spec_registry), kept as
it writes here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs.bus import SECRETS_BUCKET
from libs.config import get_settings
from libs.logging import get_logger
from libs.sealing import NoSecretsKey, Sealer, Unsealable, is_sealed, new_key, read_key_file, write_key_file
from libs.spec import is_secret_ref, secret_name


log = get_logger("secrets")


class SecretNotFound(KeyError):
    pass


@dataclass(frozen=True, slots=True)
class SecretChange:
    """A secret's value as of `revision` (the bucket's sequence): None once deleted."""

    key: str  # SecretStore.key(project, name)
    value: str | None
    revision: int

    def __repr__(self) -> str:
        return f"SecretChange({self.key!r}, revision={self.revision})"


class SecretStore:
    def __init__(self, kv: KeyValue, sealer: Sealer) -> None:
        self._kv = kv
        self._sealer = sealer

    @classmethod
    async def open(cls, js: JetStreamContext, sealer: Sealer | None = None) -> SecretStore:
        """The bucket (created when missing); `sealer` defaults to the keys of this process's settings."""
        try:
            kv = await js.key_value(SECRETS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(bucket=SECRETS_BUCKET, history=1)
        return cls(kv, sealer or Sealer.from_settings(get_settings()))

    def _unseal(self, key: str, sealed: bytes) -> str | None:
        """The value, or None (as if missing: every user fails closed) when it does not open."""
        try:
            return self._sealer.unseal(sealed)
        except Unsealable:
            log.error("a secret does not open under the configured keys", secret=key)
            return None

    @staticmethod
    def key(project: str, name: str) -> str:
        return f"{project}.{name}"

    async def put(self, project: str, name: str, value: str) -> None:
        await self._kv.put(self.key(project, name), self._sealer.seal(value))

    async def delete(self, project: str, name: str) -> None:
        await self._kv.delete(self.key(project, name))

    async def stored_names(self) -> set[tuple[str, str]]:
        """(project, name) of every secret in the bucket. Lists the bucket's keys, which costs a
        JetStream consumer (gone only minutes later): for the registry's start, never per request;
        the registry answers lookups from its own index of names."""
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return set()
        return {(project, name) for project, _, name in (key.partition(".") for key in keys)}

    async def get(self, project: str, name: str) -> str:
        try:
            entry = await self._kv.get(self.key(project, name))
        except nats.js.errors.KeyNotFoundError as exc:
            raise SecretNotFound(name) from exc
        value = self._unseal(entry.key, entry.value) if entry.value is not None else None
        if value is None:
            raise SecretNotFound(name)
        return value

    async def get_versioned(self, project: str, name: str) -> SecretChange:
        """The secret's value and the revision it was read at (value None, revision 0 when it never
        existed); compare revisions with `changes` to know which is newer."""
        key = self.key(project, name)
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:  # also a deleted key, with its delete's revision
            return SecretChange(key, None, getattr(exc.entry, "revision", None) or 0)
        value = self._unseal(key, entry.value) if entry.value is not None else None
        return SecretChange(key, value, entry.revision or 0)

    async def changes(self) -> AsyncIterator[SecretChange]:
        """Every secret's current value, then each change as it is written (a KV watch): what a
        service holding secrets follows to see rotations and deletions at once."""
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the end of what the bucket held when the watch began
                    continue
                deleted = entry.operation in ("DEL", "PURGE") or entry.value is None
                value = None if deleted else self._unseal(entry.key, entry.value)
                yield SecretChange(entry.key, value, entry.revision or 0)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def reseal_all(self) -> int:
        """Seal every value again under the newest key (key rotation); how many were rewritten."""
        return await self._rewrite(lambda raw: self._sealer.reseal(raw) if is_sealed(raw) else self._sealer.seal(raw.decode()))

    async def seal_plaintext(self) -> int:
        """Seal the values a berth from before sealing stored in plain text (an upgrade); how many."""
        return await self._rewrite(lambda raw: None if is_sealed(raw) else self._sealer.seal(raw.decode()))

    async def _rewrite(self, change: Callable[[bytes], bytes | None]) -> int:
        """Write `change(value)` over every value it does not map to None. An entry written meanwhile
        is left as its writer made it (sealed under the newest key)."""
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return 0
        count = 0
        for key in keys:
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            changed = change(entry.value) if entry.value is not None else None
            if changed is None:
                continue
            try:
                await self._kv.update(key, changed, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            count += 1
        return count

    async def resolve(self, project: str, value: str) -> str:
        """The value itself, or the secret's value when it is a `secret:` reference."""
        return await self.get(project, secret_name(value)) if is_secret_ref(value) else value


async def rotate_key_file(js: JetStreamContext, key_file: Path) -> int:
    """Rotate the sealing key kept in `key_file`: a new key first in the file, every value sealed again
    under it, then the old keys leave the file; how many values were resealed. Processes holding the
    old keys re-read the file when a value sealed under the new one does not open for them."""
    old = read_key_file(key_file)
    if not old:
        raise NoSecretsKey(f"no key in {key_file} to rotate")
    new = new_key()
    write_key_file(key_file, [new, *old])
    store = await SecretStore.open(js, Sealer(lambda: read_key_file(key_file)))
    count = await store.reseal_all()
    write_key_file(key_file, [new])
    return count
