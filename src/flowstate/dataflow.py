"""The dataflow API: how users describe a job.

``Dataflow`` collects nodes; ``Stream`` and ``KeyedStream`` add operators. Mistakes that can be seen
while the graph is written (a function that is not callable, keyed state on a stream that is not
keyed, a parallelism above ``max_parallelism``, a duplicate uid) raise ``GraphError`` at once, naming
the operator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Generic, TypeVar, overload

from flowstate.aggregates import Aggregate, check_aggregate
from flowstate.columnar import FUNCTIONS, BatchAggregate, ColumnKey, PartialAggregate, require_pyarrow
from flowstate.connectors.base import Sink, Source
from flowstate.errors import GraphError
from flowstate.functions import KeyedProcessFunction, ProcessFunction, copy_for_subtask
from flowstate.kinds import NodeKind
from flowstate.state.keygroups import DEFAULT_MAX_PARALLELISM
from flowstate.windowed import JoinKey, JoinSide, Window, WindowPairs, WindowResult, WindowSpec, window_spec

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R")
K = TypeVar("K")
K2 = TypeVar("K2")

Duration = float | str | timedelta
"""Seconds, a string such as ``"500ms"`` or ``"30m"``, or a timedelta (``flowstate.time.duration``)."""
Timestamp = float | datetime
"""Seconds since the epoch (int or float) or an aware datetime."""
Key = None | bool | int | float | str | bytes | date | tuple[Any, ...]
"""What ``key_by`` may return (``flowstate.state.keys``; a tuple of these)."""


@dataclass(frozen=True, slots=True)
class Edge:
    """How records travel from ``source`` into a node: ``forward`` (or ``rebalance`` when the
    parallelism differs) unless ``key_fn`` is set, in which case by key group."""

    source: Node
    key_fn: Callable[[Any], Any] | None = None


@dataclass(eq=False)
class Node:
    """One operator of the dataflow as written: its kind, names, function and inputs."""

    index: int
    kind: NodeKind
    name: str
    uid: str
    fn: Any
    parallelism: int | None
    inputs: tuple[Edge, ...]
    max_parallelism: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r}>"


def _check_parallelism(what: str, parallelism: int | None, max_parallelism: int) -> None:
    if parallelism is None:
        return
    if not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1:
        raise GraphError(f"{what}: parallelism must be a positive integer, got {parallelism!r}")
    if parallelism > max_parallelism:
        raise GraphError(
            f"{what}: parallelism {parallelism} is above max_parallelism {max_parallelism} "
            "(the number of key groups); raise max_parallelism on the Dataflow"
        )


class Dataflow:
    """A streaming job: sources, operators and sinks."""

    def __init__(self, name: str, *, parallelism: int = 1, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> None:
        if not name or not isinstance(name, str):
            raise GraphError("a Dataflow needs a non-empty name")
        if not isinstance(max_parallelism, int) or max_parallelism < 1 or max_parallelism > 32768:
            raise GraphError(f"max_parallelism must be between 1 and 32768, got {max_parallelism!r}")
        _check_parallelism(f"dataflow {name!r}", parallelism, max_parallelism)
        self.name = name
        self.parallelism = parallelism
        self.max_parallelism = max_parallelism
        self.nodes: list[Node] = []

    def source(self, source: Source, *, name: str | None = None, parallelism: int | None = None,
               uid: str | None = None) -> Stream[Any]:
        """The stream of ``source`` (a ``flowstate.connectors.base.Source``); ``uid`` names its state
        in checkpoints (default: its position in the dataflow)."""
        for attr in ("splits", "build_reader", "replayable"):
            if not hasattr(source, attr):
                raise GraphError(
                    f"{source!r} is not a source (it has no {attr}); use FileSource, GeneratorSource, "
                    "SocketSource or an object implementing flowstate.connectors.base.Source"
                )
        node = self._add("source", name or getattr(source, "name", None) or "source", source, parallelism, (), uid)
        if getattr(source, "record_batches", False):  # its items are pyarrow.RecordBatch (flowstate.arrow)
            return ArrowStream(self, node)
        # A source whose records carry event time (flowstate.testing.TimedSource) names its timestamp function.
        return Stream(self, node, None, getattr(source, "timestamp_fn", None))

    def _add(
        self, kind: str, name: str, fn: Any, parallelism: int | None, inputs: tuple[Edge, ...], uid: str | None,
        **extra: Any,
    ) -> Node:
        kind = NodeKind(kind)
        index = len(self.nodes)
        what = f"{kind} {name!r}"
        _check_parallelism(what, parallelism, self.max_parallelism)
        if uid is None:
            uid = f"{index}-{kind}"
        elif not isinstance(uid, str) or not uid or "#" in uid or "/" in uid:
            raise GraphError(f"{what}: uid must be a non-empty string without '#' or '/', got {uid!r}")
        if any(n.uid == uid for n in self.nodes):
            raise GraphError(f"{what}: uid {uid!r} is already used by another operator")
        node = Node(index, kind, name, uid, fn, parallelism, inputs, self.max_parallelism, dict(extra))
        self.nodes.append(node)
        return node

    def sinks(self) -> list[Node]:
        """The sink nodes, in the order they were added."""
        return [n for n in self.nodes if n.kind == "sink"]


def _callable(kind: str, name: str | None, fn: object) -> str:
    shown = name or getattr(fn, "__name__", None) or kind
    if not callable(fn):
        raise GraphError(f"{kind} {shown!r}: {fn!r} is not callable")
    if shown == "<lambda>":
        shown = kind
    return shown


class Stream(Generic[T]):
    """A stream of records of type ``T`` produced by one node."""

    def __init__(self, flow: Dataflow, node: Node, key_fn: Callable[[Any], Any] | None = None,
                 timestamp_fn: Callable[[Any], Any] | None = None) -> None:
        self._flow = flow
        self._node = node
        self._key_fn = key_fn
        self._timestamp_fn = timestamp_fn
        """Set from ``assign_timestamps`` on, through ``filter`` and ``key_by`` (which keep records as
        they are); an operator that makes new records (``map``, ``process``…) ends it."""

    @property
    def node(self) -> Node:
        """The node that produces this stream."""
        return self._node

    def _edge(self) -> tuple[Edge, ...]:
        return (Edge(self._node, self._key_fn),)

    def _op(self, kind: str, fn: object, name: str | None, parallelism: int | None, uid: str | None,
            **extra: Any) -> Stream[Any]:
        shown = _callable(kind, name, fn)
        return Stream(self._flow, self._flow._add(kind, shown, fn, parallelism, self._edge(), uid, **extra))

    def map(self, fn: Callable[[T], U], *, name: str | None = None, parallelism: int | None = None,
            uid: str | None = None) -> Stream[U]:
        """One output record per input record: ``fn(record)``."""
        return self._op("map", fn, name, parallelism, uid)

    def filter(self, fn: Callable[[T], object], *, name: str | None = None, parallelism: int | None = None,
               uid: str | None = None) -> Stream[T]:
        """The records for which ``fn(record)`` is true."""
        out: Stream[T] = self._op("filter", fn, name, parallelism, uid)
        out._timestamp_fn = self._timestamp_fn
        return out

    def flat_map(self, fn: Callable[[T], Iterable[U]], *, name: str | None = None, parallelism: int | None = None,
                 uid: str | None = None) -> Stream[U]:
        """Every record of the iterable ``fn(record)``."""
        return self._op("flat_map", fn, name, parallelism, uid)

    def to_arrow(self, schema: Any = None, *, name: str | None = None, parallelism: int | None = None,
                 uid: str | None = None) -> Any:
        """The vectorized path (``flowstate.arrow``, needs ``flowstate[arrow]``): each batch of records
        (dicts, or tuples with a ``pyarrow.Schema``) as one ``pyarrow.RecordBatch`` (of at most the
        run's ``batch_size`` rows: a record batch never spans a barrier); record batches pass as they
        are. Returns an ``ArrowStream``."""
        return to_arrow(self, schema, name=name, parallelism=parallelism, uid=uid)

    def map_batches(self, fn: Callable[[Any], Any], *, name: str | None = None, parallelism: int | None = None,
                    uid: str | None = None) -> Any:
        """``fn(batch)`` for every ``pyarrow.RecordBatch`` item of the stream (``flowstate.arrow``,
        needs ``flowstate[arrow]``). Returns an ``ArrowStream``."""
        return map_batches(self, fn, name=name, parallelism=parallelism, uid=uid)

    def key_by(self, key_fn: Callable[[T], K2], *, name: str | None = None) -> KeyedStream[K2, T]:
        """Partition the stream by ``key_fn(record)``: every record of one key goes to one subtask,
        which can keep keyed state for it. The key must be None, bool, int, float (not NaN), str,
        bytes, datetime.date or a tuple of these, and equal keys (``1``, ``1.0``, ``True``) are one
        key: the rules of ``flowstate.state.keys``, the same at every parallelism and backend."""
        _callable("key_by", name, key_fn)
        return KeyedStream(self._flow, self._node, key_fn, self._timestamp_fn)

    def assign_timestamps(
        self, fn: Callable[[T], Timestamp], *, max_out_of_orderness: Duration = 0, idle_timeout: Duration | None = None,
        watermark_interval: Duration = "200ms", name: str | None = None, parallelism: int | None = None,
        uid: str | None = None,
    ) -> Stream[T]:
        """Event time from here on: ``fn(record)`` is the record's timestamp (seconds since the epoch
        as int or float, or an aware datetime). Watermarks trail the largest timestamp seen by
        ``max_out_of_orderness``; a subtask that gets no record for ``idle_timeout`` stops holding
        the watermark back, and when all of it is quiet its event time follows processing time
        (``flowstate.time.watermarks``). A watermark is emitted at most every ``watermark_interval``
        of processing time (0: after every batch); windows group the records in between.
        Durations: seconds, ``"500ms"``, ``"30m"`` or a timedelta."""
        from flowstate.time.duration import parse_duration

        shown = _callable("assign_timestamps", name, fn)
        try:
            bound = parse_duration(max_out_of_orderness, "max_out_of_orderness")
            idle = None if idle_timeout is None else parse_duration(idle_timeout, "idle_timeout")
            interval = parse_duration(watermark_interval, "watermark_interval")
        except ValueError as exc:
            raise GraphError(f"assign_timestamps {shown!r}: {exc}") from None
        if idle is not None and idle <= 0:
            raise GraphError(f"assign_timestamps {shown!r}: idle_timeout must be positive")
        node = self._flow._add("timestamps", shown, fn, parallelism, self._edge(), uid,
                               out_of_orderness=bound, idle_timeout=idle, watermark_interval=interval)
        return Stream(self._flow, node, None, fn)

    def process(self, fn: ProcessFunction[T, U], *, name: str | None = None, parallelism: int | None = None,
                uid: str | None = None) -> Stream[U]:
        """Run a ``ProcessFunction`` over every record (a ``KeyedProcessFunction`` needs ``key_by`` first)."""
        shown = name or type(fn).__name__
        if isinstance(fn, KeyedProcessFunction) and self._key_fn is None:
            raise GraphError(
                f"process {shown!r}: {type(fn).__name__} is a KeyedProcessFunction and needs a keyed "
                "stream: call key_by(...) first"
            )
        if not isinstance(fn, ProcessFunction):
            raise GraphError(f"process {shown!r}: expected a ProcessFunction or KeyedProcessFunction, got {fn!r}")
        copy_for_subtask(fn, shown)  # refused now, while the job is built, rather than in every attempt
        kind = "keyed_process" if self._key_fn is not None else "process"
        extra = {"timestamp_fn": self._timestamp_fn} if kind == "keyed_process" else {}
        return Stream(self._flow, self._flow._add(kind, shown, fn, parallelism, self._edge(), uid, **extra))

    def reduce(self, fn: Callable[[T, T], T], *, name: str | None = None, parallelism: int | None = None,
               uid: str | None = None) -> Stream[T]:
        """Refused with a ``GraphError``: a running reduce is per key (``key_by(...).reduce(...)``)."""
        shown = name or getattr(fn, "__name__", None) or "reduce"
        if shown == "<lambda>":
            shown = "reduce"
        raise GraphError(f"reduce {shown!r} needs a keyed stream: call key_by(...) before reduce(...)")

    def union(self, *others: Stream[T], name: str | None = None, parallelism: int | None = None,
              uid: str | None = None) -> Stream[T]:
        """The records of this stream and of ``others``, interleaved."""
        if not others:
            raise GraphError("union needs at least one other stream")
        for other in others:
            if not isinstance(other, Stream) or other._flow is not self._flow:
                raise GraphError("union: every stream must belong to the same Dataflow")
        edges = self._edge() + tuple(e for o in others for e in o._edge())
        return Stream(self._flow, self._flow._add("union", name or "union", None, parallelism, edges, uid))

    def sink(self, sink: Sink | Callable[[T], object], *, name: str | None = None, parallelism: int | None = None,
             uid: str | None = None) -> None:
        """Write the stream to ``sink`` (a Sink, or a callable called with each record)."""
        if not hasattr(sink, "build_writer"):
            if not callable(sink):
                raise GraphError(f"sink {name or sink!r}: expected a Sink or a callable, got {sink!r}")
            from flowstate.connectors.print_sink import CallbackSink

            sink = CallbackSink(sink)
        shown = name or getattr(sink, "name", None) or "sink"
        self._flow._add("sink", shown, sink, parallelism, self._edge(), uid)


class KeyedStream(Stream[T], Generic[K, T]):
    """A stream of records ``T`` partitioned by keys ``K``: keyed state, ``reduce``, windows and joins
    are available downstream."""

    def reduce(self, fn: Callable[[T, T], T], *, name: str | None = None, parallelism: int | None = None,
               uid: str | None = None) -> Stream[T]:
        """A running reduce per key: emits ``fn(previous, record)`` for every record (the first record
        of a key is emitted as is)."""
        return self._op("reduce", fn, name, parallelism, uid)

    def key_by(self, key_fn: Callable[[T], K2], *, name: str | None = None) -> KeyedStream[K2, T]:
        """Partition again, by ``key_fn(record)`` (see ``Stream.key_by``)."""
        return super().key_by(key_fn, name=name)

    def window(self, assigner: object, *, allowed_lateness: Duration = 0, early_every: Duration | None = None,
               early_count: int | None = None) -> WindowedStream[K, T]:
        """Windows per key: ``TumblingWindows``, ``SlidingWindows``, ``SessionWindows`` or
        ``CountWindows``; then ``.reduce``, ``.aggregate`` or ``.process``
        (``WindowedStream``, ``flowstate.windowed``). Records later than ``allowed_lateness`` past the end
        of their window are late (``late_records()`` of the result). Early results of windows still
        open: every ``early_every`` of processing time, or every ``early_count`` records of a window
        (``EarlyWindowResult``; the final result follows as always)."""
        spec = window_spec(assigner, allowed_lateness, early_every, early_count, event_time=self._timestamp_fn is not None)
        return WindowedStream(self, spec)

    @overload
    def interval_join(self, other: KeyedStream[K, U], *, lower: Duration, upper: Duration, fn: None = None,
                      name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream[tuple[T, U]]: ...
    @overload
    def interval_join(self, other: KeyedStream[K, U], *, lower: Duration, upper: Duration, fn: Callable[[T, U], R],
                      name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream[R]: ...
    def interval_join(
        self, other: KeyedStream[K, U], *, lower: Duration, upper: Duration, fn: Callable[[T, U], R] | None = None,
        name: str | None = None, parallelism: int | None = None, uid: str | None = None,
    ) -> Stream[Any]:
        """Every pair ``(a, b)`` of this stream's ``a`` and ``other``'s ``b`` with equal keys and
        ``a.ts + lower <= b.ts <= a.ts + upper`` (``fn(a, b)`` when given), each once; both streams
        need event time. Records behind the watermark are dropped; buffered records are keyed state
        and cleared once the watermark passes their last possible match
        (``flowstate.operators.joins``). Bounds: durations, ``lower`` may be negative (``"-5m"``)."""
        from flowstate.time.duration import parse_duration

        shown = name or "interval_join"
        if not isinstance(other, KeyedStream) or other._flow is not self._flow:
            raise GraphError(f"{shown}: the other stream must be a keyed stream (key_by) of the same Dataflow")
        if self._timestamp_fn is None or other._timestamp_fn is None:
            raise GraphError(f"{shown}: both streams need event time: call assign_timestamps(...) before key_by(...)")
        try:
            low = parse_duration(lower, "lower", allow_negative=True)
            high = parse_duration(upper, "upper", allow_negative=True)
        except ValueError as exc:
            raise GraphError(f"{shown}: {exc}") from None
        if low > high:
            raise GraphError(f"{shown}: lower ({lower!r}) is above upper ({upper!r})")
        if fn is not None:
            _callable("interval_join", name, fn)
        keyed = self._tagged_union(other, shown, parallelism)
        node = self._flow._add("interval_join", shown, fn, parallelism, keyed._edge(), uid, lower=low, upper=high,
                               timestamp_fn=keyed._timestamp_fn)
        return Stream(self._flow, node)

    @overload
    def window_join(self, other: KeyedStream[K, U], assigner: object, fn: None = None, *, allowed_lateness: Duration = 0,
                    name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> WindowResultStream[tuple[T, U]]: ...
    @overload
    def window_join(self, other: KeyedStream[K, U], assigner: object, fn: Callable[[T, U], R], *,
                    allowed_lateness: Duration = 0, name: str | None = None, parallelism: int | None = None,
                    uid: str | None = None) -> WindowResultStream[R]: ...
    def window_join(
        self, other: KeyedStream[K, U], assigner: object, fn: Callable[[T, U], R] | None = None, *,
        allowed_lateness: Duration = 0, name: str | None = None, parallelism: int | None = None, uid: str | None = None,
    ) -> WindowResultStream[Any]:
        """Every pair ``(a, b)`` of this stream's ``a`` and ``other``'s ``b`` with equal keys in one
        window of ``assigner`` (tumbling, sliding or session windows over both streams' timestamps;
        ``fn(a, b)`` when given), emitted when the window fires (Flink's window join). A pair in two
        sliding windows is emitted by each. The window contents are keyed state, in every checkpoint.
        The result's ``late_records()`` gives ``(0, a)`` and ``(1, b)`` for late records."""
        shown = name or "window_join"
        if not isinstance(other, KeyedStream) or other._flow is not self._flow:
            raise GraphError(f"{shown}: the other stream must be a keyed stream (key_by) of the same Dataflow")
        if self._timestamp_fn is None or other._timestamp_fn is None:
            raise GraphError(f"{shown}: both streams need event time: call assign_timestamps(...) before key_by(...)")
        if getattr(assigner, "counting", False):
            raise GraphError(f"{shown}: CountWindows depend on arrival order; join in time windows "
                             "(TumblingWindows, SlidingWindows or SessionWindows)")
        if fn is not None:
            _callable("window_join", name, fn)
        keyed = self._tagged_union(other, shown, parallelism)
        return keyed.window(assigner, allowed_lateness=allowed_lateness).process(
            WindowPairs(fn), name=shown, parallelism=parallelism, uid=uid)

    @overload
    def join_latest(self, table: KeyedStream[K, U], fn: None = None, *,
                    name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream[tuple[T, U | None]]: ...
    @overload
    def join_latest(self, table: KeyedStream[K, U], fn: Callable[[T, U | None], R], *,
                    name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream[R]: ...
    def join_latest(
        self, table: KeyedStream[K, U], fn: Callable[[T, U | None], R] | None = None, *, name: str | None = None,
        parallelism: int | None = None, uid: str | None = None,
    ) -> Stream[Any]:
        """Each record of this stream with the latest row of ``table`` for its key as of the record's
        timestamp: ``fn(record, row)`` (``(record, row)`` without ``fn``), ``row`` ``None`` when the
        key had none yet. A record is joined once the watermark reaches its timestamp, so the result
        does not depend on which input arrived first; older rows are removed once no record can
        join them (``flowstate.operators.joins.JoinLatestOperator``)."""
        shown = name or "join_latest"
        if not isinstance(table, KeyedStream) or table._flow is not self._flow:
            raise GraphError(f"{shown}: the table must be a keyed stream (key_by) of the same Dataflow")
        if self._timestamp_fn is None or table._timestamp_fn is None:
            raise GraphError(f"{shown}: both streams need event time: call assign_timestamps(...) before key_by(...)")
        if fn is not None:
            _callable("join_latest", name, fn)
        keyed = self._tagged_union(table, shown, parallelism)
        node = self._flow._add("join_latest", shown, fn, parallelism, keyed._edge(), uid,
                               timestamp_fn=keyed._timestamp_fn)
        return Stream(self._flow, node)

    def _tagged_union(self, other: KeyedStream[K, Any], shown: str, parallelism: int | None) -> KeyedStream[K, Any]:
        """Both inputs of a join as one keyed stream of ``(0, record)`` and ``(1, record)``."""
        sides = (JoinSide(0, self._key_fn, self._timestamp_fn), JoinSide(1, other._key_fn, other._timestamp_fn))
        tagged = [Stream[Any](self._flow, s._node).map(side.tag, name=f"{shown} side {side.side}",
                                                       parallelism=s._node.parallelism)
                  for s, side in zip((self, other), sides)]
        both = tagged[0].union(tagged[1], name=f"{shown} inputs", parallelism=parallelism)
        return KeyedStream(self._flow, both._node, JoinKey(sides), JoinKey(sides, timestamps=True))


class WindowedStream(Generic[K, T]):
    """The windows of a keyed stream (``keyed.window(assigner)``); what each method emits is in
    ``flowstate.windowed``."""

    def __init__(self, keyed: KeyedStream[K, T], spec: WindowSpec) -> None:
        self._keyed = keyed
        self._spec = spec

    def reduce(self, fn: Callable[[T, T], T], *, name: str | None = None, parallelism: int | None = None,
               uid: str | None = None) -> WindowResultStream[WindowResult[K, T]]:
        """Per key and window, the records folded with ``fn``: ``WindowResult(key, window, value)``."""
        return self._build("reduce", _callable("window reduce", name, fn), fn, parallelism, uid)

    def aggregate(self, aggregate: Aggregate[T, Any, R], *, name: str | None = None, parallelism: int | None = None,
                  uid: str | None = None) -> WindowResultStream[WindowResult[K, R]]:
        """Per key and window, ``WindowResult(key, window, aggregate.result(acc))``; only the
        accumulator is kept (``flowstate.aggregates``)."""
        try:
            check_aggregate(aggregate)
        except TypeError as exc:
            raise GraphError(f"window aggregate: {exc}") from None
        shown = name or f"window {type(aggregate).__name__.lower().lstrip('_')}"
        return self._build("aggregate", shown, aggregate, parallelism, uid)

    def process(self, fn: Callable[[K, Window, list[T]], Iterable[U] | None], *, name: str | None = None,
                parallelism: int | None = None, uid: str | None = None) -> WindowResultStream[U]:
        """Every record of ``fn(key, window, records)``, the window's records in arrival order."""
        return self._build("process", _callable("window process", name, fn), fn, parallelism, uid)

    def _build(self, kind: str, shown: str, fn: object, parallelism: int | None, uid: str | None) -> WindowResultStream[Any]:
        keyed, spec = self._keyed, self._spec
        flow = keyed._flow
        if shown in ("window reduce", "window process"):
            shown = f"{type(spec.assigner).__name__} {kind}"
        node = flow._add("window", shown, fn, parallelism, keyed._edge(), uid, assigner=spec.assigner,
                         timestamp_fn=keyed._timestamp_fn, allowed_lateness=spec.allowed_lateness, function_kind=kind,
                         late=False, early_every=spec.early_every, early_count=spec.early_count)
        results = flow._add("select", f"{shown} results", None, parallelism, (Edge(node),), None, late=False)
        return WindowResultStream(flow, results, window=node)


class WindowResultStream(Stream[T]):
    """The results of a window operator; ``late_records()`` gives its late records."""

    def __init__(self, flow: Dataflow, node: Node, *, window: Node) -> None:
        super().__init__(flow, node)
        self._window = window

    def late_records(self, *, name: str | None = None) -> Stream[Any]:
        """The records that were too late for every window they belong to, in arrival order."""
        window = self._window
        if window.extra.get("late"):
            raise GraphError(f"window {window.name!r}: late_records() was already called")
        window.extra["late"] = True
        node = self._flow._add("select", name or f"{window.name} late", None, window.parallelism,
                               (Edge(window),), None, late=True)
        return Stream(self._flow, node)


# ---- the vectorized path (rules in flowstate.columnar) -----------------------------------------------

class ArrowStream(Stream[Any]):
    """A stream whose items are ``pyarrow.RecordBatch`` (rule 2). Every ``Stream`` operator applies
    to the items; the methods below are the columnar ones."""

    def map_batches(self, fn: Callable[[Any], Any], *, name: str | None = None, parallelism: int | None = None,
                    uid: str | None = None) -> ArrowStream:
        """``fn(batch)`` for every record batch (rule 3)."""
        return map_batches(self, fn, name=name, parallelism=parallelism, uid=uid)

    def to_arrow(self, schema: Any = None, *, name: str | None = None, parallelism: int | None = None,
                 uid: str | None = None) -> ArrowStream:
        return self

    def key_by(self, column: str, *, name: str | None = None) -> KeyedArrowStream:  # type: ignore[override]
        """Partition the rows by the value of ``column`` (rule 4)."""
        if not isinstance(column, str) or not column:
            raise GraphError(f"key_by on record batches takes a column name, got {column!r}")
        require_pyarrow("key_by(column)")
        return KeyedArrowStream(self._flow, self._node, column)

    def to_records(self, *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream[Any]:
        """One Python record (a dict of column → value) per row."""
        node = self._flow._add("to_records", name or "to_records", None, parallelism, self._edge(), uid)
        return Stream(self._flow, node)


class KeyedArrowStream:
    """Record batches partitioned by a key column: keyed aggregations (rule 5)."""

    def __init__(self, flow: Dataflow, node: Node, column: str) -> None:
        self._flow = flow
        self._node = node
        self.column = column

    def aggregate(self, *specs: tuple[str, str], name: str | None = None, parallelism: int | None = None,
                  uid: str | None = None) -> ArrowStream:
        """A running aggregation per key: ``specs`` are ``(column, function)`` pairs, functions among
        ``FUNCTIONS``; emits ``key, <column>_<function>…`` for the keys of every input batch."""
        shown = name or "aggregate_batches"
        if not specs:
            raise GraphError(f"{shown}: give at least one (column, function) pair")
        for spec in specs:
            if (not isinstance(spec, tuple) or len(spec) != 2 or not isinstance(spec[0], str)
                    or spec[1] not in FUNCTIONS):
                raise GraphError(f"{shown}: {spec!r} is not a (column, function) pair with a function among "
                                 f"{', '.join(FUNCTIONS)}")
        if len(set(specs)) != len(specs):
            raise GraphError(f"{shown}: {specs!r} names an aggregate twice")
        agg = BatchAggregate.of(self.column, specs)
        upstream = self._node
        partial = self._flow._add("map_batches", f"{shown} (partial)", PartialAggregate(agg), upstream.parallelism,
                                  (Edge(upstream),), f"{uid}-partial" if uid else None)
        node = self._flow._add("aggregate_batches", shown, agg, parallelism, (Edge(partial, ColumnKey(self.column)),),
                               uid)
        return ArrowStream(self._flow, node)

    def sum(self, column: str, **kwargs: Any) -> ArrowStream:
        return self.aggregate((column, "sum"), **kwargs)

    def count(self, column: str, **kwargs: Any) -> ArrowStream:
        return self.aggregate((column, "count"), **kwargs)

    def min(self, column: str, **kwargs: Any) -> ArrowStream:
        return self.aggregate((column, "min"), **kwargs)

    def max(self, column: str, **kwargs: Any) -> ArrowStream:
        return self.aggregate((column, "max"), **kwargs)

    def mean(self, column: str, **kwargs: Any) -> ArrowStream:
        return self.aggregate((column, "mean"), **kwargs)


def to_arrow(stream: Stream[Any], schema: Any = None, *, name: str | None = None, parallelism: int | None = None,
             uid: str | None = None) -> ArrowStream:
    """``Stream.to_arrow``: each batch of Python records as one record batch (rule 2)."""
    pa = require_pyarrow("to_arrow")
    if schema is not None and not isinstance(schema, pa.Schema):
        raise GraphError(f"to_arrow: schema must be a pyarrow.Schema, got {schema!r}")
    node = stream._flow._add("to_arrow", name or "to_arrow", None, parallelism, stream._edge(), uid, schema=schema)
    return ArrowStream(stream._flow, node)


def map_batches(stream: Stream[Any], fn: Callable[[Any], Any], *, name: str | None = None, parallelism: int | None = None,
                uid: str | None = None) -> ArrowStream:
    """``Stream.map_batches``: ``fn`` over the record batches of ``stream`` (rule 3)."""
    require_pyarrow("map_batches")
    shown = _callable("map_batches", name, fn)
    node = stream._flow._add("map_batches", shown, fn, parallelism, stream._edge(), uid)
    return ArrowStream(stream._flow, node)
