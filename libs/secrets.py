"""Project secrets, kept in a JetStream key-value bucket that only the spec-registry writes.

A spec refers to a secret as `secret:<name>`; services that need the value (the scheduler for env,
the router for basic auth) resolve it here at the last moment. Values never go into events, logs or
API answers. Which names a project has is the registry's SQL index (services/spec_registry), kept as
it writes here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs.bus import SECRETS_BUCKET
from libs.spec import is_secret_ref, secret_name


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
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> SecretStore:
        try:
            kv = await js.key_value(SECRETS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(bucket=SECRETS_BUCKET, history=1)
        return cls(kv)

    @staticmethod
    def key(project: str, name: str) -> str:
        return f"{project}.{name}"

    async def put(self, project: str, name: str, value: str) -> None:
        await self._kv.put(self.key(project, name), value.encode())

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
        if entry.value is None:
            raise SecretNotFound(name)
        return entry.value.decode()

    async def get_versioned(self, project: str, name: str) -> SecretChange:
        """The secret's value and the revision it was read at (value None, revision 0 when it never
        existed); compare revisions with `changes` to know which is newer."""
        key = self.key(project, name)
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:  # also a deleted key, with its delete's revision
            return SecretChange(key, None, getattr(exc.entry, "revision", None) or 0)
        return SecretChange(key, entry.value.decode() if entry.value is not None else None, entry.revision or 0)

    async def changes(self) -> AsyncIterator[SecretChange]:
        """Every secret's current value, then each change as it is written (a KV watch): what a
        service holding secrets follows to see rotations and deletions at once."""
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the end of what the bucket held when the watch began
                    continue
                deleted = entry.operation in ("DEL", "PURGE") or entry.value is None
                yield SecretChange(entry.key, None if deleted else entry.value.decode(), entry.revision or 0)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def resolve(self, project: str, value: str) -> str:
        """The value itself, or the secret's value when it is a `secret:` reference."""
        return await self.get(project, secret_name(value)) if is_secret_ref(value) else value
