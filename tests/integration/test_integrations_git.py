"""git-lfs integrations against real repositories made by the test, with an LFS-tracked file: over
file://, over HTTP from a local git server (smart HTTP + LFS batch API) and over ssh from a local sshd;
a new commit fetches only the change; a symlink leading out of the repository is refused; two
deployments' fetches run at once."""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
from pathlib import Path

import pytest

from libs.events import Event, IntegrationsProgress, IntegrationsReady, SpecApplied, new_id
from libs.spec import GitLfsIntegration, validate_spec
from services.integrations import git
from services.integrations.cache import Cache, FetchFailed
from services.integrations.materialise import Materialiser
from tests.fakes import FakeSecrets
from tests.helpers import eventually
from tests.servers.git_http import GitHttpServer, commit, git_http_server, make_lfs_repo
from tests.servers.sshd import keypair, ssh_server, sshd_available

pytestmark = pytest.mark.skipif(not git.lfs_available(), reason="needs git-lfs (apt-get install git-lfs)")
WEIGHTS = os.urandom(4096)


def spec(url: str, ref: str | None = None) -> GitLfsIntegration:
    return GitLfsIntegration(type="git-lfs", name="falcon", path="/models/", url=url, ref=ref)


def test_a_file_url_clones_the_commit_with_its_lfs_file(tmp_path: Path) -> None:
    head = make_lfs_repo(tmp_path / "repo", {"weights.bin": WEIGHTS, "config.json": b"{}"})
    fetched = git.fetch(spec(f"file://{tmp_path / 'repo'}"), Cache(tmp_path / "cache"))
    assert fetched.identity == head
    assert (fetched.path / "weights.bin").read_bytes() == WEIGHTS  # the content, not the LFS pointer
    assert not (fetched.path / ".git").exists()


def test_over_http_a_new_commit_fetches_only_the_changed_lfs_object(tmp_path: Path) -> None:
    root = tmp_path / "served"
    make_lfs_repo(root / "falcon", {"a.bin": WEIGHTS, "b.bin": b"b" * 2048})
    cache = Cache(tmp_path / "cache")
    with git_http_server(root) as server:
        first = git.fetch(spec(f"{server.url}/falcon"), cache)
        assert (first.path / "b.bin").read_bytes() == b"b" * 2048
        assert sum(server.lfs_downloads.values()) == 2

        head = commit(root / "falcon", {"b.bin": b"B" * 2048})
        second = git.fetch(spec(f"{server.url}/falcon", ref="main"), cache)
        assert second.identity == head != first.identity
        assert (second.path / "b.bin").read_bytes() == b"B" * 2048
        assert sum(server.lfs_downloads.values()) == 3  # only the changed object
        assert second.fetched.files == 1
        assert (first.path / "b.bin").read_bytes() == b"b" * 2048  # the earlier commit's copy is intact

        again = git.fetch(spec(f"{server.url}/falcon", ref="main"), cache)
        assert again.path == second.path and again.fetched.files == 0


def test_failures_name_the_cause_without_the_url(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    with pytest.raises(FetchFailed, match="repository not found"):
        git.fetch(spec(f"file://{tmp_path / 'missing'}"), cache)
    make_lfs_repo(tmp_path / "repo", {"a.bin": WEIGHTS})
    with pytest.raises(FetchFailed, match="ref not found"):
        git.fetch(spec(f"file://{tmp_path / 'repo'}", ref="no-such-branch"), cache)


def test_a_symlink_leading_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_lfs_repo(repo, {"a.bin": WEIGHTS})
    (repo / "passwd").symlink_to("../../../../etc/passwd")
    commit(repo, {})
    with pytest.raises(FetchFailed, match="the symlink passwd leads outside the integration"):
        git.fetch(spec(f"file://{repo}"), Cache(tmp_path / "cache"))


TOKEN = "hf_" + os.urandom(12).hex()


def test_over_http_with_basic_auth_the_right_credentials_clone_and_leave_no_trace(tmp_path: Path) -> None:
    root = tmp_path / "served"
    make_lfs_repo(root / "private", {"weights.bin": WEIGHTS})
    cache = Cache(tmp_path / "cache")
    with git_http_server(root, auth=("alice", TOKEN)) as server:
        url = f"{server.url}/private"
        with pytest.raises(FetchFailed, match="^git fetch: authentication failed$"):
            git.fetch(spec(url), cache)  # no credentials
        with pytest.raises(FetchFailed, match="^git fetch: authentication failed$"):
            git.fetch(spec(url), cache, git.GitCredentials("alice", "hf_wrong"))
        fetched = git.fetch(spec(url), cache, git.GitCredentials("alice", TOKEN))
        assert (fetched.path / "weights.bin").read_bytes() == WEIGHTS  # the LFS object came with the header
        assert sum(server.lfs_downloads.values()) == 1
    assert "hf_" not in repr(git.GitCredentials("alice", TOKEN))
    # Neither the token nor the header made of it is in any file the fetch wrote (.git/config included).
    header = git.GitCredentials("alice", TOKEN).env(url)["GIT_CONFIG_VALUE_0"].split()[-1]
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.is_symlink()]
    assert written and not [p for p in written if TOKEN.encode() in p.read_bytes() or header.encode() in p.read_bytes()]


