"""A Hugging Face Hub stand-in on 127.0.0.1 that serves config.json files to the real client.

`huggingface_hub.hf_hub_download` (2.4.0, file_download.py) asks
`HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}` for the file's metadata: it needs
`X-Repo-Commit` (the commit the revision points to), an `ETag` and `Content-Length`, and
reads failures from `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo: utils/_http.py `hf_raise_for_status`); then it GETs the same URL for the bytes.
This server answers exactly those routes, so tests run the library's own code path with
HF_ENDPOINT pointed here and never reach the internet.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

CONFIGS = Path(__file__).parent / "data" / "configs"


def fixture_config(repo_id: str) -> bytes:
    """The stored config.json of `org/name` (tests/data/configs/org--name.json)."""
    return (CONFIGS / f"{repo_id.replace('/', '--')}.json").read_bytes()


@dataclass
class Repo:
    """One repository: files per revision, and who may read it."""

    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # revision -> name -> bytes
    token: str | None = None  # gated: only this bearer token may read


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


class LocalHub:
    """The server; `endpoint` is what HF_ENDPOINT should say."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.fail_with: int | None = None  # answer every request with this status
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args  # quiet

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(
        self,
        repo_id: str,
        config: bytes,
        revision: str = "main",
        token: str | None = None,
        filename: str = "config.json",
    ) -> None:
        """Serve `config` as `filename` of `repo_id` at `revision`."""
        repo = self.repos.setdefault(repo_id, Repo())
        repo.files.setdefault(revision, {})[filename] = config
        repo.token = token if token is not None else repo.token

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(handler.path.split("?")[0])
        auth = handler.headers.get("Authorization")
        self.requests.append(Request(handler.command, path, auth))

        def reply(status: int, headers: dict[str, str], payload: bytes = b"") -> None:
            handler.send_response(status)
            for k, v in headers.items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if body and payload:
                handler.wfile.write(payload)

        if self.fail_with is not None:
            reply(self.fail_with, {})
            return
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            reply(404, {"X-Error-Code": "RepoNotFound"})
            return
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.repos.get(repo_id)
        if repo is None:
            # The real Hub answers 401 for an unknown repository when no token is sent.
            reply(401 if auth is None else 404, {"X-Error-Code": "RepoNotFound"})
            return
        if repo.token is not None and auth != f"Bearer {repo.token}":
            reply(
                401 if auth is None else 403,
                {
                    "X-Error-Code": "GatedRepo",
                    "X-Error-Message": f"Access to model {repo_id} is restricted.",
                },
            )
            return
        files = repo.files.get(revision)
        if files is None:
            reply(404, {"X-Error-Code": "RevisionNotFound"})
            return
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        if filename not in files:
            reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            return
        payload = files[filename]
        etag = hashlib.sha1(payload).hexdigest()
        reply(200, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, payload)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
