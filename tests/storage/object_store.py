"""An S3-compatible server for the storage tests: moto's server on a loopback port, and a small HTTP
proxy in front of it that injects faults (5xx answers, dropped connections, lost responses) and
latency, so that the S3 adapter meets the failures of a real object store.

The proxy forwards every request unchanged and counts them. Faults are consumed in the order they
were queued, one per request; ``always`` answers every request with one status (a store that is
down); ``latency`` delays every request before it is forwarded.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

BUCKET = "flowstate-tests"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class MotoServer:
    endpoint: str
    stop: object

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request) as response:
            assert response.status == 200, response.status


def start_moto() -> MotoServer | None:
    """moto's threaded server on a free loopback port, or ``None`` when moto is not installed
    (then the caller fails under CI and skips otherwise)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    moto = MotoServer(f"http://127.0.0.1:{port}", server.stop)
    moto.create_bucket(BUCKET)
    return moto


def require_moto() -> MotoServer:
    moto = start_moto()
    if moto is None:
        message = "moto[server] is not installed: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(f"the S3 storage tests need an S3 server: {message}")
        pytest.skip(message)
    return moto


def unique_prefix() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


@dataclass
class Faults:
    """What the proxy does to the next requests (shared with the handler threads)."""

    queued: deque[str] = field(default_factory=deque)
    """One entry per coming request: ``"pass"`` (forward it untouched), ``"500"``/``"503"`` (answer
    that status without forwarding),
    ``"drop"`` (close the connection without forwarding) or ``"lose"`` (forward, then close the
    connection without answering: the request took effect, the client cannot know)."""
    always: int | None = None
    latency: float = 0.0
    only_methods: frozenset[str] | None = None
    """When set, faults apply only to requests of these methods (others pass untouched)."""
    only_containing: str | None = None
    """When set, faults apply only to requests whose target contains this text."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    injected: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests.append((method, path))
            if self.only_methods is not None and method not in self.only_methods:
                return None
            if self.only_containing is not None and self.only_containing not in path:
                return None
            if self.always is not None:
                fault = str(self.always)
            elif self.queued:
                fault = self.queued.popleft()
                if fault == "pass":
                    return None
            else:
                return None
            self.injected.append((fault, method, path))
            return fault

    def reset(self) -> None:
        with self.lock:
            self.queued.clear()
            self.always = None
            self.latency = 0.0
            self.only_methods = None
            self.only_containing = None
            self.requests.clear()
            self.injected.clear()


class FaultyProxy:
    """A forwarding HTTP proxy to ``upstream`` (host, port) that applies ``faults``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.faults = Faults()
        self._upstream = upstream
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.faults.next_fault(self.command, self.path)
                if proxy.faults.latency:
                    time.sleep(proxy.faults.latency)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault.isdigit():
                    payload = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                    self.send_response(int(fault))
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Content-Type", "application/xml")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                status, headers, answer = proxy.forward(self.command, self.path, self.headers, body)
                if fault == "lose":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                # A HEAD answer has no body but tells the length of the object.
                length = {k.lower(): v for k, v in headers}.get("content-length", "0")
                self.send_header("Content-Length", length if self.command == "HEAD" else str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up on a slow answer is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)
        self._thread.start()

    def forward(
        self, method: str, path: str, headers: http.client.HTTPMessage, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            forwarded["Content-Length"] = str(len(body))
            connection.request(method, path, body=body if body or method in ("PUT", "POST") else None, headers=forwarded)
            response = connection.getresponse()
            answer = response.read()
            return response.status, response.getheaders(), answer
        finally:
            connection.close()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
