"""The integrations service's decisions, without a bus or a network: once per revision, for the newest
spec and every aliased version, retries after a back-off, nothing published for a revision replaced
meanwhile, fetches of different sources at once (bounded), never two of one source at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from libs.events import (
    AliasTarget,
    DeploymentAliasSet,
    DeploymentDeleted,
    Event,
    IntegrationsFailed,
    IntegrationsProgress,
    IntegrationsReady,
    IntegrationsRetryRequested,
    SpecApplied,
    decode_event,
    new_id,
)
from libs.kit import RetryPolicy
from libs.spec import validate_spec
from services.integrations.cache import Cache, Fetched, FetchFailed, Tally
from services.integrations import git
from services.integrations.materialise import Materialiser
from tests.fakes import FakeSecrets
from tests.helpers import eventually

GIT = {"type": "git-lfs", "name": "falcon", "path": "/models/", "url": "https://example.invalid/falcon"}


def applied(version: int, **fields: Any) -> SpecApplied:
    document = {"name": "falcon", "image": "python:3.11", "command": ["serve"], "resources": {"ports": [8000]}}
    spec = validate_spec({**document, **fields})
    return SpecApplied(deployment_id="dep", project="default", slug="falcon", name="falcon",
                       spec_id=new_id(), spec_version=version, spec=spec)  # fmt: skip


class Harness:
    def __init__(self, tmp_path: Path, retry: RetryPolicy = RetryPolicy(first_delay_seconds=0.05)) -> None:
        self.published: list[Event] = []
        self.fetches: list[str] = []
        self.fail_with: str | None = None
        self.gate: asyncio.Event | None = None
        self.materialiser = Materialiser(Cache(tmp_path), FakeSecrets(), self._publish, retry)
        self.materialiser._fetch = self._fetch  # type: ignore[method-assign]

    async def _publish(self, event: Event) -> None:
        self.published.append(event)

    async def _fetch(self, project: str, integration: Any) -> Fetched:
        self.fetches.append(integration.url)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with:
            raise FetchFailed(self.fail_with)
        return Fetched("c0ffee", Path("/cache/git-c0ffee"), Tally(2, 10), Tally(2, 10))


async def test_once_per_revision_and_not_for_specs_without_integrations(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.materialiser.on_spec(applied(1))
    await h.materialiser.on_spec(applied(2, integrations=[GIT]))
    await eventually(lambda: h.published, what="ready")
    await h.materialiser.on_spec(applied(3, integrations=[GIT], resources={"ports": [8000], "replicas": 3}))  # same revision
    await h.materialiser.resync()
    await asyncio.sleep(0)
    assert h.fetches == [GIT["url"]]
    (ready,) = h.published
    assert isinstance(ready, IntegrationsReady) and ready.integrations[0].identity == "c0ffee"


async def test_a_failure_is_retried_after_its_back_off(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.fail_with = "s3 bucket 'b' not found"
    await h.materialiser.on_spec(applied(1, integrations=[GIT]))
    failed = await eventually(lambda: h.published, what="failed")
    assert isinstance(failed[0], IntegrationsFailed) and failed[0].reason == "integration falcon: s3 bucket 'b' not found"
    await h.materialiser.resync()  # within the back-off: no new attempt
    assert h.fetches == [GIT["url"]]
    h.fail_with = None

    async def retried() -> bool:
        await h.materialiser.resync()
        return isinstance(h.published[-1], IntegrationsReady)

    await eventually(retried, what="ready after a retry")


async def test_a_revision_replaced_while_fetching_publishes_nothing_and_deletion_forgets(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.gate = asyncio.Event()
    await h.materialiser.on_spec(applied(1, integrations=[GIT]))
    await eventually(lambda: h.fetches, what="fetch started")
    await h.materialiser.on_spec(applied(2, integrations=[{**GIT, "ref": "v2"}]))
    h.gate.set()
    await eventually(lambda: h.published, what="the newer revision ready")
    await h.materialiser.resync()
    await eventually(lambda: len(h.published) == 1 and h.published[0].spec_version == 2, what="only v2 published")
    await h.materialiser.on_spec(DeploymentDeleted(deployment_id="dep", project="default", slug="falcon"))
    assert h.materialiser.held() == {"deployments": 0, "revisions": 0, "running": 0}


async def test_a_retry_request_tries_again_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, retry=RetryPolicy(first_delay_seconds=3600.0))
    h.fail_with = "git fetch: unreachable"
    await h.materialiser.on_spec(applied(1, integrations=[GIT]))
    await eventually(lambda: h.published, what="failed")
    h.fail_with = None
    await h.materialiser.resync()
    assert len(h.fetches) == 1  # an hour of back-off
    await h.materialiser.retry_now(IntegrationsRetryRequested(deployment_id="dep", project="default", slug="falcon"))
    await eventually(lambda: isinstance(h.published[-1], IntegrationsReady), what="ready at once")


async def test_with_a_size_limit_content_no_running_revision_uses_is_evicted(tmp_path: Path) -> None:
    """Three revisions with different content over a limit of one and a half: the newest revision's
    content and the content the old revision still serving uses stay; the rest goes."""
    cache = Cache(tmp_path / "cache")
    running: set[Path] = set()

    async def in_use() -> set[Path]:
        return set(running)

    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    materialiser = Materialiser(cache, FakeSecrets(), publish, max_bytes=1500, in_use=in_use)

    async def fetch(project: str, integration: Any) -> Fetched:
        source = tmp_path / "remote" / integration.url.rsplit("/", 1)[-1]
        source.mkdir(parents=True)
        (source / "weights.bin").write_bytes(b"w" * 1000)
        path, total = cache.publish("git", source.name, source)
        return Fetched(source.name, path, total, total)

    materialiser._fetch = fetch  # type: ignore[method-assign]

    async def ready(version: int, name: str) -> Path:
        await materialiser.on_spec(applied(version, integrations=[{**GIT, "url": f"https://example.invalid/{name}"}]))
        event = await eventually(lambda: next((e for e in published if e.spec_version == version), None), what=name)  # type: ignore[attr-defined]
        assert isinstance(event, IntegrationsReady)
        await eventually(lambda: not materialiser._running, what="done")
        return Path(event.integrations[0].local_path)

    a = await ready(1, "a")
    running.add(a)  # revision 1 keeps serving while revision 2 starts
    b = await ready(2, "b")
    assert a.exists() and b.exists()  # 2000 bytes, above the limit, but both in use
    running.clear()
    running.add(b)  # revision 2 serves; revision 1 has stopped
    c = await ready(3, "c")
    assert not a.exists() and b.exists() and c.exists()


async def test_a_fetch_under_way_publishes_its_progress_then_the_outcome(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    materialiser = Materialiser(cache, FakeSecrets(), publish, progress_interval_seconds=0.01)
    steps = [asyncio.Event(), asyncio.Event()]

    def put(source: Path, name: str, content: bytes) -> None:
        # Whole files at once: progress is read in a worker thread, which could see a file half written.
        (tmp_path / name).write_bytes(content)
        (tmp_path / name).replace(source / name)

    async def fetch(project: str, integration: Any) -> Fetched:  # writes into its source, step by step
        source = cache.source_dir("git", integration.url)
        put(source, "a.bin", b"a" * 1000)
        await steps[0].wait()
        put(source, "b.bin", b"b" * 2000)
        await steps[1].wait()
        return Fetched("c0ffee", source, Tally(2, 3000), Tally(2, 3000))

    materialiser._fetch = fetch  # type: ignore[method-assign]
    await materialiser.on_spec(applied(1, integrations=[GIT]))

    def progress() -> list[tuple[str, int, int]]:
        return [(e.integration, e.fetched_files, e.fetched_bytes) for e in published if isinstance(e, IntegrationsProgress)]

    await eventually(lambda: progress() == [("falcon", 1, 1000)], what="first progress")
    steps[0].set()
    await eventually(lambda: progress()[-1:] == [("falcon", 2, 3000)], what="second progress")
    steps[1].set()
    await eventually(lambda: isinstance(published[-1], IntegrationsReady), what="the outcome")
    assert progress() == [("falcon", 1, 1000), ("falcon", 2, 3000)]  # only when it changed
    # A snapshot of the stream (a service starting while a fetch runs) reads the progress back.
    assert all(decode_event(e.model_dump_json()) == e for e in published)
    assert all(isinstance(e, IntegrationsProgress) for e in published[:-1])


async def test_not_knowing_what_runs_evicts_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    tree = tmp_path / "old"
    tree.mkdir()
    (tree / "weights.bin").write_bytes(b"w" * 1000)
    old, _ = cache.publish("s3", "old", tree)

    async def in_use() -> set[Path]:
        raise TimeoutError  # the bus did not answer

    async def publish(event: Event) -> None: ...

    await Materialiser(cache, FakeSecrets(), publish, max_bytes=1, in_use=in_use).evict()
    assert old.exists()


def alias_set(alias: str, target: SpecApplied | None) -> DeploymentAliasSet:
    pointed = None if target is None else AliasTarget(spec_version=target.spec_version, spec_id=target.spec_id, spec=target.spec)
    return DeploymentAliasSet(deployment_id="dep", project="default", slug="falcon", alias=alias, target=pointed)


async def test_an_aliased_older_version_gets_its_own_revisions_integrations(tmp_path: Path) -> None:
    """v1 (repo a) stays reachable through an alias after v2 (repo b) is applied: the scheduler keeps
    v1's revision running, so its integrations are materialised too (also when the alias comes after
    the service has moved on, and after a restart); a removed alias stops retries of its revision."""
    h = Harness(tmp_path)
    v1 = applied(1, integrations=[{**GIT, "url": "https://example.invalid/a"}])
    v2 = applied(2, integrations=[{**GIT, "url": "https://example.invalid/b"}])
    await h.materialiser.on_spec(v2)
    await h.materialiser.on_spec(alias_set("stable", v1))
    await eventually(lambda: len(h.published) == 2, what="both revisions ready")
    ready = {e.spec_version: e for e in h.published if isinstance(e, IntegrationsReady)}
    assert sorted(ready) == [1, 2] and ready[1].revision_id != ready[2].revision_id
    assert sorted(h.fetches) == ["https://example.invalid/a", "https://example.invalid/b"]

    # After a restart, the stream's outcomes are read back: nothing is fetched again.
    again = Harness(tmp_path)
    again.materialiser.rebuild([v1, v2], h.published, aliases=[alias_set("stable", v1)])
    assert again.materialiser.held() == {"deployments": 1, "revisions": 2, "running": 0}
    await again.materialiser.resync()
    assert again.fetches == []

    # The alias moves to the newest version: v1's revision is no longer wanted and is not retried.
    h.fail_with = "git fetch: unreachable"
    await h.materialiser.on_spec(alias_set("stable", None))
    assert h.materialiser.held() == {"deployments": 1, "revisions": 1, "running": 0}


async def test_fetches_of_two_deployments_overlap_and_of_one_source_never(tmp_path: Path) -> None:
    """Two deployments with different sources are fetched at once: each fetch waits until the other
    has begun (one at a time would never finish). A third revision with the first one's source waits
    for it; the limit holds fetches beyond it."""
    started: list[str] = []
    both = asyncio.Event()
    active: dict[str, int] = {}
    overlapping_one_source: list[str] = []

    async def publish(event: Event) -> None: ...

    materialiser = Materialiser(Cache(tmp_path), FakeSecrets(), publish, concurrent_fetches=2)

    async def fetch(project: str, integration: Any) -> Fetched:
        active[integration.url] = active.get(integration.url, 0) + 1
        if active[integration.url] > 1:
            overlapping_one_source.append(integration.url)
        started.append(integration.url)
        if len(set(started)) >= 2:
            both.set()
        await both.wait()
        active[integration.url] -= 1
        return Fetched("c0ffee", tmp_path / "content", Tally(1, 1), Tally(1, 1))

    materialiser._fetch = fetch  # type: ignore[method-assign]

    def deployment(did: str, url: str, ref: str | None = None) -> SpecApplied:
        event = applied(1, integrations=[{**GIT, "url": url, **({"ref": ref} if ref else {})}])
        return event.model_copy(update={"deployment_id": did})

    await materialiser.on_spec(deployment("a", "https://example.invalid/a"))
    await materialiser.on_spec(deployment("a2", "https://example.invalid/a", ref="v2"))  # same source as a
    await materialiser.on_spec(deployment("b", "https://example.invalid/b"))
    await eventually(lambda: len(started) == 3 and not materialiser._running, what="all three fetched")
    assert overlapping_one_source == []
    # a and b in either order, at once; a2 (a's source) only after a.
    assert sorted(started[:2]) == ["https://example.invalid/a", "https://example.invalid/b"]
    assert started[2] == "https://example.invalid/a"


async def test_the_limit_bounds_fetches_under_way(tmp_path: Path) -> None:
    gate = asyncio.Event()
    under_way: list[str] = []

    async def publish(event: Event) -> None: ...

    materialiser = Materialiser(Cache(tmp_path), FakeSecrets(), publish, concurrent_fetches=2)

    async def fetch(project: str, integration: Any) -> Fetched:
        under_way.append(integration.url)
        await gate.wait()
        return Fetched("c0ffee", tmp_path / "content", Tally(1, 1), Tally(1, 1))

    materialiser._fetch = fetch  # type: ignore[method-assign]
    for name in "abc":
        event = applied(1, integrations=[{**GIT, "url": f"https://example.invalid/{name}"}])
        await materialiser.on_spec(event.model_copy(update={"deployment_id": name}))
    await eventually(lambda: len(under_way) == 2, what="two fetches under way")
    for _ in range(5):
        await asyncio.sleep(0)  # let the third run as far as it can: it waits for a slot
    assert len(under_way) == 2 and materialiser.held()["running"] == 3
    gate.set()
    await eventually(lambda: len(under_way) == 3 and not materialiser._running, what="the third after a slot freed")


async def test_an_ssh_key_is_unsealed_for_the_fetch_and_a_missing_one_fails_it(tmp_path: Path, monkeypatch: Any) -> None:
    given: list[Any] = []

    def fetch(integration: Any, cache: Cache, credentials: Any = None, ssh_key: Any = None) -> Fetched:
        given.append(ssh_key)
        return Fetched("c0ffee", tmp_path / "content", Tally(1, 1), Tally(1, 1))

    monkeypatch.setattr(git, "fetch", fetch)
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    secrets = FakeSecrets({"deploy-key": "-----BEGIN OPENSSH PRIVATE KEY-----"})
    materialiser = Materialiser(Cache(tmp_path), secrets, publish)
    ssh = {**GIT, "url": "ssh://git@example.invalid/falcon", "sshKey": "secret:deploy-key"}
    await materialiser.on_spec(applied(1, integrations=[ssh]))
    await eventually(lambda: published, what="ready")
    assert isinstance(published[0], IntegrationsReady) and given == [git.SshKey("-----BEGIN OPENSSH PRIVATE KEY-----")]
    del secrets.values["deploy-key"]
    await materialiser.on_spec(applied(2, integrations=[{**ssh, "ref": "v2"}]))
    failed = await eventually(lambda: published[1:], what="failed")
    assert isinstance(failed[0], IntegrationsFailed)
    assert failed[0].reason == "integration falcon: its sshKey names a secret the project does not have"
