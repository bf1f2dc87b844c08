"""git-lfs integrations: a shallow fetch of `ref` (the default branch when unset) into the source's
repository with the git CLI, then its LFS objects (`git lfs pull`, which fetches only objects the
repository does not hold yet). The content identity is the commit. URLs: file://, http(s)://, ssh://,
git:// (the spec allows no other scheme)."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from libs.spec import GitLfsIntegration
from services.integrations.cache import Cache, Fetched, FetchFailed, Refused, Tally, os_error, tally, used

GIT_TIMEOUT_SECONDS = 1800.0
# Never prompt (no terminal), never run a credential helper the host may have.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true", "GCM_INTERACTIVE": "never"}
# The user of a password given without one: token hosts (Hugging Face, GitHub) accept any name.
DEFAULT_USERNAME = "git"
_REASONS = (
    (re.compile(r"host key verification failed|remote host identification has changed", re.I),
     "ssh host key verification failed (the host's key is not the one first seen)"),
    (re.compile(r"authentication failed|could not read username|permission denied|403", re.I), "authentication failed"),
    (re.compile(r"couldn't find remote ref|not our ref|invalid refspec", re.I), "ref not found"),
    (re.compile(r"not found|does not appear to be a git repository|does not exist|404", re.I), "repository not found"),
    (re.compile(r"could not resolve host|connection refused|unable to access|timed out|unreachable", re.I), "unreachable"),
    (re.compile(r"no space left", re.I), "disk full while fetching the integration"),
)


@dataclass(frozen=True)
class GitCredentials:
    """Unsealed basic-auth credentials, held only for one fetch. repr hides them (tracebacks, logs)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return "GitCredentials(<redacted>)"

    def env(self, url: str) -> dict[str, str]:
        """An `http.<origin>.extraHeader` given through git's environment config (git >= 2.31): git and
        git-lfs both send it, and it stays out of argv, the URL, .git/config and every other file.
        Scoped to the repository's origin, so LFS downloads redirected to another host (a CDN's signed
        URL) do not receive the credentials."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        parts = urlsplit(url)
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{parts.scheme}://{parts.netloc}/.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
        }


@dataclass(frozen=True)
class SshKey:
    """An unsealed ssh private key, held only for one fetch. repr hides it (tracebacks, logs)."""

    private_key: str

    def __repr__(self) -> str:
        return "SshKey(<redacted>)"


@contextmanager
def ssh_env(url: str, source: Path, key: SshKey | None) -> Iterator[dict[str, str]]:
    """For an ssh:// URL, the ssh command git (and git-lfs) run: never prompting, the host's key
    accepted the first time and pinned after (in the source's own known_hosts file), and with a key
    from the spec, only that key — written to an owner-only file in an owner-only temporary directory,
    removed when the fetch ends."""
    if not url.startswith("ssh://"):
        yield {}
        return
    command = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
               "-o", f"UserKnownHostsFile={source / 'known_hosts'}"]  # fmt: skip
    if key is None:  # the machine's keys and ssh configuration
        yield {"GIT_SSH_COMMAND": shlex.join(command)}
        return
    with tempfile.TemporaryDirectory(prefix="berth-ssh-") as tmp:
        path = Path(tmp) / "key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key.private_key.strip() + "\n")  # ssh refuses a key without its final newline
        command += ["-i", str(path), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        yield {"GIT_SSH_COMMAND": shlex.join(command)}


def lfs_available() -> bool:
    return shutil.which("git-lfs") is not None


def source(integration: GitLfsIntegration) -> tuple[str, ...]:
    """What identifies the repository's working copy in the cache: one per URL."""
    return ("git", integration.url)


def fetch(
    integration: GitLfsIntegration, cache: Cache, credentials: GitCredentials | None = None, ssh_key: SshKey | None = None
) -> Fetched:
    if shutil.which("git") is None:
        raise FetchFailed("git is not installed on this machine")
    repo = cache.source_dir(*source(integration)) / "repo"
    try:
        with ssh_env(integration.url, repo.parent, ssh_key) as ssh:
            return _fetch(integration, cache, repo, {**(credentials.env(integration.url) if credentials else {}), **ssh})
    except Refused as exc:
        raise FetchFailed(str(exc)) from None
    except OSError as exc:
        raise FetchFailed(os_error(exc)) from None


def _fetch(integration: GitLfsIntegration, cache: Cache, repo: Path, auth: dict[str, str]) -> Fetched:
    before = tally(repo / ".git") if (repo / ".git").exists() else Tally(0, 0)
    if not (repo / ".git").exists():
        _git(repo.parent, "init", "-q", repo.name)
    _git(repo, "remote", "remove", "origin", check=False)
    _git(repo, "remote", "add", "origin", integration.url)
    _git(repo, "fetch", "-q", "--depth", "1", "origin", integration.ref or "HEAD", what="fetch", env=auth)
    commit = _git(repo, "rev-parse", "FETCH_HEAD").strip()
    target = cache.content_dir("git", commit)
    if target.exists():
        used(target)
        return Fetched(commit, target, tally(target), Tally(0, 0))
    previous = _git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    _git(repo, "checkout", "-q", "--force", "--detach", commit, lfs_smudge=False)
    if _uses_lfs(repo):
        if not lfs_available():
            raise FetchFailed("the repository has LFS files and git-lfs is not installed on this machine")
        _git(repo, "lfs", "pull", "origin", what="fetch of LFS objects", env=auth)
    changed = _changed_files(repo, previous, commit)
    grown = tally(repo / ".git")
    path, total = cache.publish("git", commit, repo, skip=(".git",))
    fetched = Tally(changed if changed is not None else total.files, max(grown.bytes - before.bytes, 0))
    return Fetched(commit, path, total, fetched)


def _uses_lfs(repo: Path) -> bool:
    attributes = repo / ".gitattributes"
    return attributes.is_file() and "filter=lfs" in attributes.read_text(errors="replace")


def _changed_files(repo: Path, previous: str, commit: str) -> int | None:
    """Files that differ from the previous checkout (None on the first: everything is new)."""
    if not previous or previous == commit:
        return None
    # The previous commit may be gone from a shallow repository; then everything counts as new.
    out = _git(repo, "diff", "--name-only", previous, commit, check=False)
    return len(out.splitlines()) if out else None


def _git(
    cwd: Path, *args: str, check: bool = True, lfs_smudge: bool = True, what: str = "", env: dict[str, str] | None = None
) -> str:
    env = {**os.environ, **GIT_ENV, **(env or {})}
    if not lfs_smudge:
        env["GIT_LFS_SKIP_SMUDGE"] = "1"  # `git lfs pull` fetches the objects in one batch afterwards
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise FetchFailed(f"git {what or args[0]} timed out") from None
    if check and done.returncode != 0:
        # git's own message may hold the URL (and credentials in it): only a classified reason goes out.
        reason = next((text for pattern, text in _REASONS if pattern.search(done.stderr)), "git failed")
        raise FetchFailed(f"git {what or args[0]}: {reason}")
    return done.stdout
