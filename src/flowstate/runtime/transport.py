"""The ports between tasks and the machinery that places and connects them.

A task only ever sees these small interfaces, so the executor that runs tasks (threads of this
process, worker processes, Ray actors) and the transport that moves batches between them can be
replaced without touching the tasks:

- ``ChannelWriter``: the producer end of one downstream task's input channels. ``put`` delivers an
  item (a record batch, a barrier or end-of-input) to one channel, in order, waiting while the
  channel is full (back-pressure) and raising ``Cancelled`` if the producer or the consumer is
  cancelled meanwhile.
- ``Mailbox``: control messages to a task (checkpoint triggers and notifications), delivered ahead of
  channel data.
- ``Reports``: where tasks put their reports (acks, declines, source ended, finished, failed).

The coordinator's shell sees every task as a ``TaskHandle``, and an ``Executor`` builds, starts and
stops the tasks of one attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flowstate.checkpoint.ids import TaskId
    from flowstate.clock import Clock
    from flowstate.observe.counters import TaskCounters
    from flowstate.runtime.plan import AttemptPlan
    from flowstate.runtime.task import Task

log = logging.getLogger("flowstate")

STOP_TIMEOUT = 10.0
"""Seconds a stopping executor waits for its tasks before it gives up on them."""


class ChannelWriter(Protocol):
    def put(self, channel: int, item: Any, producer_cancelled: threading.Event | None = None) -> None: ...

    def has_room(self, channel: int) -> bool:
        """Whether a ``put`` on ``channel`` would not wait now (a hint)."""
        ...

    def put_priority(self, channel: int, barrier: Any) -> None:
        """Deliver an unaligned barrier ahead of what is queued on ``channel``; the reader learns
        which batches it overtook."""
        ...


class Mailbox(Protocol):
    def post(self, mail: Any) -> None: ...


class Reports(Protocol):
    def put(self, report: Any) -> None:
        """Hand one report to the coordinator's shell; never blocks for long."""
        ...


class Runnable(Protocol):
    @property
    def task_id(self) -> str: ...

    def run(self) -> None:
        """Runs the task to its end; reports success or failure itself."""
        ...

    def cancel(self) -> None: ...


class TaskHandle(Protocol):
    """What the coordinator's shell needs of a task, wherever it runs."""

    @property
    def task_id(self) -> TaskId: ...

    @property
    def is_source(self) -> bool: ...

    @property
    def records_in(self) -> int:
        """Records the task has read so far (as last reported, for a task in another process)."""
        ...

    def counters(self) -> TaskCounters:
        """What the task counted so far (as last reported, for a task in another process)."""
        ...

    def post(self, mail: Any) -> None:
        """Deliver mail (a trigger or a notification) to the task's mailbox."""
        ...


class Wiring(Protocol):
    """Which tasks a process builds, and what their producers write to."""

    def is_local(self, task: TaskId) -> bool:
        """Whether ``task`` is built and run in this process."""
        ...

    def gate(self, task: TaskId, num_channels: int) -> Any:
        """For a local task its input gate (an ``InputGate`` with ``num_channels`` channels); for any
        other task a ``ChannelWriter`` to its gate."""
        ...


class LocalWiring:
    """Every task in this process, connected by in-process channels."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity

    def is_local(self, task: TaskId) -> bool:
        return True

    def gate(self, task: TaskId, num_channels: int) -> Any:
        from flowstate.runtime.channels import InputGate

        return InputGate(num_channels, self._capacity)


class Executor(Protocol):
    """Builds, runs and stops the tasks of one attempt of a job. Step by step:

    Step 1: ``build(plan, reports)`` builds every task of the attempt plan
            (``flowstate.runtime.plan``), each restored from its state at the plan's restore point
            (none: from scratch), and returns a handle per task. Wherever a task runs, it is built
            from the plan by ``flowstate.runtime.task_factory``. Tasks will put their reports into
            ``reports``. Raises when a task cannot be built.
    Step 2: ``launch()`` starts every task.
    Step 3: ``stop(graceful)`` cancels whatever still runs and returns once no task of the attempt can
            write anything any more (in-flight snapshot writes finished or their process is gone).
            Called exactly once per executor, also when Step 1 raised. ``graceful`` is False after a
            failure: the executor may then end its tasks the fastest way it has.
    """

    name: str
    workers: int

    def build(self, plan: AttemptPlan, reports: Reports) -> Mapping[TaskId, TaskHandle]: ...

    def launch(self) -> None: ...

    def stop(self, graceful: bool) -> None: ...


BuildTasks = Callable[["AttemptPlan", Reports, ThreadPoolExecutor], "dict[TaskId, Task]"]
"""Builds the tasks of a plan that run in this process (``task_factory.build_tasks`` with the
process's site and wiring)."""


class ThreadExecutor:
    """Every task on its own thread of this process, sharing one pool for snapshot writes."""

    name = "threads"
    workers = 0

    def __init__(self, build: BuildTasks, clock: Clock | None = None) -> None:
        self._build = build
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: dict[TaskId, Task] = {}
        self._threads: list[tuple[str, threading.Thread]] = []

    def build(self, plan: AttemptPlan, reports: Reports) -> dict[TaskId, Task]:
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="snapshot")
        self._tasks = self._build(plan, reports, self._pool)
        return self._tasks

    def launch(self) -> None:
        for task in self._tasks.values():
            thread = threading.Thread(target=task.run, name=f"task {task.task_id}", daemon=True)
            self._threads.append((task.task_id, thread))
            thread.start()

    def stop(self, graceful: bool) -> None:
        for task in self._tasks.values():
            task.cancel()
        for tid in self.join(STOP_TIMEOUT):
            log.warning("task %s did not stop within %.0f s", tid, STOP_TIMEOUT)
        # Wait for in-flight snapshot writes: a late write must never land in a checkpoint
        # directory whose id the next attempt reuses.
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def join(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds in all; the ids of tasks still running."""
        from flowstate.clock import SystemClock

        clock = self._clock or SystemClock()
        deadline = clock.monotonic() + timeout
        for _, thread in self._threads:
            thread.join(max(0.0, deadline - clock.monotonic()))
        return [tid for tid, thread in self._threads if thread.is_alive()]
