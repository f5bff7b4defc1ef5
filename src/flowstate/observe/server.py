"""The HTTP server of a job's metrics and dashboard (the standard library's, like the control
endpoint: nothing to install).

Rules:

1. It listens on the loopback interface unless told otherwise.
2. ``GET /metrics`` (Prometheus text format), ``GET /`` (the dashboard), ``GET /fragment`` (its live
   part), ``GET /api/state`` (the same as JSON) read and change nothing, and need no token.
3. ``POST /api/checkpoint`` changes the job: it needs the job's control token (``Authorization:
   Bearer``): without it the answer is 401, with another token 403, and nothing is done. A server
   without a control endpoint (``flowstate ui`` on a directory) answers 404 to it.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from flowstate.observe.counters import TaskCounters
from flowstate.observe.dashboard import TaskView, View, fragment, page, rates, view_of
from flowstate.observe.history import Event, encode

if TYPE_CHECKING:
    from flowstate.clock import Clock
    from flowstate.control.endpoint import JobControl
    from flowstate.observe.metrics import JobMetrics

log = logging.getLogger("flowstate")


class Observed(Protocol):
    """What the server reads of a running job (``flowstate.observe.observer.Observer``)."""

    job: str
    clock: Clock
    metrics: JobMetrics | None
    state: str

    def events(self) -> list[Event]: ...

    def task_counters(self) -> dict[str, TaskCounters]: ...


class LiveSource:
    """The view of a running job, with the rates of its tasks over about a second."""

    def __init__(self, observer: Observed, can_trigger: bool) -> None:
        self._observer = observer
        self._can_trigger = can_trigger
        self._lock = threading.Lock()
        self._sample: tuple[float, dict[str, TaskCounters]] | None = None
        self._rates: dict[str, TaskView] = {}

    def view(self) -> View:
        observer = self._observer
        now = observer.clock.monotonic()
        counters = observer.task_counters()
        with self._lock:
            sample = self._sample
            if sample is None:
                self._sample = (now, counters)
                self._rates = {t: TaskView(c) for t, c in counters.items()}
            elif now - sample[0] >= 1.0:
                self._rates = rates(sample[1], counters, now - sample[0])
                self._sample = (now, counters)
            tasks = {t: dataclasses.replace(self._rates.get(t, TaskView(c)), counters=c) for t, c in counters.items()}
        return view_of(observer.events(), job=observer.job, state=observer.state, live=True, tasks=tasks,
                       can_trigger=self._can_trigger)

    def metrics(self) -> bytes | None:
        metrics = self._observer.metrics
        return metrics.exposition() if metrics is not None else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], view: Callable[[], View], metrics: Callable[[], bytes | None],
                 control: JobControl | None, token: str | None) -> None:
        super().__init__(address, _Handler)
        self.view = view
        self.metrics = metrics
        self.control = control
        self.token = token


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: " + format, *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body = self.server.metrics()
                if body is None:
                    self._send(404, b"no metrics here\n", "text/plain")
                else:
                    from flowstate.observe.metrics import CONTENT_TYPE

                    self._send(200, body, CONTENT_TYPE)
            elif path in ("/", "/index.html"):
                self._send(200, page(self.server.view()).encode(), "text/html; charset=utf-8")
            elif path == "/fragment":
                self._send(200, fragment(self.server.view()).encode(), "text/html; charset=utf-8")
            elif path == "/api/state":
                self._json(200, _state(self.server.view()))
            else:
                self._json(404, {"error": f"no such page: {path}"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:
        if self.path != "/api/checkpoint" or self.server.control is None or self.server.token is None:
            self._json(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Bearer "):
            self._json(401, {"error": "this endpoint needs the token of the job's control file"})
            return
        if not hmac.compare_digest(header[len("Bearer "):].encode(), self.server.token.encode()):
            self._json(403, {"error": "wrong token"})
            return
        from flowstate.control.endpoint import ControlError

        reply = self.server.control.checkpoint()
        try:
            self._json(200, reply.result(timeout=600))
        except ControlError as exc:
            self._json(409, {"error": str(exc)})
        except FutureTimeout:
            self._json(504, {"error": "no answer in time; the checkpoint may still complete"})

    def _json(self, code: int, body: Any) -> None:
        self._send(code, (json.dumps(body, sort_keys=True) + "\n").encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


def _state(view: View) -> dict[str, Any]:
    return {
        "job": view.job, "state": view.state, "settings": dict(view.settings), "vertices": list(view.vertices),
        "tasks": {t: {**dataclasses.asdict(v.counters), "records_per_second": v.records_per_second,
                      "backpressure_ratio": v.backpressure_ratio} for t, v in view.tasks.items()},
        "checkpoints": [encode(c) for c in view.checkpoints],
        "restores": [encode(r) for r in view.restores], "restarts": [encode(r) for r in view.restarts],
        "findings": [{"rule": f.rule.value, "severity": f.severity.value, "sentence": f.sentence,
                      "suggestion": f.suggestion} for f in view.findings],
    }


class HttpServer:
    """Serves a view and metrics on ``host:port`` (0: a free port) in a thread of its own."""

    def __init__(self, host: str, port: int, view: Callable[[], View], metrics: Callable[[], bytes | None], *,
                 control: JobControl | None = None, token: str | None = None, what: str = "dashboard") -> None:
        self._server = _Server((host, port), view, metrics, control, token)
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("the %s listens on %s: anyone who can reach it can read the job's metrics", what, host)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name=what, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class ObserveServer(HttpServer):
    """The running job's metrics and dashboard."""

    def __init__(self, observer: Observed, host: str, port: int, *, control: JobControl | None, token: str | None) -> None:
        source = LiveSource(observer, can_trigger=control is not None and token is not None)
        super().__init__(host, port, source.view, source.metrics, control=control, token=token)
        log.info("metrics on %smetrics, dashboard on %s", self.url, self.url)
