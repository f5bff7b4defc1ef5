"""The multi-process executor: worker processes, each running a share of the tasks, with the
coordinator in this (the parent) process. Records cross processes as batches pickled once, in frames
over loopback TCP with credit-based flow control (``flowstate.transport.remote``); barriers travel
in-band, in the same frames; the worker protocol is ``flowstate.executors.protocol``.

Rules:

1. Workers are started at the start of each attempt once the attempt's plan
   (``flowstate.task.plan``) is made. Never forked from this process: it runs threads by then
   (the coordinator's, RocksDB's, an object-store client's), and a fork of a threaded process
   inherits their locks without the threads, so a worker could wait forever on a lock that was held
   at the fork or on a thread pool that does not exist in it. They are forked by the run's fork
   server (``flowstate.executors.forkserver``: single-threaded, it imported the worker's code once and
   never imports the job's), started at the first attempt that needs workers and stopped at the end
   of the run by the job runner; so a restart does not pay for importing ``flowstate`` in every
   worker. Where no fork server can run (no ``fork``, or it failed to start), each worker is a fresh
   interpreter, ``python -m flowstate.executors.start``; both run ``worker_main`` from its first line,
   so a worker is the same process either way. A worker receives one explicit value, a
   ``WorkerStart`` pickled into its standard input (a pipe): the plan packed with cloudpickle
   (``pack``: lambdas and the functions of a job file travel by value), the placement, its index,
   the coordinator's address and the attempt's token, this process's ``sys.path`` and logging, and
   the failpoints' shared counts (``Failpoints.share``; their descriptor is passed to it, by
   ``pass_fds`` or through the fork server's socket, which may give it another number:
   ``worker_main`` is told which). It builds its tasks from the plan alone, as a Ray actor does: it
   opens its own client of the checkpoint storage from the plan's spec and loads the state of its
   own tasks only. A job that cannot be pickled is refused before any worker starts.
2. A worker dies with the coordinator: on Linux it asks the kernel for SIGKILL when its parent
   exits (the fork server, which itself gets SIGKILL when the coordinator exits, or the coordinator),
   and everywhere it ends itself when its control connection closes. It holds the checkpoint
   directory's lock (its descriptor is passed to it), so a new run cannot start while a worker of
   the old one lives. It runs in a process group of its own and ignores SIGINT and SIGTERM: Ctrl-C
   and a stop go to the coordinator, which decides, stops the job and ends the workers.
3. A worker that exits or is killed while its attempt runs is noticed when its control connection
   closes, which the kernel does as the process dies: the attempt fails with a ``WorkerLostError``
   naming the worker, its tasks and how it ended (its exit status from ``waitpid``, or as the fork
   server, its parent, reports it). The restart strategy decides as for any failure.
   Every worker of a failed attempt is killed, so no task of it writes anything any more, and the
   next attempt starts new workers, every task restored from the latest completed checkpoint (a full
   restart). A checkpoint in flight at the failure is never completed: its coordinator ends with the
   attempt, and the next attempt sweeps the files it left.
4. A successful attempt stops its workers gracefully: each cancels its (finished) tasks, waits for
   its snapshot writes and exits (without the interpreter's shutdown, which could wait for a thread
   of the job's code).

``WorkerPool`` is everything but how workers are started, watched and killed; the Ray executor
(``flowstate.executors.ray_cluster``) shares it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from flowstate.checkpoint.ids import TaskId, task_id
from flowstate.clock import Clock, SystemClock
from flowstate.executors.base import STOP_TIMEOUT
from flowstate.executors.forkserver import ForkServer, ForkServerHandle, ServerGone
from flowstate.executors.protocol import (
    Address,
    BuildFailed,
    Built,
    Hello,
    Mail,
    PeerLost,
    Peers,
    Progress,
    Start,
    Stop,
    WorkerLostError,
    place,
)
from flowstate.executors.start import WorkerStart
from flowstate.observe.counters import TaskCounters
from flowstate.task.messages import TaskFailed, TaskFinished
from flowstate.task.plan import pack
from flowstate.transport.ports import Reports
from flowstate.transport.remote import ControlChannel

if TYPE_CHECKING:
    from flowstate.graph import JobGraph
    from flowstate.task.plan import AttemptPlan

log = logging.getLogger("flowstate")

STARTUP_TIMEOUT = 120.0
"""Seconds the coordinator waits for its workers to connect."""
DEATH_GRACE = 1.0
"""Seconds the coordinator waits, after a worker's control connection closed, to learn how it ended."""