def _lfs_served_over_http(repo: Path, lfs: GitHttpServer) -> str:
    """The repository names its LFS server in `.lfsconfig`, as repositories whose LFS objects live on an
    HTTP server do; the commit."""
    return commit(repo, {".lfsconfig": f"[lfs]\n\turl = {lfs.url}/{repo.name}.git/info/lfs\n".encode()})


@pytest.mark.skipif(not sshd_available(), reason="needs OpenSSH's sshd (apt-get install openssh-server)")
def test_over_ssh_a_key_from_the_spec_clones_with_lfs_pins_the_host_and_leaves_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git over ssh to a local sshd with a key given to the fetch (the spec's sshKey, unsealed); the LFS
    objects come from the repository's HTTP LFS server. A wrong key is an authentication failure; the
    host's key is accepted the first time and pinned: a host answering with another key is refused."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the key file lives during the fetch
    root = tmp_path / "served"
    make_lfs_repo(root / "falcon", {"weights.bin": WEIGHTS})
    cache = Cache(tmp_path / "cache")
    with git_http_server(root) as lfs, ssh_server(tmp_path / "sshd") as sshd:
        head = _lfs_served_over_http(root / "falcon", lfs)
        url = sshd.url(root / "falcon")
        stranger, _ = keypair(tmp_path / "stranger")
        with pytest.raises(FetchFailed, match="^git fetch: authentication failed$"):
            git.fetch(spec(url), cache, ssh_key=git.SshKey(stranger))
        fetched = git.fetch(spec(url), cache, ssh_key=git.SshKey(sshd.client_key))
        assert fetched.identity == head
        assert (fetched.path / "weights.bin").read_bytes() == WEIGHTS
        assert sum(lfs.lfs_downloads.values()) == 1
        port = sshd.port
    known_hosts = cache.source_dir(*git.source(spec(url))) / "known_hosts"
    assert sshd.host_public_key.split()[1] in known_hosts.read_text()
    assert list(temp.iterdir()) == []  # the key's temporary file is gone
    key_body = sshd.client_key.strip().splitlines()[1]
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in written if key_body.encode() in p.read_bytes()]

    with ssh_server(tmp_path / "impostor", port=port) as impostor:  # same address, another host key
        with pytest.raises(FetchFailed, match="ssh host key verification failed"):
            git.fetch(spec(url), cache, ssh_key=git.SshKey(impostor.client_key))


def test_an_ssh_key_lives_in_an_owner_only_file_during_the_fetch_only(tmp_path: Path) -> None:
    with git.ssh_env("ssh://git@host.invalid/repo", tmp_path, git.SshKey("-----BEGIN KEY-----\nx\n")) as env:
        command = shlex.split(env["GIT_SSH_COMMAND"])
        key = Path(command[command.index("-i") + 1])
        assert key.read_text() == "-----BEGIN KEY-----\nx\n" and stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        assert "StrictHostKeyChecking=accept-new" in command and f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in command
    assert not key.exists() and not key.parent.exists()
    assert "BEGIN" not in repr(git.SshKey("-----BEGIN KEY-----"))
    with git.ssh_env("https://host.invalid/repo", tmp_path, None) as env:
        assert env == {}


async def test_two_deployments_are_fetched_at_once(tmp_path: Path) -> None:
    """The server answers the first two fetches only once both have arrived: fetched one at a time,
    neither deployment would become ready."""
    root = tmp_path / "served"
    make_lfs_repo(root / "a", {"a.bin": WEIGHTS})
    make_lfs_repo(root / "b", {"b.bin": WEIGHTS[::-1]})
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    with git_http_server(root, meet=2) as server:
        materialiser = Materialiser(Cache(tmp_path / "cache"), FakeSecrets(), publish, concurrent_fetches=2)
        for name in ("a", "b"):
            document = {"name": name, "image": "python:3.11", "command": ["serve"], "resources": {"ports": [8000]},
                        "integrations": [{"type": "git-lfs", "name": name, "path": "/models/", "url": f"{server.url}/{name}"}]}  # fmt: skip
            await materialiser.on_spec(SpecApplied(deployment_id=name, project="default", slug=name, name=name,
                                                   spec_id=new_id(), spec_version=1, spec=validate_spec(document)))  # fmt: skip

        def outcomes() -> list[Event]:
            return [e for e in published if not isinstance(e, IntegrationsProgress)]

        await eventually(lambda: len(outcomes()) == 2, timeout=90, what="both outcomes")
        await materialiser.close()
    assert all(isinstance(e, IntegrationsReady) for e in outcomes()), outcomes()
    assert server.arrived == 2
