"""Fetching one integration, shared by the integrations service and the init container of a Pod on
the kubernetes runtime (docs/kubernetes.md, "Integrations").

- `credential_fields` names the secret references an integration needs, `fetch` fetches it with their
  values (unsealed by the caller, held only for the fetch).
- `python -m services.integrations.fetch <volume>` is the init container's entry point: it fetches
  the git-lfs and s3 integrations listed in the environment variable `BERTH_FETCH_INTEGRATIONS` (JSON:
  `{"integrations": [<spec of each>], "secrets": {"<secret name>": "<env var holding its value>"}}`)
  into `<volume>/<name>`. The spec holds `secret:<name>` references only; each value comes from the
  environment variable the map names, which the Pod fills from a Kubernetes Secret (`secretKeyRef`), so
  no value is in the Pod spec. A failure prints the reason (never a credential) and exits 1: the kubelet
  restarts the init container with its back-off, and the model container does not start.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from libs.spec import GitLfsIntegration, Integration, S3Integration, VolumeIntegration, is_secret_ref, secret_name
from services.integrations import git, s3, volume
from services.integrations.cache import Cache, Fetched, FetchFailed

CONFIG_ENV = "BERTH_FETCH_INTEGRATIONS"
# The cache the fetch works in, inside the volume; removed once the contents are in place.
WORK_DIR = ".berth-fetch"
EXIT_FAILED = 1
EXIT_USAGE = 2
_INTEGRATIONS = TypeAdapter(list[Integration])


def credential_fields(integration: Integration) -> dict[str, str]:
    """field -> value as the spec gives it (`secret:<name>` or, for a git username, plain text) of the
    credentials a fetch of `integration` needs; empty when it needs none."""
    if isinstance(integration, GitLfsIntegration):
        fields = {"sshKey": integration.sshKey} if integration.sshKey is not None else {}
        if integration.password is not None:
            fields |= {"username": integration.username or git.DEFAULT_USERNAME, "password": integration.password}
        return fields
    if isinstance(integration, S3Integration) and integration.secretAccessKey is not None:
        return {"secretAccessKey": integration.secretAccessKey}
    return {}


def fetch(integration: Integration, cache: Cache, values: dict[str, str], host_volumes: bool = True) -> Fetched:
    """Fetch (or, for a volume, check) one integration; `values` are its credential fields' plain
    values (see credential_fields). host_volumes: a volume's hostPath is a directory of this machine."""
    if isinstance(integration, VolumeIntegration):
        return volume.resolve(integration, on_this_machine=host_volumes)
    if isinstance(integration, GitLfsIntegration):
        auth = git.GitCredentials(values["username"], values["password"]) if "password" in values else None
        key = git.SshKey(values["sshKey"]) if "sshKey" in values else None
        return git.fetch(integration, cache, auth, key)
    credentials = None
    if integration.accessKeyId is not None and "secretAccessKey" in values:
        credentials = s3.S3Credentials(integration.accessKeyId, values["secretAccessKey"])
    return s3.sync(integration, credentials, cache)


def fetch_into(
    target: Path, integrations: list[Integration], secret: Callable[[str], str]
) -> list[tuple[str, Fetched]]:
    """Fetch each git-lfs and s3 integration into `target/<name>` (replacing what an earlier run of
    the init container left there); `secret(name)` is a secret's value. Volumes are the kubelet's."""
    cache = Cache(target / WORK_DIR)
    done: list[tuple[str, Fetched]] = []
    try:
        for integration in integrations:
            if isinstance(integration, VolumeIntegration):
                continue
            try:
                values = {
                    field: secret(secret_name(value)) if is_secret_ref(value) else value
                    for field, value in credential_fields(integration).items()
                }
                fetched = fetch(integration, cache, values)
            except FetchFailed as exc:
                raise FetchFailed(f"integration {integration.name}: {exc}") from None
            place = target / integration.name
            shutil.rmtree(place, ignore_errors=True)
            os.replace(fetched.path, place)  # same file system: a rename, not a copy
            done.append((integration.name, fetched))
    finally:
        shutil.rmtree(cache.root, ignore_errors=True)  # the working copies: hard links, no bytes of their own
    return done


def _say(**fields: object) -> None:
    """One JSON line on stdout (the container's log): never a credential."""
    print(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m services.integrations.fetch <volume>  (with {CONFIG_ENV} set)", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = json.loads(os.environ[CONFIG_ENV])
        integrations = _INTEGRATIONS.validate_python(config["integrations"])
        secrets: dict[str, str] = dict(config.get("secrets", {}))
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        print(f"{CONFIG_ENV} is missing or not valid: {type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE

    def secret(name: str) -> str:
        variable = secrets.get(name)
        if variable is None or variable not in os.environ:
            raise FetchFailed(f"secret {name!r} is not in this container's environment")
        return os.environ[variable]

    target = Path(argv[0])
    try:
        fetched = fetch_into(target, integrations, secret)
    except FetchFailed as exc:
        _say(event="failed", reason=str(exc))
        return EXIT_FAILED
    for name, one in fetched:
        _say(event="fetched", integration=name, path=str(target / name), identity=one.identity,
             files=one.total.files, bytes=one.total.bytes)  # fmt: skip
    _say(event="ready", volume=str(target))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
