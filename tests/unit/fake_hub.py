"""A minimal Hugging Face hub on 127.0.0.1 for tests, served from a thread.

Implements what ``huggingface_hub`` uses to resolve a revision, list a repo and download files: ``GET
/api/models/{repo}[/revision/{rev}]``, ``GET /api/models/{repo}/tree/{rev}``, ``HEAD|GET
/{repo}/resolve/{rev}/{path}``, with the hub's ``X-Error-Code`` error headers. Every request is recorded so tests
can check what was fetched and which Authorization header came along. Point a client at it with
``HF_ENDPOINT=hub.url``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class FakeRepo:
    branches: dict[str, str]  # branch/tag name -> commit sha
    commits: dict[str, dict[str, bytes]]  # commit sha -> {path in repo: content}
    token: str | None = None  # when set, only "Authorization: Bearer <token>" may read (a gated repo)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # unquoted, without the query string
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def add_repo(
        self, repo_id: str, revisions: dict[str, dict[str, bytes]], *, token: str | None = None
    ) -> dict[str, str]:
        """Add a repo whose branch ``name`` holds ``revisions[name]``; returns {branch: commit sha}."""
        branches = {name: hashlib.sha1(f"{repo_id}@{name}".encode()).hexdigest() for name in revisions}
        self.repos[repo_id] = FakeRepo(
            branches=branches, commits={branches[n]: files for n, files in revisions.items()}, token=token
        )
        return branches

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def do_GET(self) -> None:
        self._handle(send_body=True)

    def _handle(self, send_body: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        auth = self.headers.get("Authorization")
        self.fake_hub.requests.append(RecordedRequest(self.command, path, auth))
        if path.startswith("/api/models/"):
            self._api(path[len("/api/models/") :], query, auth, send_body)
        elif "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            rev, _, filename = rest.partition("/")
            self._resolve(repo_id, rev, filename, auth, send_body)
        else:
            self._error(404, "RepoNotFound", send_body)

    def _repo(self, repo_id: str, auth: str | None, send_body: bool) -> FakeRepo | None:
        repo = self.fake_hub.repos.get(repo_id)
        if repo is None:
            self._error(401 if auth is None else 404, "RepoNotFound", send_body)
            return None
        if repo.token is not None and auth != f"Bearer {repo.token}":
            self._error(401 if auth is None else 403, "GatedRepo", send_body)
            return None
        return repo

    def _commit(self, repo: FakeRepo, rev: str, send_body: bool) -> str | None:
        sha = repo.branches.get(rev, rev)
        if sha not in repo.commits:
            self._error(404, "RevisionNotFound", send_body)
            return None
        return sha

    def _api(self, rest: str, query: dict[str, list[str]], auth: str | None, send_body: bool) -> None:
        for marker in ("/revision/", "/tree/"):
            if marker in rest:
                repo_id, tail = rest.split(marker, 1)
                break
        else:
            repo_id, marker, tail = rest, "/revision/", "main"
        repo = self._repo(repo_id, auth, send_body)
        if repo is None:
            return
        rev, _, sub = tail.partition("/")
        sha = self._commit(repo, rev, send_body)
        if sha is None:
            return
        files = repo.commits[sha]
        if marker == "/revision/":
            body: Any = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo.token is not None,
                "gated": False if repo.token is None else "manual",
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(files)],
            }
        else:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            body = _tree(files, sub, recursive)
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, send_body)

    def _resolve(self, repo_id: str, rev: str, filename: str, auth: str | None, send_body: bool) -> None:
        repo = self._repo(repo_id, auth, send_body)
        if repo is None:
            return
        sha = self._commit(repo, rev, send_body)
        if sha is None:
            return
        content = repo.commits[sha].get(filename)
        if content is None:
            self._error(404, "EntryNotFound", send_body, {"X-Repo-Commit": sha})
            return
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{_oid(content)}"',
            "Content-Type": "application/octet-stream",
        }
        status, start = 200, 0
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-")[0] or 0)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self._send(status, content[start:], headers, send_body)

    def _error(self, status: int, code: str, send_body: bool, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"}
        headers.update(extra or {})
        self._send(status, json.dumps({"error": code}).encode(), headers, send_body)

    def _send(self, status: int, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _oid(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()


def _tree(files: dict[str, bytes], sub: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, content in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        if recursive or "/" not in rel:
            entries[path] = {"type": "file", "oid": _oid(content), "size": len(content), "path": path}
        else:
            folder = prefix + rel.split("/", 1)[0]
            entries[folder] = {"type": "directory", "oid": _oid(folder.encode()), "path": folder}
    return list(entries.values())
