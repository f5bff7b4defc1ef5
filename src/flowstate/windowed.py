"""Windows in a dataflow: what ``keyed.window(assigner)`` is given, and what its results are.

What each emits when a window fires (``flowstate.dataflow.WindowedStream``):

- ``reduce(fn)``: ``WindowResult(key, window, value)``, ``value`` the records folded with ``fn``.
- ``aggregate(agg)``: ``WindowResult(key, window, agg.result(acc))``; only the accumulator is kept.
- ``process(fn)``: every record of ``fn(key, window, records)`` (all records are kept until then).

``window`` is a ``TimeWindow(start, end)`` (``CountWindow(start, end)`` for count windows). The
result stream's ``late_records()`` is a stream of the records that arrived after their window was
cleared (its end plus ``allowed_lateness``); without it they are dropped.

Early results (``window(..., early_every="10s")`` or ``early_count=1000``): a window still open
emits what it holds so far, as an ``EarlyWindowResult`` (a ``WindowResult`` whose ``early`` is
true; ``process`` calls its function with the records so far), and its final result when the
watermark passes its end. ``early_count`` fires on every N-th record of a (key, window), in arrival
order: the same results on every run, backend and parallelism (tumbling and sliding windows).
``early_every`` fires every T of processing time the windows that changed since the last time (every
time window kind): which results are early depends on timing, the final one does not.

This module knows nothing of streams: ``window_spec`` checks the arguments of ``window(...)`` and
returns the ``WindowSpec`` the dataflow stores on the window node, so that ``flowstate.dataflow``
depends on it and not the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from flowstate.errors import GraphError
from flowstate.time.duration import parse_duration
from flowstate.time.windows import CountWindow, CountWindows, SessionWindows, SlidingWindows, TimeWindow, TumblingWindows

K = TypeVar("K")
V = TypeVar("V")

WindowAssigner = TumblingWindows | SlidingWindows | SessionWindows | CountWindows
"""What ``keyed.window(...)`` takes."""

Window = TimeWindow | CountWindow
"""The window of a result: ``TimeWindow`` for time windows, ``CountWindow`` for ``CountWindows``."""


class WindowResult(NamedTuple, Generic[K, V]):
    """What ``reduce`` and ``aggregate`` on a window emit: the key, the window and its value.
    ``early`` says whether this is an early result of a window still open (``EarlyWindowResult``)."""

    key: K
    window: Window
    value: V

    @property
    def early(self) -> bool:
        """Whether this is an early result of a window still open."""
        return False


class EarlyWindowResult(WindowResult[K, V]):
    """The contents so far of a window that is still open (``early_every`` / ``early_count``): an
    update, followed by the window's final ``WindowResult`` when the watermark passes its end."""

    __slots__ = ()

    @property
    def early(self) -> bool:
        """True: an early result."""
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        return (EarlyWindowResult, tuple(self))


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """The checked arguments of ``window(...)``: at most one of ``early_every`` (seconds of processing
    time) and ``early_count`` (records of one key and window) is set, and neither for count windows."""

    assigner: WindowAssigner
    allowed_lateness: float
    early_every: float | None
    early_count: int | None


def window_spec(assigner: object, allowed_lateness: object, early_every: object, early_count: object, *,
                event_time: bool) -> WindowSpec:
    """The ``WindowSpec`` of ``window(...)`` on a stream with (``event_time``) or without timestamps;
    a ``GraphError`` of one line for every mistake."""
    if not isinstance(assigner, (TumblingWindows, SlidingWindows, SessionWindows, CountWindows)):
        raise GraphError(
            f"window: expected TumblingWindows, SlidingWindows, SessionWindows or CountWindows, got {assigner!r}"
        )
    try:
        lateness = parse_duration(allowed_lateness, "allowed_lateness")
    except ValueError as exc:
        raise GraphError(f"window: {exc}") from None
    if not assigner.counting and not event_time:
        raise GraphError(
            f"window: {type(assigner).__name__} need event time: call assign_timestamps(...) on the "
            "stream before key_by(...) (map, flat_map and process make new records without timestamps)"
        )
    every, count = _early(assigner, early_every, early_count)
    return WindowSpec(assigner, lateness, every, count)


def _early(assigner: WindowAssigner, every: object, count: object) -> tuple[float | None, int | None]:
    """The early triggers of a window, checked (one-line ``GraphError``s)."""
    kind = type(assigner).__name__
    if (every is not None or count is not None) and assigner.counting:
        raise GraphError(f"window: {kind} fire on their own count; early_every and early_count are for time windows")
    if every is not None and count is not None:
        raise GraphError("window: give early_every or early_count, not both")
    if count is not None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise GraphError(f"window: early_count must be a whole number of records >= 1, got {count!r}")
        if assigner.merging:
            raise GraphError(
                f"window: early_count is not available for {kind} (merging windows); use early_every, "
                "a processing-time trigger"
            )
        return None, count
    if every is not None:
        try:
            seconds = parse_duration(every, "early_every")
        except ValueError as exc:
            raise GraphError(f"window: {exc}") from None
        if seconds <= 0:
            raise GraphError(f"window: early_every must be above 0, got {every!r}")
        return seconds, None
    return None, None


# ---- the joins' tagged union (two keyed inputs as one stream of (side, record)) --------------------

class JoinSide:
    """Tags a record of one side of a join, and reads its key and timestamp (picklable)."""

    def __init__(self, side: int, key_fn: Any, timestamp_fn: Any) -> None:
        self.side = side
        self.key_fn = key_fn
        self.timestamp_fn = timestamp_fn

    def tag(self, record: Any) -> tuple[int, Any]:
        return (self.side, record)


class WindowPairs:
    """The pairs of one window of a window join: every left record with every right one, in arrival
    order (picklable)."""

    def __init__(self, fn: Callable[[Any, Any], Any] | None) -> None:
        self.fn = fn

    def __call__(self, key: Any, window: Any, tagged: list[tuple[int, Any]]) -> list[Any]:
        left = [r for side, r in tagged if side == 0]
        right = [r for side, r in tagged if side == 1]
        fn = self.fn
        if fn is None:
            return [(a, b) for a in left for b in right]
        return [fn(a, b) for a in left for b in right]


class JoinKey:
    """The key (or timestamp) of a tagged record of either side of a join (picklable)."""

    def __init__(self, sides: tuple[JoinSide, JoinSide], timestamps: bool = False) -> None:
        self.fns = tuple(s.timestamp_fn if timestamps else s.key_fn for s in sides)

    def __call__(self, tagged: tuple[int, Any]) -> Any:
        return self.fns[tagged[0]](tagged[1])
