"""Window assigners and the merging of session windows.

Rules:

1. A time window is ``[start, end)``: it holds the records with ``start <= ts < end`` and fires
   once the watermark reaches ``end``. Its state is cleared once the watermark reaches
   ``end + allowed_lateness``; a record whose every window was cleared is **late**.
2. ``TumblingWindows(size, offset)``: one window per record, ``start = ts - (ts - offset) % size``.
3. ``SlidingWindows(size, slide, offset)``: every window of length ``size`` whose start is a
   multiple of ``slide`` (plus ``offset``) and that contains ``ts``: ``ceil(size / slide)`` or fewer.
4. ``SessionWindows(gap)``: each record starts ``[ts, ts + gap)``; windows that overlap or touch
   merge into one spanning both (``merge_session``). Two records are in one session exactly when the
   records between them leave no gap larger than ``gap``.
5. ``CountWindows(n)``: per key, the 1st to n-th record form window 0, the next n window 1, and so
   on, in arrival order; a window fires when it holds ``n`` records, and the last, incomplete window
   of a key fires when the input ends (the final watermark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from flowstate.time.duration import parse_duration


class TimeWindow(NamedTuple):
    start: float
    end: float

    def intersects(self, other: TimeWindow) -> bool:
        """Overlapping or touching (rule 4)."""
        return self.start <= other.end and other.start <= self.end

    def cover(self, other: TimeWindow) -> TimeWindow:
        """The smallest window holding both (session windows merge this way)."""
        return TimeWindow(min(self.start, other.start), max(self.end, other.end))


class CountWindow(NamedTuple):
    """Window ``number`` of a key under ``CountWindows(n)``: its records ``[start, end)`` by arrival
    order (``start = number * n``)."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class TumblingWindows:
    size: float
    offset: float = 0.0
    merging = False
    counting = False

    def __init__(self, size: Any, offset: Any = 0.0) -> None:
        object.__setattr__(self, "size", parse_duration(size, "TumblingWindows size"))
        object.__setattr__(self, "offset", parse_duration(offset, "TumblingWindows offset"))
        if self.size <= 0:
            raise ValueError("TumblingWindows size must be positive")

    def assign(self, ts: float) -> tuple[TimeWindow, ...]:
        """The windows a record of timestamp ``ts`` belongs to."""
        start = ts - (ts - self.offset) % self.size
        return (TimeWindow(start, start + self.size),)


@dataclass(frozen=True, slots=True)
class SlidingWindows:
    size: float
    slide: float
    offset: float = 0.0
    merging = False
    counting = False

    def __init__(self, size: Any, slide: Any, offset: Any = 0.0) -> None:
        object.__setattr__(self, "size", parse_duration(size, "SlidingWindows size"))
        object.__setattr__(self, "slide", parse_duration(slide, "SlidingWindows slide"))
        object.__setattr__(self, "offset", parse_duration(offset, "SlidingWindows offset"))
        if self.size <= 0 or self.slide <= 0:
            raise ValueError("SlidingWindows size and slide must be positive")

    def assign(self, ts: float) -> tuple[TimeWindow, ...]:
        """The windows a record of timestamp ``ts`` belongs to."""
        last = ts - (ts - self.offset) % self.slide
        out = []
        start = last
        while start > ts - self.size:
            out.append(TimeWindow(start, start + self.size))
            start -= self.slide
        return tuple(out)


@dataclass(frozen=True, slots=True)
class SessionWindows:
    gap: float
    merging = True
    counting = False

    def __init__(self, gap: Any) -> None:
        object.__setattr__(self, "gap", parse_duration(gap, "SessionWindows gap"))
        if self.gap <= 0:
            raise ValueError("SessionWindows gap must be positive")

    def assign(self, ts: float) -> tuple[TimeWindow, ...]:
        """The windows a record of timestamp ``ts`` belongs to."""
        return (TimeWindow(ts, ts + self.gap),)


@dataclass(frozen=True, slots=True)
class CountWindows:
    n: int
    merging = False
    counting = True

    def __init__(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"CountWindows needs a positive number of records, got {n!r}")
        object.__setattr__(self, "n", n)


WindowAssigner = TumblingWindows | SlidingWindows | SessionWindows | CountWindows


def merge_session(existing: list[TimeWindow], new: TimeWindow) -> tuple[TimeWindow, list[TimeWindow]]:
    """Rule 4: the window ``new`` becomes once merged with ``existing`` (disjoint, non-touching
    windows of one key), and the existing windows it absorbed (in the order given). Merging can
    chain: ``new`` may bridge two windows that did not touch each other."""
    merged = new
    absorbed: list[TimeWindow] = []
    changed = True
    remaining = list(existing)
    while changed:
        changed = False
        keep = []
        for window in remaining:
            if window.intersects(merged):
                merged = merged.cover(window)
                absorbed.append(window)
                changed = True
            else:
                keep.append(window)
        remaining = keep
    return merged, absorbed


def window_count_bound(assigner: WindowAssigner) -> int:
    """How many windows one record can belong to (for sizing; 1 except sliding windows)."""
    if isinstance(assigner, SlidingWindows):
        return math.ceil(assigner.size / assigner.slide)
    return 1
