"""Control of a running job: status, checkpoints, savepoints and stops asked from outside.

``JobControl`` is the bridge: any thread asks (``checkpoint``, ``savepoint``, ``stop``) and gets a
future; the runner's shell takes the requests on its own thread, turns each into a coordinator
request (the coordinator stays pure) and answers through the future when the checkpoint completes or
fails. ``status`` reads what the runner publishes.

``StopOnSignal`` turns SIGTERM (what systemd, Docker and Kubernetes send) into the same stop for
``flowstate run``; see its rules.

``ControlServer`` serves ``JobControl`` over HTTP for the ``flowstate status | checkpoint |
savepoint | stop`` commands. Rules:

1. It listens on the loopback interface by default, on a port the system chooses, and writes
   ``<checkpoint dir>/_control.json`` (``host``, ``port``, ``token``, ``pid``, ``job``) with mode
   0600 before it answers anything; the file is removed when the run ends.
2. Every request must carry ``Authorization: Bearer <token>``: without it the answer is 401, with
   another token 403, and nothing is done.
3. ``GET /status`` answers at once. ``POST /checkpoint``, ``POST /savepoint`` (body
   ``{"target": DIR}``, optional) and ``POST /stop`` (body ``{"savepoint": bool, "target": DIR}``)
   answer when the checkpoint is complete (200: ``checkpoint_id``, and ``path`` for a savepoint), or
   409 with the reason when it was refused or failed. A stop's answer comes when its checkpoint is
   complete; the job then ends and the endpoint closes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import secrets
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flowstate.checkpoint.ids import CheckpointId, RequestId
from flowstate.clock import Clock, SystemClock
from flowstate.errors import FlowstateError

log = logging.getLogger("flowstate")

CONTROL_FILE = "_control.json"
DEFAULT_HOST = "127.0.0.1"


class ControlError(FlowstateError):
    """A control request was refused, or its checkpoint failed, or the job ended first."""


class NoJobRunning(FlowstateError):
    """No job answers on the control endpoint of a checkpoint directory."""


class TokenRefused(FlowstateError):
    """The control endpoint refused the token."""


class RequestKind(Enum):
    CHECKPOINT = "checkpoint"
    SAVEPOINT = "savepoint"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One request of a checkpoint, a savepoint or a stop, answered through ``reply``."""

    kind: RequestKind
    savepoint: bool
    target: Path | None
    reply: Future[dict[str, Any]]


class JobControl:
    """The bridge between callers on any thread and the runner of one job (see the module)."""

    def __init__(self) -> None:
        self._requests: queue.Queue[ControlRequest] = queue.Queue()
        self._status: Callable[[], dict[str, Any]] = lambda: {"state": "starting"}
        self._ended: str | None = None
        """Why the run ended (``fail_all``): a request asked afterwards fails at once."""
        # Only the runner's thread touches these two.
        self.asked: dict[RequestId, ControlRequest] = {}
        """Requests the coordinator accepted and has not triggered yet."""
        self.triggered: dict[CheckpointId, ControlRequest] = {}
        """Requests whose checkpoint is in flight."""

    # ---- callers (any thread) ----------------------------------------------------------------------

    def checkpoint(self) -> Future[dict[str, Any]]:
        """A checkpoint now; the future gives ``{"checkpoint_id": n}`` once it is complete."""
        return self._ask(RequestKind.CHECKPOINT, False, None)

    def savepoint(self, target: str | os.PathLike[str] | None = None) -> Future[dict[str, Any]]:
        """A savepoint in a new directory under ``target`` (default: the job's savepoint directory);
        the future gives ``{"checkpoint_id": n, "path": "…"}`` once it is complete."""
        return self._ask(RequestKind.SAVEPOINT, True, target)

    def stop(self, *, savepoint: bool = False, target: str | os.PathLike[str] | None = None) -> Future[dict[str, Any]]:
        """Take a last checkpoint (a savepoint with ``savepoint``) after which the sources read
        nothing more, commit the output up to it, and end the job."""
        return self._ask(RequestKind.STOP, savepoint, target)

    def status(self) -> dict[str, Any]:
        return self._status()

    def _ask(self, kind: RequestKind, savepoint: bool, target: str | os.PathLike[str] | None) -> Future[dict[str, Any]]:
        reply: Future[dict[str, Any]] = Future()
        self._requests.put(ControlRequest(kind, savepoint, Path(target) if target is not None else None, reply))
        # Put, then look: either fail_all's take finds the request or this finds the run ended.
        if self._ended is not None:
            for request in self.take():
                _fail(request, self._ended)
        return reply

    # ---- the runner (its own thread) ---------------------------------------------------------------

    def publish(self, status: Callable[[], dict[str, Any]]) -> None:
        """Where ``status`` reads from from now on (a run starts: requests are taken again)."""
        self._status = status
        self._ended = None

    def take(self) -> list[ControlRequest]:
        """Every request asked since the last call."""
        taken = []
        while True:
            try:
                taken.append(self._requests.get_nowait())
            except queue.Empty:
                return taken

    def fail_waiting(self, reason: str) -> None:
        """The attempt ended: every accepted request fails with ``reason``."""
        for request in [*self.asked.values(), *self.triggered.values()]:
            _fail(request, reason)
        self.asked.clear()
        self.triggered.clear()

    def fail_all(self, reason: str) -> None:
        """The run ended: every request, asked or accepted, fails with ``reason``, and so does
        every request asked from now on."""
        self._ended = reason
        self.fail_waiting(reason)
        for request in self.take():
            _fail(request, reason)


