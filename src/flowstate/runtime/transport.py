"""The ports between tasks and the machinery that places and connects them.

A task only ever sees these two small interfaces, so the executor that runs tasks (threads in one
process today) and the transport that moves batches between them can be replaced without touching
the tasks:

- ``ChannelWriter``: the producer end of one downstream task's input channels. ``put`` delivers an
  item (a record batch, a barrier or end-of-input) to one channel, in order, waiting while the
  channel is full (back-pressure) and raising ``Cancelled`` if the producer or the consumer is
  cancelled meanwhile.
- ``Mailbox``: control messages to a task (checkpoint triggers and notifications), delivered ahead of
  channel data.

``Executor`` launches tasks and waits for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol


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


class Runnable(Protocol):
    @property
    def task_id(self) -> str: ...

    def run(self) -> None:
        """Runs the task to its end; reports success or failure itself."""
        ...

    def cancel(self) -> None: ...


class Executor(Protocol):
    def launch(self, tasks: Iterable[Runnable]) -> None: ...

    def join(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds in all; the ids of tasks still running."""
        ...


class ThreadExecutor:
    """Every task on its own thread of this process."""

    def __init__(self) -> None:
        self._threads: list[tuple[str, threading.Thread]] = []

    def launch(self, tasks: Iterable[Runnable]) -> None:
        for task in tasks:
            thread = threading.Thread(target=task.run, name=f"task {task.task_id}", daemon=True)
            self._threads.append((task.task_id, thread))
            thread.start()

    def join(self, timeout: float) -> list[str]:
        import time

        deadline = time.monotonic() + timeout
        for _, thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [tid for tid, thread in self._threads if thread.is_alive()]
