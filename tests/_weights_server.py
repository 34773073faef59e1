"""A real HTTP server on 127.0.0.1 (random free port) serving fake weights files, for hub tests.

`/<name>` serves FILES[name]; `/cut/<name>` announces the full length, sends half, then closes
the connection, like a download dropped halfway.
"""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from facenet_cli.models import hub
from facenet_cli.models.catalogue import DEFAULT_MODEL, CATALOGUE, WeightsSource
from facenet_cli.models.hub import with_weights

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, bigger than one read so progress fires more than once
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class WeightsServer:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                cut = self.path.startswith("/cut/")
                body = server.files.get(self.path.removeprefix("/cut/").lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def record(self, path: str, sha256: str = PAYLOAD_SHA256, filename: str = "fake-weights.bin",
               name: str = "test-url-model"):
        """A copy of the default model's record whose weights are `self.url + path`."""
        weights = WeightsSource(filename=filename, sha256=sha256, url=f"{self.url}/{path.lstrip('/')}",
                                size=len(PAYLOAD))
        return with_weights(CATALOGUE[DEFAULT_MODEL], weights, name=name)


@contextmanager
def serve(files: dict[str, bytes] | None = None):
    server = WeightsServer(files if files is not None else {"fake-weights.bin": PAYLOAD})
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# Imported by the test modules that download: autouse there.
@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own cache; the user's real cache is never touched."""
    root = tmp_path / "cache"
    monkeypatch.setenv(hub.CACHE_ENV, str(root))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a CI proxy must not intercept the local server
    return root