def _fail(request: ControlRequest, reason: str) -> None:
    if not request.reply.done():
        request.reply.set_exception(ControlError(reason))


# ---- SIGTERM ----------------------------------------------------------------------------------------


class Terminated(BaseException):
    """Raised in the main thread to stop a run at once (rule 2 of ``StopOnSignal``). Like
    ``KeyboardInterrupt`` it is no ``Exception``: no handler of a failure catches it, so the run
    unwinds (its tasks cancelled, its control file removed, its lock released) and ends."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class StopOnSignal:
    """SIGTERM stops a run gracefully, as ``flowstate stop`` does.

    Rules:

    1. The first SIGTERM asks ``control`` for a stop: a final checkpoint, the output up to it
       committed, then the job ends (``JobResult.stopped``). A stop that is refused or fails (the
       job is restarting, its checkpoint was aborted) is asked again until the run ends.
    2. A second SIGTERM, or ``grace`` seconds after the first without the run having ended, stops
       the run at once: ``Terminated`` is raised in the main thread (with ``grace`` 0, for a job
       that takes no checkpoints, the first SIGTERM does). Nothing after the latest
       completed checkpoint is committed; the next run resumes from it.
    3. The signal handler only counts and writes one byte to a pipe (no lock is taken in it); a
       thread of its own reads the pipe and makes the requests. Only the main thread can install
       it; ``close()`` puts the previous handler back, after which nothing is raised any more.
    """

    def __init__(self, control: JobControl, *, grace: float, signum: int = signal.SIGTERM,
                 clock: Clock | None = None) -> None:
        self._control = control
        self._grace = grace
        self._signum = signum
        self._clock = clock or SystemClock()
        self._signals = 0
        self._active = True
        self._timed_out = False
        self._ended = threading.Event()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.signal(signum, self._handle)
        self._thread = threading.Thread(target=self._serve, name="stop-on-signal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """The run ended: restore the previous handler and end the thread (main thread)."""
        self._active = False
        signal.signal(self._signum, self._previous)
        self._ended.set()
        try:
            os.write(self._write, b"x")  # wakes the thread if no signal came
        except OSError:
            pass
        self._thread.join(timeout=5.0)
        os.close(self._read)
        os.close(self._write)

    def __enter__(self) -> StopOnSignal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _handle(self, signum: int, frame: object) -> None:
        self._signals += 1
        if self._signals == 1:
            try:
                os.write(self._write, b"s")
            except OSError:
                pass
            return
        if self._active:
            name = signal.Signals(signum).name
            if not self._timed_out:
                raise Terminated(f"a second {name}")
            raise Terminated(f"no stop within {self._grace:g} s of {name}" if self._grace > 0 else name)

    def _serve(self) -> None:
        os.read(self._read, 1)
        if self._ended.is_set():
            return
        name = signal.Signals(self._signum).name
        if self._grace > 0:
            log.warning("%s: stopping the job after a final checkpoint (a second %s, or %g s without the stop "
                        "done, stops it at once)", name, name, self._grace)
        clock = self._clock
        deadline = clock.monotonic() + self._grace
        reply: Future[dict[str, Any]] | None = None
        stopped = False
        refused = ""
        while not self._ended.is_set():
            left = deadline - clock.monotonic()
            if left <= 0:
                self._timed_out = True
                if self._grace > 0:
                    log.warning("the job did not stop within %g s of %s: stopping it at once", self._grace, name)
                # Delivered to the main thread, so that a call blocking there is interrupted too.
                signal.pthread_kill(threading.main_thread().ident or 0, self._signum)
                return
            if stopped:  # the final checkpoint is complete: the run is ending
                self._ended.wait(min(left, 0.25))
                continue
            if reply is None:
                reply = self._control.stop()
            try:
                reply.result(timeout=min(left, 0.25))
                stopped = True
            except FutureTimeout:
                continue
            except ControlError as exc:  # refused or failed (rule 1): asked again
                if str(exc) != refused:
                    refused = str(exc)
                    log.info("the stop on %s is not done yet: %s", name, exc)
                reply = None
                self._ended.wait(min(left, 0.2))


# ---- the HTTP endpoint ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close waits for every answer in progress (rule 3: a stop's answer)
    block_on_close = True

    def __init__(self, address: tuple[str, int], control: JobControl, token: str, wait: float) -> None:
        super().__init__(address, _Handler)
        self.control = control
        self.token = token
        self.wait = wait


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a client that stops talking does not hold a thread for ever
    # HTTP/1.0 (the default): one request per connection, so no idle connection delays the close.

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control endpoint: " + format, *args)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path != "/status":
            self._answer(404, {"error": f"no such endpoint: GET {self.path}"})
            return
        self._answer(200, self.server.control.status())

    def do_POST(self) -> None:
        if not self._authorized():
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        except ValueError as exc:
            self._answer(400, {"error": f"bad request body: {exc}"})
            return
        if not isinstance(body, dict):
            self._answer(400, {"error": "bad request body: not a JSON object"})
            return
        target = body.get("target")
        if target is not None and not isinstance(target, str):
            self._answer(400, {"error": "target must be a path (a string)"})
            return
        control = self.server.control
        if self.path == "/checkpoint":
            reply = control.checkpoint()
        elif self.path == "/savepoint":
            reply = control.savepoint(target)
        elif self.path == "/stop":
            reply = control.stop(savepoint=bool(body.get("savepoint")), target=target)
        else:
            self._answer(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        try:
            self._answer(200, reply.result(timeout=self.server.wait))
        except ControlError as exc:
            self._answer(409, {"error": str(exc)})
        except FutureTimeout:
            self._answer(504, {"error": f"no answer within {self.server.wait:.0f} s; the request may still complete"})

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization")
        if not header or not header.startswith("Bearer "):
            self._answer(401, {"error": "this endpoint needs the token of the job's control file"},
                         {"WWW-Authenticate": "Bearer"})
            return False
        if not hmac.compare_digest(header[len("Bearer "):].encode(), self.server.token.encode()):
            self._answer(403, {"error": "wrong token"})
            return False
        return True

    def _answer(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class ControlServer:
    """The HTTP control endpoint of one run (rules 1-3)."""

    def __init__(self, control: JobControl, directory: Path, *, job: str, host: str = DEFAULT_HOST,
                 wait: float = 3600.0) -> None:
        self._directory = directory
        self._token = secrets.token_urlsafe(32)
        self._server = _Server((host, 0), control, self._token, wait)
        self.host, self.port = self._server.server_address[:2]
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("the control endpoint listens on %s: anyone who can reach it and read the token "
                        "can stop the job; the connection is not encrypted", host)
        _write_private(directory / CONTROL_FILE, {
            "host": host, "port": self.port, "token": self._token, "pid": os.getpid(), "job": job,
        })
        # A short poll interval: closing the endpoint (at the end of the run) waits for one poll.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="control", daemon=True)
        self._thread.start()
        log.info("control endpoint on http://%s:%d (token in %s)", host, self.port, directory / CONTROL_FILE)

    @property
    def token(self) -> str:
        return self._token

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        path = self._directory / CONTROL_FILE
        try:
            if json.loads(path.read_text()).get("token") == self._token:
                path.unlink()
        except (OSError, ValueError):
            pass


def _write_private(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as JSON readable by the owner only, replacing ``path`` atomically."""
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(content, file)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


