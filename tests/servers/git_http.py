"""A local git server over HTTP for tests: git's smart HTTP protocol (`git http-backend`, run as CGI
for each request) and the Git LFS batch API serving the objects of the repositories under `root`.
Counts the LFS objects it sends, so a test can see that a re-fetch downloads only what changed.
With `auth` (user, password), every request — git's and the LFS batch and object downloads — needs
that HTTP basic auth, else 401. With `meet=n`, the first n ref advertisements (`info/refs`, where every
fetch begins) are answered only once all n have arrived: fetches made one at a time never finish."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_TYPE = "application/vnd.git-lfs+json"


class GitHttpServer(ThreadingHTTPServer):
    def __init__(self, root: Path, auth: tuple[str, str] | None = None, meet: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.meet = meet
        self.arrived = 0
        self.all_here = threading.Event()
        self._count = threading.Lock()
        self.root = root
        self.authorization = None if auth is None else "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        self.refused = 0  # requests answered 401
        self.lfs_downloads: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: GitHttpServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _authorised(self) -> bool:
        if self.server.authorization is None or self.headers.get("Authorization") == self.server.authorization:
            return True
        self.server.refused += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # drained: the client may still send it
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="berth tests"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if "/info/lfs/objects/" in self.path:
            self._lfs_object()
        else:
            if "/info/refs" in self.path:
                self._gather()
            self._backend()

    def _gather(self) -> None:
        with self.server._count:
            self.server.arrived += 1
            if self.server.arrived > self.server.meet:
                return
            if self.server.arrived == self.server.meet:
                self.server.all_here.set()
        if not self.server.all_here.wait(timeout=60):  # a test bound, not a timing: the test fails then
            raise ConnectionAbortedError("the other fetches never arrived")

    def do_POST(self) -> None:
        if not self._authorised():
            return
        if self.path.endswith("/info/lfs/objects/batch"):
            self._lfs_batch()
        else:
            self._backend()

    def _repo(self, marker: str) -> Path:
        # git-lfs asks `<url>.git/info/lfs/...` of a URL without `.git`
        return self.server.root / self.path.split(marker)[0].strip("/").removesuffix(".git")

    def _lfs_batch(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        base = f"{self.server.url}{self.path.removesuffix('/batch')}"
        objects = [
            {"oid": o["oid"], "size": o["size"], "actions": {"download": {"href": f"{base}/{o['oid']}"}}}
            for o in request["objects"]
        ]
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), LFS_TYPE)

    def _lfs_object(self) -> None:
        oid = self.path.rsplit("/", 1)[1]
        path = self._repo("/info/lfs/") / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        self.server.lfs_downloads[oid] += 1
        self._send(200, path.read_bytes(), "application/octet-stream")

    def _backend(self) -> None:
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            **os.environ, "GIT_PROJECT_ROOT": str(self.server.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1", "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }  # fmt: skip
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, content = done.stdout.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        status = int(headers.pop("Status", "200").split()[0])
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _send(self, status: int, content: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


@contextmanager
def git_http_server(root: Path, auth: tuple[str, str] | None = None, meet: int = 0) -> Iterator[GitHttpServer]:
    server = GitHttpServer(root, auth, meet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


GIT_IDENTITY = ["-c", "user.email=test@berth.invalid", "-c", "user.name=berth tests"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_lfs_repo(path: Path, files: dict[str, bytes]) -> str:
    """A repository with `*.bin` tracked by LFS and `files` committed; the commit."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "lfs", "install", "--local")
    git(path, "lfs", "track", "*.bin")
    return commit(path, files)


def commit(repo: Path, files: dict[str, bytes]) -> str:
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "update")
    return git(repo, "rev-parse", "HEAD").strip()