class WorkerLink:
    """The coordinator's side of one worker: its control channel, tasks, progress and end."""

    def __init__(self, index: int, tasks: tuple[TaskId, ...]) -> None:
        self.index = index
        self.tasks = tasks
        self.started = False
        self.pid: int | None = None
        self.control: ControlChannel | None = None
        self.address: Address | None = None
        self.records: dict[TaskId, int] = {}
        self.counters: dict[TaskId, TaskCounters] = {}
        self.finished: set[TaskId] = set()
        self.ended: str | None = None
        """How the worker ended (``"was killed by SIGKILL"``), once known."""

    def send(self, message: Any) -> None:
        """Best effort: a worker that is gone is reported by its reading thread, not here."""
        if self.control is not None:
            try:
                self.control.send(message)
            except OSError:
                pass

    def describe(self) -> str:
        return f"worker {self.index} (pid {self.pid}; tasks {', '.join(self.tasks)})"


@dataclass(frozen=True, slots=True, eq=False)
class RemoteTask:
    """The ``TaskHandle`` of a task that runs in a worker."""

    task_id: TaskId
    is_source: bool
    link: WorkerLink

    @property
    def records_in(self) -> int:
        return self.link.records.get(self.task_id, 0)

    def counters(self) -> TaskCounters:
        return self.link.counters.get(self.task_id) or TaskCounters()

    def post(self, mail: Any) -> None:
        self.link.send(Mail(self.task_id, mail))