# ---- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    token: str
    pid: int | None
    job: str | None
    directory: Path


def read_endpoint(directory: str | os.PathLike[str]) -> Endpoint:
    """The endpoint of the job running with checkpoint directory ``directory``. Raises
    ``NoJobRunning`` when there is no control file, ``TokenRefused`` when it cannot be read."""
    where = Path(directory)
    path = where / CONTROL_FILE
    try:
        content = json.loads(path.read_text())
        host, port, token = content["host"], int(content["port"]), str(content["token"])
    except FileNotFoundError:
        raise NoJobRunning(f"no job is running with checkpoint directory {where} (no {CONTROL_FILE} there)") from None
    except PermissionError:
        raise TokenRefused(f"cannot read {path}: permission denied (it belongs to the user who runs the job)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenRefused(f"cannot read the control file {path}: {exc}") from None
    shown = f"[{host}]" if ":" in host else host
    return Endpoint(f"http://{shown}:{port}", token, content.get("pid"), content.get("job"), where)


def call(endpoint: Endpoint, method: str, path: str, body: dict[str, Any] | None = None,
         timeout: float | None = None) -> dict[str, Any]:
    """One request to the endpoint; the JSON answer. Raises ``NoJobRunning`` when nothing answers,
    ``TokenRefused`` on 401/403 and ``ControlError`` for a refused or failed request."""
    data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
    request = urllib.request.Request(endpoint.url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {endpoint.token}", "Content-Type": "application/json",
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        if exc.code in (401, 403):
            raise TokenRefused(
                f"the job's control endpoint refused the token in {endpoint.directory / CONTROL_FILE}: {reason}"
            ) from None
        raise ControlError(str(reason)) from None
    except (urllib.error.URLError, ConnectionError) as exc:
        alive = _alive(endpoint.pid)
        hint = ("" if alive else f"; process {endpoint.pid} is gone: the control file was left by a run that "
                "was killed") if endpoint.pid is not None else ""
        raise NoJobRunning(
            f"no job is running with checkpoint directory {endpoint.directory}: its control endpoint "
            f"{endpoint.url} does not answer ({getattr(exc, 'reason', exc)}){hint}"
        ) from None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
