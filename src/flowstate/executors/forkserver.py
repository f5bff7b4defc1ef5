"""The fork server of the multi-process executor: one small process per run that has imported the
worker's code once and forks a worker process on request, so that an attempt does not pay for a
fresh interpreter importing ``flowstate`` in every worker (``flowstate.executors.processes``, rule 1).

Rules:

1. The server is started (``python -m flowstate.executors.forkserver``) by the coordinator at the first
   attempt of a run that needs workers, and stopped at the end of the run (``ForkServerHandle.close``).
   It imports the worker's modules (``flowstate.executors.worker`` and what a worker needs to unpack a
   plan), never the job's code: the job arrives inside the plan, which only a forked worker unpickles.
   Unlike ``multiprocessing``'s forkserver it never imports the user's ``__main__``, so a script that
   calls ``fs.run`` without a main guard does not start its job again in each worker.
2. The server is single-threaded and stays so (it never opens RocksDB, a storage client or a
   connection of the job), so a fork of it inherits no lock held by a thread that does not exist in
   the child: this is why the coordinator, which runs threads, never forks, and the server may.
3. Protocol, over a Unix stream socket pair, one request at a time (the coordinator waits for the
   answer to a request before it sends the next): the coordinator first sends its ``sys.path``
   (``Setup``); then each ``ForkRequest`` carries, as ``SCM_RIGHTS`` descriptors, the read end of the
   worker's start pipe (it becomes the worker's standard input) and the descriptors the worker keeps
   open (the checkpoint directory's lock, the failpoints' shared counts). The server forks; the child
   becomes exactly what ``python -m flowstate.executors.start`` is (``start.worker_main``, told
   the numbers its descriptors have in it), and the server answers ``Forked(pid)``. The server
   closes its copies of the descriptors after the fork: the worker holds the only ones.
4. The server reaps its children (SIGCHLD, through a self-pipe in its ``select`` loop) and reports
   ``Exited(pid, returncode)`` for each, with ``Popen.returncode``'s convention (``-9``: killed by
   SIGKILL), always after that pid's ``Forked``. The coordinator cannot ``waitpid`` its workers (they
   are the server's children); it reads these reports instead, and kills a worker by its pid.
5. Lifetime: the server dies with the coordinator (on Linux SIGKILL at its parent's death, which the
   kernel ties to the thread that started it: the thread running the job, whose every attempt it
   runs; everywhere it ends when its socket closes, killing the workers it still has); workers die with the server
   (their own parent-death signal) and end when their control connection closes. It runs in a
   process group of its own and ignores SIGINT and SIGTERM, as workers do: the coordinator decides.
6. When the server cannot start (no ``fork``, no descriptor passing, an error in the helper), the
   executor starts fresh interpreters, as it would without the server; the handle says so once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, NoReturn

log = logging.getLogger("flowstate")

READY_TIMEOUT = 60.0
"""Seconds the coordinator waits for a new server to import the worker's code and say it is ready."""
CLOSE_TIMEOUT = 10.0
"""Seconds ``close`` waits for the server to end before it kills it."""
MAX_FDS = 16
"""The most descriptors one request may carry."""

_LENGTH = struct.Struct("!I")
_REPORT = struct.Struct("!cqi")
"""A report of the server: kind (``F`` forked, ``E`` exited, ``R`` ready), pid, return code."""


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message to a server: where its workers import modules from."""

    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ForkRequest:
    """Fork one worker. Its descriptors travel beside it: the start pipe's read end, then one for
    each of ``keep``, the numbers they have in the coordinator (the worker's ``WorkerStart`` names
    them by those numbers)."""

    keep: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ready:
    """The server imported the worker's code and serves requests."""

    pid: int


@dataclass(frozen=True, slots=True)
class Forked:
    pid: int


@dataclass(frozen=True, slots=True)
class Exited:
    """A child of the server ended; ``returncode`` as ``Popen.returncode`` says it."""

    pid: int
    returncode: int


Report = Ready | Forked | Exited


def encode_report(report: Report) -> bytes:
    match report:
        case Ready(pid):
            return _REPORT.pack(b"R", pid, 0)
        case Forked(pid):
            return _REPORT.pack(b"F", pid, 0)
        case Exited(pid, returncode):
            return _REPORT.pack(b"E", pid, returncode)


def decode_report(buffer: bytearray) -> Report | None:
    """The complete report at the start of ``buffer``, removed from it; ``None`` while only part of
    one arrived."""
    if len(buffer) < _REPORT.size:
        return None
    kind, pid, code = _REPORT.unpack_from(buffer)
    del buffer[:_REPORT.size]
    if kind == b"R":
        return Ready(pid)
    if kind == b"F":
        return Forked(pid)
    if kind == b"E":
        return Exited(pid, code)
    raise ValueError(f"fork server: unknown report kind {kind!r}")


