"""A minimal Hugging Face Hub for tests: the endpoints the real client uses to publish.

The real ``huggingface_hub.HfApi(endpoint=...)`` talks to it over HTTP on
127.0.0.1, so the tests exercise the client's real request/response handling.
Implemented: repo creation, model info (siblings with git blob ids, card data
parsed from README.md front matter), README validation, preupload (every file
"regular", with the remote oid so unchanged files are skipped) and the ndjson
commit endpoint. Commits are atomic: a failed commit changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes] = field(default_factory=lambda: {".gitattributes": GITATTRIBUTES})
    commits: list[str] = field(default_factory=list)
    private: bool = False

    @property
    def head(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


@dataclass
class FakeHub:
    """State of the fake Hub; tests read it and inject failures through it."""

    token: str
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    fail_next_commits: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    url: str = ""

    def commits_to(self, repo_id: str) -> int:
        repo = self.repos.get(repo_id)
        return len(repo.commits) if repo else 0


def _card_data(readme: bytes | None) -> dict | None:
    if not readme:
        return None
    text = readme.decode()
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    loaded = yaml.safe_load(text[4:end]) if end > 0 else None
    return loaded if isinstance(loaded, dict) else None


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *_args) -> None:  # keep test output clean
        pass

    # ---- plumbing -------------------------------------------------------------
    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization") or ""
        self.hub.auth_headers.append(header)
        if header != f"Bearer {self.hub.token}":
            self._send(401, {"error": "Invalid credentials in Authorization header"})
            return False
        return True

    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return repo

    # ---- routes ---------------------------------------------------------------
    def do_GET(self) -> None:  # http.server API name
        path = self.path.split("?")[0]
        self.hub.requests.append(("GET", path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) in (4, 6):
            if not self._authorised():
                return
            repo_id = "/".join(parts[2:4])
            repo = self._repo(repo_id)
            if repo is None:
                return
            card = _card_data(repo.files.get("README.md"))
            self._send(
                200,
                {
                    "id": repo_id,
                    "sha": repo.head,
                    "private": repo.private,
                    "tags": list((card or {}).get("tags") or []),
                    "cardData": card,
                    "siblings": [
                        {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
                        for name, data in sorted(repo.files.items())
                    ],
                },
            )
            return
        self._send(404, {"error": f"not implemented: GET {path}"})

    def do_POST(self) -> None:  # http.server API name
        path = self.path.split("?")[0]
        self.hub.requests.append(("POST", path))
        body = self._body()
        if not self._authorised():
            return
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.hub.repos:
                self._send(
                    409,
                    {
                        "error": "You already created this model repo",
                        "url": f"{self.hub.url}/{repo_id}",
                    },
                )
                return
            self.hub.repos[repo_id] = FakeRepo(private=payload.get("visibility") == "private")
            self._send(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})
            return
        if path == "/api/validate-yaml":
            self._send(200, {"errors": [], "warnings": []})
            return
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
            repo = self._repo("/".join(parts[2:4]))
            if repo is None:
                return
            files = json.loads(body)["files"]
            self._send(
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": git_blob_sha1(repo.files[f["path"]])
                            if f["path"] in repo.files
                            else None,
                        }
                        for f in files
                    ]
                },
            )
            return
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
            self._commit("/".join(parts[2:4]), body)
            return
        self._send(404, {"error": f"not implemented: POST {path}"})

    def _commit(self, repo_id: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if self.hub.fail_next_commits > 0:
            self.hub.fail_next_commits -= 1
            self._send(500, {"error": "Internal Error - We're working hard to fix this"})
            return
        files = dict(repo.files)
        summary = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value["summary"]
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {k: v for k, v in files.items() if not k.startswith(prefix)}
            else:
                self._send(400, {"error": f"fake hub does not support {key!r} operations"})
                return
        oid = hashlib.sha1(f"{repo.head}{summary}{sorted(files)}".encode()).hexdigest()
        repo.files = files
        repo.commits.append(oid)
        self._send(
            200,
            {
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            },
        )


class FakeHubServer:
    """Context manager running a FakeHub on 127.0.0.1 in a background thread."""

    def __init__(self, token: str):
        self.hub = FakeHub(token=token)

    def __enter__(self) -> FakeHub:
        handler = type("BoundHandler", (_Handler,), {"hub": self.hub})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.hub.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.hub

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