class WorkerPool:
    """An executor whose tasks run in worker processes (see the module rules). Subclasses say how
    workers start (``_spawn``), how one is seen to have ended (``_poll``) and how it is killed."""

    name = "workers"
    host = "127.0.0.1"
    """Where the control listener binds; workers reach the coordinator there."""

    def __init__(self, graph: JobGraph, workers: int, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._placement = place(graph, workers)
        self.workers = self._placement.count
        sources = {task_id(v.name, i) for v in graph.vertices if v.is_source for i in range(v.parallelism)}
        self._links = [WorkerLink(w, self._placement.tasks_of(w)) for w in range(self.workers)]
        self._handles = {tid: RemoteTask(tid, tid in sources, link) for link in self._links for tid in link.tasks}
        self._events: queue.Queue[Any] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._stopping = False
        self._lost = threading.Lock()
        self._lost_reported = False

    # ---- Executor ----------------------------------------------------------------------------------

    def build(self, plan: AttemptPlan, reports: Reports) -> dict[TaskId, RemoteTask]:
        self._listener = socket.create_server((self.host, 0), backlog=self.workers)
        token = secrets.token_hex(16)
        self._spawn(plan, self._listener.getsockname()[:2], token)
        self._accept(token)
        peers = Peers(tuple(link.address for link in self._links))  # type: ignore[misc]
        for link in self._links:
            link.send(peers)
        for link in self._links:
            thread = threading.Thread(target=self._serve, args=(link, reports), daemon=True,
                                      name=f"control of worker {link.index}")
            self._threads.append(thread)
            thread.start()
        built: set[int] = set()
        dropped: dict[str, None] = {}
        while len(built) < self.workers:
            event = self._events.get()
            if isinstance(event, Built):
                built.add(event.worker)
                dropped.update(dict.fromkeys(event.dropped))
            elif isinstance(event, BuildFailed):
                raise event.error
            elif isinstance(event, BaseException):
                raise event
        for sentence in dropped:  # once, though several workers may have read that state
            log.warning("dropping state (--allow-non-restored-state): %s", sentence)
        return dict(self._handles)

    def launch(self) -> None:
        for link in self._links:
            link.send(Start())

    def stop(self, graceful: bool) -> None:
        self._stopping = True
        if graceful:
            for link in self._links:
                link.send(Stop())
            for link in self._links:
                if link.pid is not None and self._wait_ended(link, STOP_TIMEOUT) is None:
                    log.warning("%s did not stop within %.0f s; killing it", link.describe(), STOP_TIMEOUT)
                    self._kill(link)
        else:
            for link in self._links:
                self._kill(link)
        for link in self._links:
            self._wait_ended(link, STOP_TIMEOUT)
            if link.control is not None:
                link.control.close()
        if self._listener is not None:
            self._listener.close()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)

    # ---- for subclasses -------------------------------------------------------------------------------

    def _spawn(self, plan: AttemptPlan, coordinator: Address, token: str) -> None:
        """Start every worker; each runs ``worker.serve`` of ``plan`` for its index."""
        raise NotImplementedError

    def _poll(self, link: WorkerLink) -> str | None:
        """How the worker ended, if it has (never waits)."""
        raise NotImplementedError

    def _kill(self, link: WorkerLink) -> None:
        raise NotImplementedError

    # ---- the coordinator's side of the protocol -----------------------------------------------------

    def _accept(self, token: str) -> None:
        """Step 2 of ``flowstate.executors.protocol``: every worker connects and says hello."""
        listener = self._listener
        assert listener is not None
        listener.settimeout(0.1)
        give_up = self._clock.monotonic() + STARTUP_TIMEOUT
        waiting = {link.index for link in self._links}
        while waiting:
            for w in waiting:
                ended = self._poll(self._links[w])
                if ended is not None:
                    raise WorkerLostError(f"{self._links[w].describe()} {ended} before it connected")
            if self._clock.monotonic() > give_up:
                raise WorkerLostError(f"workers {sorted(waiting)} did not connect within {STARTUP_TIMEOUT:.0f} s")
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            channel = ControlChannel(sock)
            hello = channel.receive(timeout=STARTUP_TIMEOUT)
            if not isinstance(hello, Hello) or hello.token != token or hello.worker not in waiting:
                channel.close()  # not a worker of this attempt
                continue
            link = self._links[hello.worker]
            link.control = channel
            link.address = hello.address
            link.pid = link.pid or hello.pid
            waiting.discard(hello.worker)

    def _serve(self, link: WorkerLink, reports: Reports) -> None:
        """Read one worker's control connection until it closes."""
        control = link.control
        assert control is not None
        closed = "closed its control connection"
        try:
            while True:
                message = control.receive()
                if message is None:
                    break
                if isinstance(message, Progress):
                    link.records.update(message.records)
                    link.counters.update(message.counters)
                elif isinstance(message, (Built, BuildFailed)):
                    self._events.put(message)
                elif isinstance(message, PeerLost):
                    self._peer_lost(message, reports)
                else:
                    if isinstance(message, TaskFinished):
                        link.finished.add(message.task)
                    reports.put(message)
        except Exception as exc:  # noqa: BLE001 - a broken control connection is a lost worker
            closed = f"broke its control connection ({type(exc).__name__}: {exc})"
        # A worker whose tasks all finished has nothing left to lose (its sinks committed).
        if not self._stopping and not link.finished.issuperset(link.tasks):
            ended = self._wait_ended(link, DEATH_GRACE) or closed
            self._report_lost(link, WorkerLostError(f"{link.describe()} {ended}"), reports)

    def _peer_lost(self, message: PeerLost, reports: Reports) -> None:
        """A worker lost its connection to another. When the other one died, its own reading thread
        reports that (a better account); otherwise the connection broke by itself."""
        peer = self._links[message.peer]
        if self._stopping or self._wait_ended(peer, DEATH_GRACE) is not None:
            return
        error = WorkerLostError(f"worker {message.worker} lost its connection to {peer.describe()}: {message.reason}")
        self._report_lost(self._links[message.worker], error, reports)

    def _report_lost(self, link: WorkerLink, error: WorkerLostError, reports: Reports) -> None:
        with self._lost:
            if self._lost_reported:
                return
            self._lost_reported = True
        log.info("%s: failing the attempt", error)
        self._events.put(error)
        reports.put(TaskFailed(link.tasks[0], error))

    def _wait_ended(self, link: WorkerLink, timeout: float) -> str | None:
        if not link.started:
            return "was never started"
        give_up = self._clock.monotonic() + timeout
        while True:
            ended = self._poll(link)
            if ended is not None or self._clock.monotonic() >= give_up:
                return ended
            self._clock.sleep(0.005)


