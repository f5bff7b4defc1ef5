"""The one place where flowstate reads time. Everything else receives a ``Clock``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for intervals and timeouts."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch; for timestamps shown to people and written to metadata."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def wall_function(clock: Clock) -> Callable[[], float]:
    """``clock.wall``, as one call: ``time.time`` itself for the system clock (for code that reads
    the wall clock on every record, such as processing-time state ttl)."""
    return time.time if type(clock) is SystemClock else clock.wall


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it."""

    def __init__(self, start: float = 0.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._offset = wall_offset

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._offset

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
