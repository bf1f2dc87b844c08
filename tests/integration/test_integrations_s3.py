"""s3 integrations against a local S3-compatible server (moto's server mode): a sync, a re-sync that
fetches only the changed object, and each failure with its reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.natsd import free_port
from libs.spec import S3Integration
from services.integrations import s3
from services.integrations.cache import Cache, FetchFailed
from tests.servers.s3 import S3Server, s3_server


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as running:
        yield running


def integration(server: S3Server, url: str) -> S3Integration:
    return S3Integration(
        type="s3", name="data", path="/mnt", url=url, region="us-east-1", endpointUrl=server.endpoint,
        accessKeyId=server.access_key_id, secretAccessKey="secret:s3key",
    )  # fmt: skip


def credentials(server: S3Server) -> s3.S3Credentials:
    return s3.S3Credentials(server.access_key_id, server.secret_access_key)


def test_sync_then_a_resync_fetches_only_the_changed_object(server: S3Server, tmp_path: Path) -> None:
    client = server.client()
    client.create_bucket(Bucket="models")
    for n in range(5):
        client.put_object(Bucket="models", Key=f"iris/part-{n}.bin", Body=f"weights {n}".encode())
    client.put_object(Bucket="models", Key="other/skip.bin", Body=b"not under the prefix")
    cache = Cache(tmp_path / "cache")
    spec = integration(server, "s3://models/iris/")

    first = s3.sync(spec, credentials(server), cache)
    assert (first.total.files, first.fetched.files) == (5, 5)
    assert (first.path / "part-3.bin").read_text() == "weights 3"
    assert not (first.path / "skip.bin").exists()

    again = s3.sync(spec, credentials(server), cache)
    assert again.fetched.files == 0 and again.identity == first.identity and again.path == first.path

    client.put_object(Bucket="models", Key="iris/part-2.bin", Body=b"weights 2, retrained")
    changed = s3.sync(spec, credentials(server), cache)
    assert (changed.fetched.files, changed.total.files) == (1, 5)
    assert changed.identity != first.identity
    assert (changed.path / "part-2.bin").read_text() == "weights 2, retrained"
    assert (first.path / "part-2.bin").read_text() == "weights 2"  # what older replicas see stays as it was


def test_bad_credentials_and_a_missing_bucket_each_say_why(server: S3Server, tmp_path: Path) -> None:
    server.client().create_bucket(Bucket="private")
    cache = Cache(tmp_path / "cache")
    wrong = s3.S3Credentials(server.access_key_id, "not-the-secret-key")
    with pytest.raises(FetchFailed, match="s3 authentication failed for bucket 'private'") as refused:
        s3.sync(integration(server, "s3://private/"), wrong, cache)
    assert "not-the-secret-key" not in str(refused.value)
    with pytest.raises(FetchFailed, match="s3 bucket 'nowhere' not found"):
        s3.sync(integration(server, "s3://nowhere/"), credentials(server), cache)


def test_an_unreachable_endpoint_says_so(tmp_path: Path) -> None:
    spec = S3Integration(type="s3", name="data", path="/mnt", url="s3://b/", region="us-east-1",
                         endpointUrl=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    with pytest.raises(FetchFailed, match="unreachable"):
        s3.sync(spec, s3.S3Credentials("AK", "SK"), Cache(tmp_path))
