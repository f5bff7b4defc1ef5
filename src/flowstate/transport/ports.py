"""The ports between tasks and the transport that connects them.

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
- ``Wiring``: which tasks a process builds, and what their producers write to.

The executors' side (``TaskHandle``, ``Executor``) is ``flowstate.executors.base``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flowstate.checkpoint.ids import TaskId

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


class Wiring(Protocol):
    """Which tasks a process builds, and what their producers write to."""

    def is_local(self, task: TaskId) -> bool:
        """Whether ``task`` is built and run in this process."""
        ...

    def gate(self, task: TaskId, num_channels: int) -> Any:
        """For a local task its input gate (an ``InputGate`` with ``num_channels`` channels); for any
        other task a ``ChannelWriter`` to its gate."""
        ...