def decode_reports(buffer: bytearray) -> list[Report]:
    """Every complete report at the start of ``buffer``, removed from it (a partial one stays)."""
    reports: list[Report] = []
    while (report := decode_report(buffer)) is not None:
        reports.append(report)
    return reports


def supported() -> bool:
    """Whether this platform can run a fork server (``fork`` and descriptor passing)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX")


class ServerGone(OSError):
    """The fork server ended (it was killed, or failed): no worker can be forked by it any more."""


class ForkServer:
    """The coordinator's side of one running server (rule 3). Thread-safe: the control threads of
    the workers and ``stop`` may ask for exits while an attempt forks."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.process = process
        self._sock = sock
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._exits: dict[int, int] = {}
        self._gone = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls) -> ForkServer:
        """Start a server and wait until it is ready (``ServerGone`` when it is not)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(  # noqa: S603 - this interpreter, this package's module
                [sys.executable, "-m", "flowstate.executors.forkserver", str(theirs.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                process_group=0,  # Ctrl-C in a terminal reaches the coordinator only (rule 5)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        server = cls(process, ours)
        try:
            _send_message(ours, Setup(tuple(sys.path)))
            ours.settimeout(READY_TIMEOUT)
            report = server._next_report()
            if not isinstance(report, Ready) or report.pid != process.pid:
                raise ServerGone(f"fork server: expected ready, got {report!r}")
            ours.settimeout(None)
        except BaseException:  # also ``Terminated``, raised while it imports: it goes on up
            server.close()
            raise
        return server

    def fork(self, stdin: int, keep: tuple[int, ...]) -> int:
        """Fork a worker whose standard input is ``stdin`` (a pipe's read end, still ours to close)
        and which keeps ``keep`` open; its pid (``ServerGone`` when the server ended)."""
        with self._lock:
            if self._gone:
                raise ServerGone("the fork server has ended")
            try:
                data = pickle.dumps(ForkRequest(keep), protocol=pickle.HIGHEST_PROTOCOL)
                socket.send_fds(self._sock, [_LENGTH.pack(len(data)) + data], [stdin, *keep])
                while True:
                    report = self._next_report()
                    if isinstance(report, Forked):
                        return report.pid
                    if isinstance(report, Exited):
                        self._exits[report.pid] = report.returncode
            except OSError as exc:
                self._gone = True
                raise ServerGone(f"the fork server has ended ({exc})") from None

    def returncode(self, pid: int) -> int | None:
        """How the server's child ``pid`` ended, if it has and the server said so (never waits).
        Raises ``ServerGone`` for a child whose end the server can no longer report."""
        with self._lock:
            if pid not in self._exits and not self._gone:
                try:
                    while True:
                        chunk = self._sock.recv(4096, socket.MSG_DONTWAIT)
                        if not chunk:
                            self._gone = True
                            break
                        self._buffer += chunk
                except BlockingIOError:
                    pass
                except OSError:
                    self._gone = True
                for report in decode_reports(self._buffer):
                    if isinstance(report, Exited):
                        self._exits[report.pid] = report.returncode
            if pid in self._exits:
                return self._exits.pop(pid)
            if self._gone:
                raise ServerGone("the fork server has ended")
            return None

    @property
    def alive(self) -> bool:
        return not self._gone and self.process.poll() is None

    def close(self) -> None:
        """Stop the server: it kills the workers it still has, reaps them and exits (rule 5)."""
        with self._lock:
            self._gone = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        try:
            self.process.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _next_report(self) -> Report:
        """Blocking: the next report (the lock is held, or nobody else uses the socket yet)."""
        while True:
            report = decode_report(self._buffer)
            if report is not None:
                return report
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ServerGone("the fork server closed its socket")
            self._buffer += chunk


class ForkServerHandle:
    """The fork server of one run: started at the first ``get`` (rule 1), started again when it
    ended, stopped by ``close``. ``get`` returns ``None`` when no server can run here (rule 6)."""

    def __init__(self) -> None:
        self._server: ForkServer | None = None
        self._unavailable = not supported()
        self._lock = threading.Lock()

    def get(self) -> ForkServer | None:
        with self._lock:
            if self._unavailable:
                return None
            if self._server is not None and not self._server.alive:
                self._server.close()
                self._server = None
            if self._server is None:
                try:
                    self._server = ForkServer.start()
                except Exception as exc:  # noqa: BLE001 - any failure means: start fresh interpreters
                    self._unavailable = True
                    log.warning("the fork server of the worker processes did not start (%s: %s); starting "
                                "each worker as a fresh interpreter", type(exc).__name__, exc)
                    return None
            return self._server

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None


def _send_message(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LENGTH.pack(len(data)) + data)


# ---- the server's side ------------------------------------------------------------------------------


def _receive_exactly(sock: socket.socket, size: int, into: bytearray) -> bool:
    while len(into) < size:
        chunk = sock.recv(size - len(into))
        if not chunk:
            return False
        into += chunk
    return True


def _receive_request(sock: socket.socket) -> tuple[ForkRequest, list[int]] | None:
    """The next request and its descriptors; ``None`` when the coordinator closed the socket."""
    data, fds, _, _ = socket.recv_fds(sock, 65536, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    buffer = bytearray(data)
    if not _receive_exactly(sock, _LENGTH.size, buffer):
        return None
    (length,) = _LENGTH.unpack_from(buffer)
    if not _receive_exactly(sock, _LENGTH.size + length, buffer):
        return None
    request = pickle.loads(bytes(buffer[_LENGTH.size:]))
    if not isinstance(request, ForkRequest) or len(fds) != 1 + len(request.keep):
        raise ValueError(f"fork server: malformed request {request!r} with {len(fds)} descriptor(s)")
    return request, fds


def _receive_setup(sock: socket.socket) -> Setup:
    buffer = bytearray()
    if not _receive_exactly(sock, _LENGTH.size, buffer):
        os._exit(0)
    (length,) = _LENGTH.unpack_from(buffer)
    if not _receive_exactly(sock, _LENGTH.size + length, buffer):
        os._exit(0)
    setup = pickle.loads(bytes(buffer[_LENGTH.size:]))
    assert isinstance(setup, Setup)
    return setup


def serve(sock: socket.socket) -> NoReturn:
    """Rules 2-5: fork a worker per request and report every child's end, until the socket closes."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wake-up byte is what counts
    children: set[int] = set()
    try:
        while True:
            watched: list[Any] = [sock, wake_r]
            readable, _, _ = select.select(watched, [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(sock, children)
            if sock in readable:
                received = _receive_request(sock)
                if received is None:
                    break
                request, fds = received
                pid = os.fork()
                if pid == 0:
                    _become_worker(request, fds, sock, (wake_r, wake_w))
                children.add(pid)
                for fd in fds:
                    os.close(fd)
                sock.sendall(encode_report(Forked(pid)))
                _reap(sock, children)  # a child that ended already, reported after its Forked
    except OSError:
        pass  # the coordinator is gone
    # Rule 5: no worker outlives its server, also where no parent-death signal exists.
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    os._exit(0)


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        sock.sendall(encode_report(Exited(pid, os.waitstatus_to_exitcode(status))))


def _become_worker(request: ForkRequest, fds: list[int], sock: socket.socket, wake: tuple[int, int]) -> NoReturn:
    """In the forked child: drop the server's own descriptors and handlers, then run the worker's
    main exactly as ``python -m flowstate.executors.start`` does (rule 3)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in wake:
            os.close(fd)
        os.setpgid(0, 0)
        stdin, kept = fds[0], fds[1:]
        os.dup2(stdin, 0)
        os.close(stdin)
        from flowstate.executors.start import worker_main

        worker_main(dict(zip(request.keep, kept, strict=True)))
    finally:
        os._exit(code)


def main() -> NoReturn:
    """``python -m flowstate.executors.forkserver FD PARENT``: serve the coordinator ``PARENT`` over the
    socket ``FD``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(fileno=fd)
    try:
        from flowstate.executors.start import die_with_parent

        die_with_parent(parent)
        setup = _receive_setup(sock)
        sys.path[:] = [p for p in setup.path if p not in sys.path] + sys.path
        # What every worker needs before it reads its plan, imported once here (rule 1).
        import cloudpickle  # noqa: F401 - a packed plan's functions unpickle with it

        import flowstate.executors.worker  # noqa: F401

        threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()
        if threads != 1:  # rule 2, checked (also native threads, on Linux): a fork would inherit their locks
            raise RuntimeError(f"fork server: {threads} threads after its imports")
        sock.sendall(encode_report(Ready(os.getpid())))
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the coordinator stopped waiting for this server: nothing to say
    except BaseException as exc:  # noqa: BLE001 - the coordinator falls back to fresh interpreters
        with contextlib.suppress(Exception):
            print(f"fork server: {type(exc).__name__}: {exc}", file=sys.stderr)
        os._exit(1)
    serve(sock)


if __name__ == "__main__":  # the module's own name, so that its messages unpickle as its classes
    from flowstate.executors.forkserver import main as serve_coordinator

    serve_coordinator()

