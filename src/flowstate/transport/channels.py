"""Channels between tasks in one process, and each task's input gate with its mailbox.

A channel is a bounded FIFO of *items*: a batch of records (a ``list``), a ``CheckpointBarrier`` or
``EndOfInput``. A producer that finds a channel full waits (back-pressure) until the consumer takes
an item, the gate is cancelled, or its own cancellation is requested.

The consumer reads its ``InputGate``: mail first (checkpoint triggers, notifications, cancellation),
then the next item of a channel that is not blocked, round-robin. A **blocked** channel is simply
not read: its items stay queued and its producer is back-pressured, which is how an aligned
checkpoint holds the records that follow a barrier without copying them.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import replace
from typing import Any

from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.ids import TaskId


class Cancelled(Exception):
    """The gate was cancelled while a task waited on it."""


class Overtaking:
    """An unaligned barrier put at the head of a channel, with the batches it overtook.

    The overtaken batches stay queued (they are still processed after the barrier); ``batches`` is
    the list of them taken when the barrier was inserted, under the gate's lock, so it names exactly
    the records that precede the barrier in the channel."""

    __slots__ = ("barrier", "batches")

    def __init__(self, barrier: Any, batches: list[Any]) -> None:
        self.barrier = barrier
        self.batches = batches


class InputGate:
    def __init__(self, num_channels: int, capacity: int) -> None:
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._writable = threading.Condition(self._lock)
        self._queues: list[deque[Any]] = [deque() for _ in range(num_channels)]
        self._blocked = [False] * num_channels
        self._capacity = capacity
        self._mail: deque[Any] = deque()
        self._next = 0
        self._cancelled = False

    @property
    def num_channels(self) -> int:
        return len(self._queues)

    # ---- producer side ----------------------------------------------------------------------------

    def put(self, channel: int, item: Any, producer_cancelled: threading.Event | None = None) -> None:
        """Append ``item`` to ``channel``, waiting while it is full."""
        with self._lock:
            queue = self._queues[channel]
            while len(queue) >= self._capacity:
                if self._cancelled or (producer_cancelled is not None and producer_cancelled.is_set()):
                    raise Cancelled()
                self._writable.wait(0.05)
            if self._cancelled:
                raise Cancelled()
            queue.append(item)
            self._readable.notify()

    def deliver(self, channel: int, item: Any) -> None:
        """Append ``item`` to ``channel`` without waiting: for a transport that bounds the channel
        itself (credits granted by the consumer, ``flowstate.transport.remote``)."""
        with self._lock:
            if self._cancelled:
                raise Cancelled()
            self._queues[channel].append(item)
            self._readable.notify()

    def put_priority(self, channel: int, barrier: Any) -> None:
        """Put ``barrier`` at the head of ``channel``, ahead of the batches queued there; never waits
        (an unaligned barrier must overtake back-pressure, not queue behind it)."""
        with self._lock:
            if self._cancelled:
                raise Cancelled()
            queue = self._queues[channel]
            overtaken = [item for item in queue if type(item) is list]
            queue.appendleft(Overtaking(barrier, overtaken))
            self._readable.notify()

    def promote_overdue(self, started_before: float) -> int:
        """Turn each in-order barrier queued behind data whose checkpoint started before
        ``started_before`` into an unaligned one at the head of its channel, recording the batches it
        now overtakes (an aligned checkpoint that timed out). Blocked channels, final barriers and
        savepoint barriers are left alone. Returns how many barriers were promoted."""
        promoted = 0
        with self._lock:
            for ch, queue in enumerate(self._queues):
                if self._blocked[ch] or not queue:
                    continue
                for position, item in enumerate(queue):
                    if type(item) is Overtaking:
                        break
                    if type(item) is CheckpointBarrier:
                        if position and not item.always_aligned and not item.unaligned and item.timestamp <= started_before:
                            ahead = [queue.popleft() for _ in range(position)]
                            queue.popleft()  # the barrier itself
                            queue.extendleft(reversed(ahead))
                            queue.appendleft(Overtaking(replace(item, unaligned=True), [b for b in ahead if type(b) is list]))
                            promoted += 1
                        break
            if promoted:
                self._readable.notify()
        return promoted

    def has_room(self, channel: int) -> bool:
        """Whether a ``put`` on ``channel`` would not wait now (a hint: another producer may fill it)."""
        return len(self._queues[channel]) < self._capacity

    def post(self, mail: Any) -> None:
        """Deliver a mailbox message; it is read before any channel item."""
        with self._lock:
            self._mail.append(mail)
            self._readable.notify()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._readable.notify_all()
            self._writable.notify_all()

    # ---- consumer side ----------------------------------------------------------------------------

    def has_mail(self) -> bool:
        return bool(self._mail)

    def take_mail(self) -> Any | None:
        with self._lock:
            return self._mail.popleft() if self._mail else None

    def take(self, timeout: float) -> tuple[int, Any] | None:
        """The next mail as ``(-1, mail)`` or channel item as ``(channel, item)``; ``None`` after
        ``timeout`` seconds with nothing readable. Raises ``Cancelled`` once the gate is cancelled."""
        with self._lock:
            waited = False
            while True:
                if self._cancelled:
                    raise Cancelled()
                if self._mail:
                    return -1, self._mail.popleft()
                queues = self._queues
                n = len(queues)
                start = self._next
                for step in range(n):
                    ch = (start + step) % n
                    q = queues[ch]
                    if q and not self._blocked[ch]:
                        item = q.popleft()
                        self._next = (ch + 1) % n
                        self._writable.notify_all()
                        return ch, item
                if waited:
                    return None
                self._readable.wait(timeout)
                waited = True

    def block(self, channel: int) -> None:
        with self._lock:
            self._blocked[channel] = True

    def resume(self, channels: tuple[int, ...]) -> None:
        with self._lock:
            for ch in channels:
                self._blocked[ch] = False
            self._readable.notify()

    def queued(self, channel: int) -> int:
        return len(self._queues[channel])


class LocalWiring:
    """Every task in this process, connected by in-process channels."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity

    def is_local(self, task: TaskId) -> bool:
        return True

    def gate(self, task: TaskId, num_channels: int) -> Any:
        return InputGate(num_channels, self._capacity)
