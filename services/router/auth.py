"""Basic auth of a deployment whose spec sets `basicAuthKey: secret:<name>`.

The secret's value is either `user:password` (both must match) or a bare password (any user name).
The value is resolved once per spec version and kept only inside a `BasicAuth`, whose repr hides it.
"""

from __future__ import annotations

import binascii
import hmac

from libs.logging import get_logger
from libs.secrets import SecretNotFound, SecretStore
from libs.spec import secret_name

log = get_logger("router.auth")

CHALLENGE = 'Basic realm="berth"'


class BasicAuth:
    __slots__ = ("_expected", "_with_user")

    def __init__(self, secret: str | None) -> None:
        """`None` denies everyone: a spec asked for auth but its secret cannot be read (fail closed)."""
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


async def resolve_auth(secrets: SecretStore, project: str, basic_auth_key: str | None) -> BasicAuth | None:
    """The deployment's BasicAuth, or None when its spec asks for none."""
    if basic_auth_key is None:
        return None
    name = secret_name(basic_auth_key)
    try:
        return BasicAuth(await secrets.get(project, name))
    except SecretNotFound:
        log.warning("basic-auth secret missing: the deployment refuses every request", ref=basic_auth_key, project=project)
        return BasicAuth(None)
