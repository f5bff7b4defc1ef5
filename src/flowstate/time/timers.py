"""A timer queue: the timers of one operator subtask in one clock domain.

Rules:

1. A timer is ``(key, timestamp)``; registering one that exists changes nothing (``add`` returns
   False), so a key has at most one timer per timestamp.
2. ``pop_next(upto)`` returns the timer with the smallest timestamp ``<= upto`` (among equal
   timestamps, the one registered first) and removes it; ``None`` when there is none. Timers added
   while firing (by ``on_timer``) at a timestamp ``<= upto`` fire in the same round.
3. ``delete`` removes a timer (False when there was none); a deleted timer never fires.

The queue is an index in memory. The timers themselves live in the keyed state backend (one entry
per key, so per key group: ``flowstate.operators.timers``), which snapshots, restores and
redistributes them with every other keyed state; a restored queue is rebuilt with ``add``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from typing import Any


class TimerQueue:
    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._live: dict[tuple[Hashable, float], int] = {}
        self._seq = 0

    def add(self, key: Hashable, timestamp: float) -> bool:
        """Rule 1."""
        entry = (key, timestamp)
        if entry in self._live:
            return False
        self._seq += 1
        self._live[entry] = self._seq
        heapq.heappush(self._heap, (timestamp, self._seq, key))
        return True

    def delete(self, key: Hashable, timestamp: float) -> bool:
        """Rule 3 (the heap entry is skipped when it comes up)."""
        return self._live.pop((key, timestamp), None) is not None

    def __contains__(self, entry: tuple[Hashable, float]) -> bool:
        return entry in self._live

    def __len__(self) -> int:
        return len(self._live)

    def peek(self) -> float | None:
        """The smallest timestamp of a live timer."""
        heap = self._heap
        while heap:
            ts, seq, key = heap[0]
            if self._live.get((key, ts)) == seq:
                return ts
            heapq.heappop(heap)
        return None

    def pop_next(self, upto: float) -> tuple[Hashable, float] | None:
        """Rule 2."""
        heap = self._heap
        live = self._live
        while heap and heap[0][0] <= upto:
            ts, seq, key = heapq.heappop(heap)
            if live.get((key, ts)) == seq:
                del live[(key, ts)]
                return key, ts
        return None

    def keys_due(self, upto: float) -> set[Hashable]:
        """The keys of the live timers at or before ``upto`` (one pass over the index)."""
        live = self._live
        return {key for ts, seq, key in self._heap if ts <= upto and live.get((key, ts)) == seq}

    def __iter__(self) -> Iterator[tuple[Hashable, float]]:
        """Every live timer, in no particular order."""
        return iter(list(self._live))
