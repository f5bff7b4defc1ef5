"""The executor that runs every task on a thread of this process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from flowstate.clock import SystemClock
from flowstate.executors.base import STOP_TIMEOUT

if TYPE_CHECKING:
    from flowstate.checkpoint.ids import TaskId
    from flowstate.clock import Clock
    from flowstate.task.plan import AttemptPlan
    from flowstate.task.task import Task
    from flowstate.transport.ports import Reports

log = logging.getLogger("flowstate")


BuildTasks = Callable[["AttemptPlan", "Reports", ThreadPoolExecutor], "dict[TaskId, Task]"]
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
        clock = self._clock or SystemClock()
        deadline = clock.monotonic() + timeout
        for _, thread in self._threads:
            thread.join(max(0.0, deadline - clock.monotonic()))
        return [tid for tid, thread in self._threads if thread.is_alive()]