class ProcessExecutor(WorkerPool):
    """Workers forked by the run's fork server, or started as fresh interpreters (rule 1)."""

    name = "processes"

    def __init__(self, graph: JobGraph, workers: int, clock: Clock | None = None, *,
                 hold: tuple[int, ...] = (), forkserver: ForkServerHandle | None = None) -> None:
        super().__init__(graph, workers, clock)
        self._hold = hold
        """Descriptors every worker keeps open while it lives: the checkpoint directory's lock (rule 2)."""
        self._forkserver = forkserver
        """The run's fork server (rule 1); ``None``: fresh interpreters."""
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._forked: dict[int, ForkServer] = {}
        """The fork server of each worker (by index) that one forked."""
        self._reaping = threading.Lock()

    def _spawn(self, plan: AttemptPlan, coordinator: Address, token: str) -> None:
        job = pack(plan)  # once for every worker; refused here when the job cannot be pickled
        counts = plan.failpoints.share()
        keep = (*self._hold, *((counts.fd,) if counts is not None else ()))
        logger = logging.getLogger("flowstate")
        formats = [type(h.formatter).__name__ for h in logger.handlers if h.formatter is not None]
        log_format = ("json" if "JsonFormatter" in formats else "text") if logger.handlers else None
        server = self._forkserver.get() if self._forkserver is not None else None
        starts: dict[int, IO[bytes]] = {}
        for link in self._links:
            if server is not None:
                read, write = os.pipe()
                try:
                    link.pid = server.fork(read, keep)
                except ServerGone as exc:
                    os.close(write)
                    for stdin in starts.values():
                        stdin.close()
                    raise WorkerLostError(f"{link.describe()} could not be started: {exc}") from None
                finally:
                    os.close(read)
                self._forked[link.index] = server
                starts[link.index] = open(write, "wb")  # noqa: SIM115 - closed once the start is written
            else:
                process = subprocess.Popen(  # noqa: S603 - this interpreter, this package's worker module
                    [sys.executable, "-m", "flowstate.executors.start"], stdin=subprocess.PIPE, pass_fds=keep,
                    process_group=0,  # Ctrl-C in a terminal reaches the coordinator only (rule 2)
                )
                self._processes[link.index] = process
                link.pid = process.pid
                assert process.stdin is not None
                starts[link.index] = process.stdin
            link.started = True
        # Every worker is starting meanwhile: a start larger than a pipe's buffer is written while
        # the next worker reads its own, not before it is started.
        parent = server.pid if server is not None else os.getpid()
        for link in self._links:
            start = WorkerStart(job, self._placement, link.index, coordinator, token, self.host, parent,
                                tuple(sys.path), counts, logger.getEffectiveLevel(), log_format)
            try:
                with starts[link.index] as stdin:
                    pickle.dump(start, stdin, protocol=pickle.HIGHEST_PROTOCOL)
            except OSError:
                pass  # it ended before it read its start: _accept says how it ended

    def _poll(self, link: WorkerLink) -> str | None:
        with self._reaping:  # the control thread of a worker and stop() may both ask
            if link.ended is not None:
                return link.ended
            process = self._processes.get(link.index)
            server = self._forked.get(link.index)
            code: int | None = None
            if process is not None:
                code = process.poll()
            elif server is not None and link.pid is not None:
                try:
                    code = server.returncode(link.pid)
                except ServerGone:
                    link.ended = "ended with its fork server"
            if code is not None:
                link.ended = describe_exit(code)
            return link.ended

    def _kill(self, link: WorkerLink) -> None:
        if self._poll(link) is not None or not link.started or link.pid is None:
            return
        process = self._processes.get(link.index)
        with contextlib.suppress(ProcessLookupError):
            if process is not None:
                process.kill()
            else:
                # Its pid is still this worker's: the fork server reaps it only after it ended,
                # and reports that before it can fork another process.
                os.kill(link.pid, signal.SIGKILL)


def describe_exit(code: int) -> str:
    """``"was killed by SIGKILL"`` or ``"exited with status 1"`` for a ``Popen.returncode``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"
