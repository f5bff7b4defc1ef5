"""How the coordinator's process and the worker processes that run the tasks talk to each other.

One attempt, step by step (the order matters):

Step 1: the coordinator opens a control listener and starts the workers (worker processes, or Ray
        actors), telling each its index, the listener's address and the attempt's token.
Step 2: each worker opens its data listener, connects to the coordinator and says ``Hello``.
Step 3: once every worker said hello, the coordinator sends each one ``Peers``: worker *i* connects
        to every worker *j < i* (a ``HELLO`` frame naming *i*) and accepts a connection from every
        *j > i*. No record flows through the coordinator.
Step 4: each worker unpacks the attempt's plan (``flowstate.task.plan``) and builds its tasks,
        opening its own client of the checkpoint storage and loading its own tasks' state, and answers
        ``Built`` (or ``BuildFailed``). Nothing is sent on a data connection before Step 5, so no
        frame can reach a gate that is not built yet.
Step 5: when every worker is built the coordinator sends ``Start``. From then on ``Mail`` carries
        checkpoint triggers and notifications to a task, and the task's reports (``Ack``,
        ``Decline``, ``SourceEnded``, ``TaskFinished``, ``TaskFailed``) come back with ``Progress``.
        A source's last ``Progress`` precedes its ``TaskFinished``.
Step 6: ``Stop``: the worker cancels its tasks, waits for their snapshot writes and exits. A worker
        whose control connection closes (the coordinator is gone) exits at once and writes nothing
        more.

Every message is a frozen dataclass pickled into a ``CONTROL`` frame.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from flowstate.checkpoint.ids import TaskId, task_id
from flowstate.errors import FlowstateError
from flowstate.graph import JobGraph
from flowstate.observe.counters import TaskCounters

Address = tuple[str, int]


class WorkerLostError(FlowstateError):
    """A worker process of the job exited or was killed while the job ran."""


class RemoteTaskError(FlowstateError):
    """A task in a worker process failed with an error that could not be sent as it was; the
    message is the original error's text (``str(error)``) and ``error_type`` names its class."""

    def __init__(self, message: str, error_type: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteTaskError, (str(self), self.error_type))


def portable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else a ``RemoteTaskError`` with the same text."""
    try:
        copy = pickle.loads(pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - anything that does not round-trip is sent as text
        copy = None
    if type(copy) is type(error) and str(copy) == str(error):
        return error
    return RemoteTaskError(str(error), type(error).__name__)


# ---- placement ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """Which worker runs each task. ``tasks`` lists every task of the job in graph order; a task's
    position there is its *gate number* in data frames, the same in every process."""

    tasks: tuple[TaskId, ...]
    workers: tuple[int, ...]
    """``workers[k]`` runs ``tasks[k]``."""
    count: int
    """Number of workers; each runs at least one task."""

    def worker_of(self, task: TaskId) -> int:
        return self.workers[self.tasks.index(task)]

    def gate_of(self, task: TaskId) -> int:
        return self.tasks.index(task)

    def tasks_of(self, worker: int) -> tuple[TaskId, ...]:
        return tuple(t for t, w in zip(self.tasks, self.workers) if w == worker)


def place(graph: JobGraph, workers: int) -> Placement:
    """Subtask *i* of every vertex runs in worker *i mod n*, with *n* = ``workers`` but no more than
    the largest parallelism (a worker without a task would only cost a process). Subtask *i* of a
    producer and of its consumer thus share a worker: forward edges never leave a process, and a
    keyed exchange keeps 1/n of its records local."""
    if workers < 1:
        raise ValueError(f"a job needs at least one worker, got {workers}")
    count = min(workers, max(v.parallelism for v in graph.vertices))
    tasks: list[TaskId] = []
    owners: list[int] = []
    for v in graph.vertices:
        for i in range(v.parallelism):
            tasks.append(task_id(v.name, i))
            owners.append(i % count)
    return Placement(tuple(tasks), tuple(owners), count)


# ---- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Worker → coordinator, Step 2."""

    worker: int
    address: Address
    """Where the worker accepts data connections."""
    pid: int
    token: str


@dataclass(frozen=True, slots=True)
class Peers:
    """Coordinator → worker, Step 3: the data address of every worker, by index."""

    addresses: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class Built:
    worker: int
    dropped: tuple[str, ...] = ()
    """State its tasks dropped under ``allow_non_restored_state``, one sentence each (the
    coordinator logs them)."""


@dataclass(frozen=True, slots=True)
class BuildFailed:
    worker: int
    error: BaseException


@dataclass(frozen=True, slots=True)
class Start:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Mail:
    """Coordinator → worker: mail for one task's mailbox (a trigger or a notification)."""

    task: TaskId
    mail: Any


@dataclass(frozen=True, slots=True)
class Progress:
    """Worker → coordinator: records read so far by each of the worker's source tasks, and the
    counters of every task of the worker (metrics)."""

    records: tuple[tuple[TaskId, int], ...]
    counters: tuple[tuple[TaskId, TaskCounters], ...] = ()


@dataclass(frozen=True, slots=True)
class PeerLost:
    """Worker → coordinator: the data connection to another worker broke."""

    worker: int
    peer: int
    reason: str
