"""What the coordinator's shell sees of the machinery that places and runs tasks: an ``Executor``
builds, starts and stops the tasks of one attempt, and shows every task as a ``TaskHandle``,
wherever it runs (threads of this process: ``flowstate.executors.threads``; worker processes:
``flowstate.executors.processes``; Ray actors: ``flowstate.executors.ray_cluster``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flowstate.checkpoint.ids import TaskId
    from flowstate.observe.counters import TaskCounters
    from flowstate.task.plan import AttemptPlan
    from flowstate.transport.ports import Reports

STOP_TIMEOUT = 10.0
"""Seconds a stopping executor waits for its tasks before it gives up on them."""


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


class Executor(Protocol):
    """Builds, runs and stops the tasks of one attempt of a job. Step by step:

    Step 1: ``build(plan, reports)`` builds every task of the attempt plan
            (``flowstate.task.plan``), each restored from its state at the plan's restore point
            (none: from scratch), and returns a handle per task. Wherever a task runs, it is built
            from the plan by ``flowstate.task.factory``. Tasks will put their reports into
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
