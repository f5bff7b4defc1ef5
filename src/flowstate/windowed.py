"""Windowed streams: ``keyed.window(assigner)`` then ``reduce``, ``aggregate`` or ``process``.

What each emits when a window fires:

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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flowstate.aggregates import check_aggregate
from flowstate.dataflow import Edge, KeyedStream, Node, Stream, _callable
from flowstate.errors import GraphError
from flowstate.time.duration import parse_duration
from flowstate.time.windows import CountWindows, SessionWindows, SlidingWindows, TumblingWindows


class WindowedStream:
    def __init__(self, keyed: KeyedStream, assigner: Any, allowed_lateness: Any, *, early_every: Any = None,
                 early_count: int | None = None) -> None:
        if not isinstance(assigner, (TumblingWindows, SlidingWindows, SessionWindows, CountWindows)):
            raise GraphError(
                f"window: expected TumblingWindows, SlidingWindows, SessionWindows or CountWindows, got {assigner!r}"
            )
        try:
            lateness = parse_duration(allowed_lateness, "allowed_lateness")
        except ValueError as exc:
            raise GraphError(f"window: {exc}") from None
        if not assigner.counting and keyed._timestamp_fn is None:
            raise GraphError(
                f"window: {type(assigner).__name__} need event time: call assign_timestamps(...) on the "
                "stream before key_by(...) (map, flat_map and process make new records without timestamps)"
            )
        self._keyed = keyed
        self._assigner = assigner
        self._lateness = lateness
        self._early_every, self._early_count = _early(assigner, early_every, early_count)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None, parallelism: int | None = None,
               uid: str | None = None) -> WindowResultStream:
        return self._build("reduce", _callable("window reduce", name, fn), fn, parallelism, uid)

    def aggregate(self, aggregate: Any, *, name: str | None = None, parallelism: int | None = None,
                  uid: str | None = None) -> WindowResultStream:
        try:
            check_aggregate(aggregate)
        except TypeError as exc:
            raise GraphError(f"window aggregate: {exc}") from None
        shown = name or f"window {type(aggregate).__name__.lower().lstrip('_')}"
        return self._build("aggregate", shown, aggregate, parallelism, uid)

    def process(self, fn: Callable[[Any, Any, list[Any]], Iterable[Any] | None], *, name: str | None = None,
                parallelism: int | None = None, uid: str | None = None) -> WindowResultStream:
        return self._build("process", _callable("window process", name, fn), fn, parallelism, uid)

    def _build(self, kind: str, shown: str, fn: Any, parallelism: int | None, uid: str | None) -> WindowResultStream:
        keyed = self._keyed
        flow = keyed._flow
        if shown in ("window reduce", "window process"):
            shown = f"{type(self._assigner).__name__} {kind}"
        node = flow._add("window", shown, fn, parallelism, keyed._edge(), uid, assigner=self._assigner,
                         timestamp_fn=keyed._timestamp_fn, allowed_lateness=self._lateness, function_kind=kind,
                         late=False, early_every=self._early_every, early_count=self._early_count)
        results = flow._add("select", f"{shown} results", None, parallelism, (Edge(node),), None, late=False)
        return WindowResultStream(flow, results, window=node)


def _early(assigner: Any, every: Any, count: Any) -> tuple[float | None, int | None]:
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


class WindowResultStream(Stream):
    """The results of a window operator; ``late_records()`` gives its late records."""

    def __init__(self, flow: Any, node: Node, *, window: Node) -> None:
        super().__init__(flow, node)
        self._window = window

    def late_records(self, *, name: str | None = None) -> Stream:
        """The records that were too late for every window they belong to, in arrival order."""
        window = self._window
        if window.extra.get("late"):
            raise GraphError(f"window {window.name!r}: late_records() was already called")
        window.extra["late"] = True
        node = self._flow._add("select", name or f"{window.name} late", None, window.parallelism,
                               (Edge(window),), None, late=True)
        return Stream(self._flow, node)
