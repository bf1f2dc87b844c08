"""volume integrations on real directories: an existing directory is given as it is (never copied,
never evicted); a missing one, a file, or a path through a symlink fails with the reason, naming no
path; the outcome says whether the replicas may write."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.events import Event, IntegrationsFailed, IntegrationsReady, SpecApplied, new_id
from libs.spec import VolumeIntegration, validate_spec
from services.integrations import volume
from services.integrations.cache import Cache, FetchFailed
from services.integrations.materialise import Materialiser
from tests.fakes import FakeSecrets
from tests.helpers import eventually


def spec_of(host_path: Path, **fields: object) -> VolumeIntegration:
    return VolumeIntegration(type="volume", name="datasets", path="/data", hostPath=str(host_path), **fields)


def test_an_existing_directory_is_given_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    resolved = volume.resolve(spec_of(tmp_path / "datasets"))
    assert resolved.path == tmp_path / "datasets"
    assert spec_of(tmp_path / "datasets").readOnly is True  # read-only unless the spec says otherwise


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("a file"), "is not a directory"),
        (lambda p: p.symlink_to(p.parent / "elsewhere", target_is_directory=True), "goes through a symlink"),
    ],
)
def test_a_host_path_that_is_not_a_real_directory_fails_saying_why(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "elsewhere").mkdir()
    host = tmp_path / "datasets"
    make(host)
    with pytest.raises(FetchFailed, match=reason) as failed:
        volume.resolve(spec_of(host))
    assert str(tmp_path) not in str(failed.value)


async def test_materialised_volumes_report_their_mode_and_are_never_evicted(tmp_path: Path) -> None:
    host = tmp_path / "host" / "datasets"
    host.mkdir(parents=True)
    (host / "train.csv").write_bytes(b"x" * 5000)
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    materialiser = Materialiser(Cache(tmp_path / "cache"), FakeSecrets(), publish, max_bytes=1, in_use=None)

    async def apply(version: int, integration: dict[str, object]) -> Event:
        document = {"name": "trainer", "image": "python:3.11", "command": ["serve"], "resources": {"ports": [8000]},
                    "integrations": [integration]}  # fmt: skip
        await materialiser.on_spec(SpecApplied(
            deployment_id="dep", project="default", slug="trainer", name="trainer", spec_id=new_id(),
            spec_version=version, spec=validate_spec(document),
        ))  # fmt: skip
        return await eventually(lambda: next((e for e in published if e.spec_version == version), None), what="outcome")  # type: ignore[attr-defined]

    base = {"type": "volume", "name": "datasets", "path": "/data", "hostPath": str(host)}
    ready = await apply(1, base)
    assert isinstance(ready, IntegrationsReady)
    (item,) = ready.integrations
    assert (item.type, item.mount, item.local_path, item.read_only) == ("volume", "/data/datasets", str(host), True)
    writable = await apply(2, {**base, "readOnly": False})
    assert isinstance(writable, IntegrationsReady) and writable.integrations[0].read_only is False
    await eventually(lambda: not materialiser._running, what="done")  # its eviction has run
    assert (host / "train.csv").stat().st_size == 5000  # far above the 1-byte limit, and untouched

    failed = await apply(3, {**base, "hostPath": str(tmp_path / "host" / "missing")})
    assert isinstance(failed, IntegrationsFailed)
    assert failed.reason == "integration datasets: the volume's hostPath does not exist on this machine"


def test_a_claim_is_for_the_kubernetes_runtime_where_nothing_is_checked_on_this_machine(tmp_path: Path) -> None:
    claim = VolumeIntegration(type="volume", name="datasets", path="/data", claimName="datasets")
    with pytest.raises(FetchFailed, match="a claimName .* needs the kubernetes runtime"):
        volume.resolve(claim)
    # On kubernetes the kubelet mounts it on the Pod's node: a hostPath missing here is no failure.
    missing_here = spec_of(tmp_path / "only-on-the-nodes")
    assert volume.resolve(missing_here, on_this_machine=False).identity != volume.resolve(claim, on_this_machine=False).identity
