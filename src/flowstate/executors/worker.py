"""A worker: one process running a share of a job's tasks, the same for a worker process of
``flowstate.executors.processes`` (``python -m flowstate.executors.start``) and a Ray actor.

``serve`` runs the steps of ``flowstate.executors.protocol`` on the worker's side, from the
attempt's plan (``flowstate.task.plan``, received packed) and nothing else of the job runner: it
unpacks the plan at Step 4 (a module it cannot import fails the build with a ``ConfigError``), opens its
own client of the checkpoint storage from the plan's spec and loads the state of its own tasks. Its
tasks are built by the same task factory as in one process (``flowstate.task.factory``), with
a wiring that hands a producer whose consumer runs in another worker a ``RemoteChannelWriter`` instead
of the consumer's gate; channels between two tasks of the same worker stay in-process. The tasks run
on threads (``ThreadExecutor``); their reports go straight to the coordinator over the control
connection.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from flowstate.checkpoint.ids import TaskId
from flowstate.clock import SystemClock
from flowstate.executors.protocol import (
    Address,
    BuildFailed,
    Built,
    Hello,
    Mail,
    PeerLost,
    Peers,
    Placement,
    Progress,
    Start,
    Stop,
    portable,
)
from flowstate.executors.threads import ThreadExecutor
from flowstate.task.factory import TaskSite, build_tasks
from flowstate.task.messages import TaskFailed, TaskFinished
from flowstate.task.plan import unpack
from flowstate.transport.frames import HEADER, HEADER_SIZE, HELLO, encode
from flowstate.transport.remote import ControlChannel, DataPlane

if TYPE_CHECKING:
    from flowstate.failpoints import SharedCounts
    from flowstate.task.task import Task

log = logging.getLogger("flowstate")

PROGRESS_EVERY = 0.5
"""Seconds between two progress messages of a worker."""
CONNECT_TIMEOUT = 60.0
"""Seconds a worker waits for its peers to connect before it gives up on the attempt."""
EXIT_COORDINATOR_GONE = 3
"""Exit status of a worker whose coordinator went away."""


class _WorkerWiring:
    """Local tasks get a gate fed by the data plane; the others a writer through it."""

    def __init__(self, placement: Placement, worker: int, plane: DataPlane) -> None:
        self._placement = placement
        self._worker = worker
        self._plane = plane

    def is_local(self, task: TaskId) -> bool:
        return self._placement.worker_of(task) == self._worker

    def gate(self, task: TaskId, num_channels: int) -> Any:
        gate = self._placement.gate_of(task)
        owner = self._placement.worker_of(task)
        if owner == self._worker:
            return self._plane.gate(gate, num_channels)
        return self._plane.writer(gate, owner, num_channels)


class _Reports:
    """The reports port of the worker's tasks: each report goes to the coordinator at once. A
    failure's error is made portable (it must survive pickling), and a source's final record count
    precedes its ``TaskFinished``."""

    def __init__(self, control: ControlChannel) -> None:
        self._control = control
        self.tasks: dict[TaskId, Task] = {}

    def put(self, report: Any) -> None:
        if isinstance(report, TaskFailed):
            report = TaskFailed(report.task, portable(report.error))
        elif isinstance(report, TaskFinished):
            task = self.tasks.get(report.task)
            if task is not None:
                records = ((task.task_id, task.records_in),) if task.is_source else ()
                self.send(Progress(records, ((task.task_id, task.counters()),)))
        self.send(report)

    def progress(self) -> None:
        records = tuple((t.task_id, t.records_in) for t in self.tasks.values() if t.is_source)
        if self.tasks:
            self.send(Progress(records, tuple((t.task_id, t.counters()) for t in self.tasks.values())))

    def send(self, message: Any) -> None:
        try:
            self._control.send(message)
        except OSError:
            pass  # the coordinator is gone; the control loop notices and ends the process


def serve(
    job: bytes, placement: Placement, worker: int, coordinator: Address, token: str,
    host: str = "127.0.0.1", *, counts: SharedCounts | None = None,
) -> int:
    """Run worker ``worker`` of one attempt, whose plan ``job`` is (packed by
    ``flowstate.task.plan.pack``), until the coordinator says ``Stop`` (returns 0). When the
    coordinator goes away the process ends at once (``os._exit``): a worker never outlives it, and
    never writes for an attempt that is over. ``counts``: the failpoint counts the coordinator
    shares with this process (``Failpoints.attach``)."""
    clock = SystemClock()
    listener = socket.create_server((host, 0), backlog=max(placement.count, 1))
    control = ControlChannel(socket.create_connection(coordinator))
    control.send(Hello(worker, listener.getsockname()[:2], os.getpid(), token))
    plane: DataPlane | None = None
    executor: ThreadExecutor | None = None
    try:
        peers = _expect(control, Peers)
        try:
            plan = unpack(job)
            if counts is not None:
                plan.failpoints.attach(counts)
            plane = DataPlane(len(placement.tasks), plan.config.channel_capacity)
            _connect_peers(plane, listener, peers.addresses, worker, token)
            reports = _Reports(control)
            wiring = _WorkerWiring(placement, worker, plane)
            site = TaskSite.open(plan, clock)
            dropped: list[str] = []
            executor = ThreadExecutor(lambda p, q, pool: build_tasks(p, q, pool, site, wiring, dropped), clock)
            reports.tasks = executor.build(plan, reports)
        except Exception as exc:  # noqa: BLE001 - the coordinator decides what a failed build means
            control.send(BuildFailed(worker, portable(exc)))
            return 1
        finally:
            listener.close()
        plane.start(lambda peer, reason: reports.send(PeerLost(worker, peer, reason)))
        control.send(Built(worker, tuple(dropped)))
        if isinstance(_expect(control, (Start, Stop)), Stop):
            return 0
        executor.launch()
        next_progress = clock.monotonic() + PROGRESS_EVERY
        while True:
            message = control.receive(timeout=PROGRESS_EVERY / 2)
            if message is None:
                _coordinator_gone()
            elif isinstance(message, Mail):
                reports.tasks[message.task].post(message.mail)
            elif isinstance(message, Stop):
                return 0
            if clock.monotonic() >= next_progress:
                reports.progress()
                next_progress = clock.monotonic() + PROGRESS_EVERY
    finally:
        if executor is not None:
            executor.stop(graceful=True)
        if plane is not None:
            plane.close()
        control.close()


def _expect(control: ControlChannel, kinds: type | tuple[type, ...]) -> Any:
    message = control.receive()
    if message is None:
        _coordinator_gone()
    if not isinstance(message, kinds):
        raise TypeError(f"worker protocol: expected {kinds}, got {message!r}")
    return message


def _coordinator_gone() -> None:
    """The control connection closed: the coordinator died or gave up on this attempt. Nothing of
    this worker may run on (a task could still commit or write a snapshot), so the process ends now,
    without cleaning up."""
    os._exit(EXIT_COORDINATOR_GONE)


def _connect_peers(plane: DataPlane, listener: socket.socket, addresses: tuple[Address, ...], worker: int,
                   token: str) -> None:
    """Connect to every worker with a lower index, then accept one connection from every worker
    with a higher one (connecting never waits for an accept: the listener's backlog holds it)."""
    hello = encode(HELLO, worker, 0, token.encode())
    for peer in range(worker):
        sock = socket.create_connection(addresses[peer], timeout=CONNECT_TIMEOUT)
        sock.settimeout(None)
        sock.sendall(hello)
        plane.add_peer(peer, sock)
    expected = set(range(worker + 1, len(addresses)))
    listener.settimeout(CONNECT_TIMEOUT)
    while expected:
        sock, _ = listener.accept()
        sock.settimeout(CONNECT_TIMEOUT)
        header = _receive_exactly(sock, HEADER_SIZE)
        length, kind, peer, _ = HEADER.unpack(header)
        presented = _receive_exactly(sock, length)
        if kind != HELLO or presented != token.encode() or peer not in expected:
            sock.close()  # not a worker of this attempt
            continue
        sock.settimeout(None)
        plane.add_peer(peer, sock)
        expected.discard(peer)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("a peer closed its connection while saying hello")
        data += chunk
    return bytes(data)
