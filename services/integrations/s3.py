"""s3 integrations: sync a bucket or prefix with boto3 into the source's mirror, fetching only the
objects whose ETag changed (and removing those gone), in parallel; the content identity is a hash
of every key and ETag."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from libs.spec import S3Integration
from services.integrations.cache import Cache, Fetched, FetchFailed, Refused, Tally, digest, os_error

if TYPE_CHECKING:
    import botocore.exceptions

MANIFEST = ".berth-manifest.json"  # key -> ETag of what the mirror holds
PARALLEL_TRANSFERS = 8
AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403"}
MISSING_CODES = {"NoSuchBucket", "404"}


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return "S3Credentials(<redacted>)"


def split_url(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix


def source(integration: S3Integration) -> tuple[str, ...]:
    """What identifies the mirror in the cache: one per endpoint, bucket and prefix."""
    bucket, prefix = split_url(integration.url)
    return ("s3", integration.endpointUrl or "", bucket, prefix)


def sync(integration: S3Integration, credentials: S3Credentials | None, cache: Cache) -> Fetched:
    """Sync the bucket or prefix into the cache. Without credentials boto3's default chain applies
    (environment, profile, instance role)."""
    # Imported on the first s3 sync: boto3 and botocore hold ~25 MiB and take 0.5 s to import, which
    # a control plane without s3 integrations should not pay.
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    bucket, prefix = split_url(integration.url)
    options: dict[str, Any] = {"region_name": integration.region, "endpoint_url": integration.endpointUrl}
    if credentials is not None:
        options |= {"aws_access_key_id": credentials.access_key_id, "aws_secret_access_key": credentials.secret_access_key}
    client = boto3.client("s3", config=Config(retries={"max_attempts": 3}, max_pool_connections=PARALLEL_TRANSFERS), **options)
    mirror = cache.source_dir(*source(integration))
    try:
        objects = _list(client, bucket, prefix)
        fetched = _update_mirror(client, bucket, objects, mirror)
    except botocore.exceptions.ClientError as exc:
        raise FetchFailed(_client_error(exc, bucket)) from None
    except botocore.exceptions.NoCredentialsError:
        raise FetchFailed("no credentials: give accessKeyId and secretAccessKey, or configure the machine's") from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as exc:
        raise FetchFailed(f"s3 endpoint unreachable: {type(exc).__name__}") from None
    except OSError as exc:
        raise FetchFailed(os_error(exc)) from None
    identity = digest(*(f"{key}={etag}" for key, (_, etag) in sorted(objects.items())))
    try:
        path, total = cache.publish("s3", identity, mirror, skip=(MANIFEST,))
    except Refused as exc:
        raise FetchFailed(str(exc)) from None
    except OSError as exc:
        raise FetchFailed(os_error(exc)) from None
    return Fetched(identity, path, total, fetched)


def _list(client: Any, bucket: str, prefix: str) -> dict[str, tuple[str, str]]:
    """Every object under the prefix: path in the mirror -> (key, ETag); folder placeholders left out."""
    found: dict[str, tuple[str, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix):].lstrip("/")
            if relative and not relative.endswith("/"):
                found[_safe_key(relative)] = (item["Key"], item["ETag"])
    return found


def _safe_key(relative: str) -> str:
    """A key becomes a file path in the mirror: one that would climb out of it is refused."""
    parts = PurePosixPath(relative).parts
    if any(part in ("..", ".") for part in parts) or relative.startswith("/") or relative == MANIFEST:
        raise FetchFailed(f"object key {relative!r} does not map to a file inside the integration")
    return relative


def _update_mirror(client: Any, bucket: str, objects: dict[str, tuple[str, str]], mirror: Path) -> Tally:
    manifest_path = mirror / MANIFEST
    held: dict[str, str] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    wanted = [path for path, (_, etag) in objects.items() if held.get(path) != etag or not (mirror / path).is_file()]
    for key in set(held) - set(objects):
        (mirror / key).unlink(missing_ok=True)
        held.pop(key)

    def download(key: str) -> int:
        path = mirror / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        client.download_file(bucket, objects[key][0], str(partial))
        os.replace(partial, path)  # a new inode: published copies (hard links) keep the old bytes
        return path.stat().st_size

    with ThreadPoolExecutor(PARALLEL_TRANSFERS) as pool:
        sizes = list(pool.map(download, wanted))
    held.update({key: objects[key][1] for key in wanted})
    manifest_path.write_text(json.dumps(held))
    return Tally(len(wanted), sum(sizes))


def _client_error(exc: botocore.exceptions.ClientError, bucket: str) -> str:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in AUTH_CODES:
        return f"s3 authentication failed for bucket {bucket!r} ({code})"
    if code in MISSING_CODES:
        return f"s3 bucket {bucket!r} not found"
    return f"s3 error {code or 'unknown'} on bucket {bucket!r}"
