"""Basic auth of a deployment whose traffic assignment names `basic_auth_key: secret:<name>`.

The secret's value is either `user:password` (both must match) or a bare password (any user name).
The value is kept only inside a `BasicAuth`, whose repr hides it.

`AuthSecrets` holds one `BasicAuth` per secret in use, shared by every route that names it, and
follows the secrets bucket with a KV watch: a rotated or deleted secret takes effect as soon as the
watch delivers the change (milliseconds after the registry writes it on a healthy bus), not at the
next re-read. A deleted or unreadable secret refuses every request (fail closed). Secrets no route
uses are not kept.
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
from dataclasses import dataclass, field

from libs.logging import get_logger
from libs.secrets import SecretChange, SecretStore
from libs.spec import secret_name
from libs.tasks import cancel_and_wait

log = get_logger("router.auth")

CHALLENGE = 'Basic realm="berth"'


class BasicAuth:
    __slots__ = ("_expected", "_with_user")

    def __init__(self, secret: str | None) -> None:
        """`None` denies everyone: auth is asked for but its secret cannot be read (fail closed)."""
        self.set(secret)

    def set(self, secret: str | None) -> None:
        self._expected = secret.encode() if secret is not None else None
        self._with_user = secret is not None and ":" in secret

    def __repr__(self) -> str:
        return "BasicAuth(<redacted>)"

    def allows(self, authorization: str | None) -> bool:
        if self._expected is None or not authorization:
            return False
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = binascii.a2b_base64(encoded.strip(), strict_mode=True)
        except (binascii.Error, ValueError):
            return False
        if not self._with_user:
            credentials = credentials.partition(b":")[2]
        return hmac.compare_digest(credentials, self._expected)


@dataclass(eq=False)
class _Held:
    auth: BasicAuth = field(default_factory=lambda: BasicAuth(None))
    users: int = 0
    revision: int = -1  # of the value held; -1 until first read
    loaded: asyncio.Event = field(default_factory=asyncio.Event)


class AuthSecrets:
    """The basic-auth secrets routes use, kept current by a watch of the secrets bucket."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store
        self._held: dict[str, _Held] = {}  # SecretStore.key -> what routes share
        self._keys: dict[BasicAuth, str] = {}
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, store: SecretStore) -> AuthSecrets:
        secrets = cls(store)
        secrets._watch = asyncio.create_task(secrets._follow(), name="router:secrets-watch")
        return secrets

    async def hold(self, project: str, basic_auth_key: str) -> BasicAuth:
        """The shared BasicAuth of `secret:<name>` in `project`, read before it is returned; each hold
        is paired with a `release`."""
        name = secret_name(basic_auth_key)
        key = SecretStore.key(project, name)
        held = self._held.get(key)
        if held is not None:
            held.users += 1
            await held.loaded.wait()
            return held.auth
        held = self._held[key] = _Held()
        self._keys[held.auth] = key
        held.users += 1
        try:
            change = await self._store.get_versioned(project, name)
        except BaseException:
            self.release(held.auth)
            raise
        finally:
            held.loaded.set()  # whoever waits meanwhile gets it refusing everyone until the watch fills it
        self._apply(held, change)
        if change.value is None:
            log.warning("basic-auth secret missing: the deployment refuses every request", ref=basic_auth_key, project=project)
        return held.auth

    def release(self, auth: BasicAuth) -> None:
        key = self._keys.get(auth)
        held = self._held.get(key) if key is not None else None
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del self._held[key], self._keys[auth]

    def revision(self, project: str, name: str) -> int:
        """The bucket revision of the value held for a secret in use (-1 when not held): lets a
        caller see that a change has reached the router."""
        held = self._held.get(SecretStore.key(project, name))
        return held.revision if held is not None else -1

    def __len__(self) -> int:
        return len(self._held)

    async def close(self) -> None:
        if self._watch is not None:
            await cancel_and_wait([self._watch])

    async def _follow(self) -> None:
        while True:
            try:
                async for change in self._store.changes():
                    held = self._held.get(change.key)
                    if held is not None:
                        self._apply(held, change)
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus went away: watch again (it resumes with every key's latest)
                log.warning("secrets watch lost; watching again", exc_info=True)
                await asyncio.sleep(1.0)

    @staticmethod
    def _apply(held: _Held, change: SecretChange) -> None:
        """Take `change` unless a newer revision is held (a read and the watch may cross)."""
        if change.revision >= held.revision:
            held.auth.set(change.value)
            held.revision = change.revision
