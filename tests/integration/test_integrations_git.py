"""git-lfs integrations against real repositories made by the test, with an LFS-tracked file: over
file:// and over HTTP from a local git server (smart HTTP + LFS batch API); a new commit fetches only
the change; a symlink leading out of the repository is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from libs.spec import GitLfsIntegration
from services.integrations import git
from services.integrations.cache import Cache, FetchFailed
from tests.servers.git_http import commit, git_http_server, make_lfs_repo

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
