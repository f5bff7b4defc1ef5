"""The dataflow API: how users describe a job.

``Dataflow`` collects nodes; ``Stream`` and ``KeyedStream`` add operators. Mistakes that can be seen
while the graph is written (a function that is not callable, keyed state on a stream that is not
keyed, a parallelism above ``max_parallelism``, a duplicate uid) raise ``GraphError`` at once, naming
the operator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flowstate.errors import GraphError
from flowstate.functions import KeyedProcessFunction, ProcessFunction, copy_for_subtask
from flowstate.kinds import NodeKind
from flowstate.state.keygroups import DEFAULT_MAX_PARALLELISM


@dataclass(frozen=True, slots=True)
class Edge:
    """How records travel from ``source`` into a node: ``forward`` (or ``rebalance`` when the
    parallelism differs) unless ``key_fn`` is set, in which case by key group."""

    source: Node
    key_fn: Callable[[Any], Any] | None = None


@dataclass(eq=False)
class Node:
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

    def source(self, source: Any, *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream:
        for attr in ("splits", "build_reader", "replayable"):
            if not hasattr(source, attr):
                raise GraphError(
                    f"{source!r} is not a source (it has no {attr}); use FileSource, GeneratorSource, "
                    "SocketSource or an object implementing flowstate.connectors.base.Source"
                )
        node = self._add("source", name or getattr(source, "name", None) or "source", source, parallelism, (), uid)
        if getattr(source, "record_batches", False):  # its items are pyarrow.RecordBatch (flowstate.arrow)
            from flowstate.arrow import ArrowStream

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
        return [n for n in self.nodes if n.kind == "sink"]


def _callable(kind: str, name: str | None, fn: Any) -> str:
    shown = name or getattr(fn, "__name__", None) or kind
    if not callable(fn):
        raise GraphError(f"{kind} {shown!r}: {fn!r} is not callable")
    if shown == "<lambda>":
        shown = kind
    return shown


class Stream:
    """A stream of records produced by one node."""

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
        return self._node

    def _edge(self) -> tuple[Edge, ...]:
        return (Edge(self._node, self._key_fn),)

    def _op(self, kind: str, fn: Any, name: str | None, parallelism: int | None, uid: str | None, **extra: Any) -> Stream:
        shown = _callable(kind, name, fn)
        return Stream(self._flow, self._flow._add(kind, shown, fn, parallelism, self._edge(), uid, **extra))

    def map(self, fn: Callable[[Any], Any], *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream:
        """One output record per input record: ``fn(record)``."""
        return self._op("map", fn, name, parallelism, uid)

    def filter(self, fn: Callable[[Any], bool], *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream:
        """The records for which ``fn(record)`` is true."""
        out = self._op("filter", fn, name, parallelism, uid)
        out._timestamp_fn = self._timestamp_fn
        return out

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream:
        """Every record of the iterable ``fn(record)``."""
        return self._op("flat_map", fn, name, parallelism, uid)

    def to_arrow(self, schema: Any = None, *, name: str | None = None, parallelism: int | None = None,
                 uid: str | None = None) -> Any:
        """The vectorized path (``flowstate.arrow``, needs ``flowstate[arrow]``): each batch of records
        (dicts, or tuples with a ``pyarrow.Schema``) as one ``pyarrow.RecordBatch`` (of at most the
        run's ``batch_size`` rows: a record batch never spans a barrier); record batches pass as they
        are. Returns an ``ArrowStream``."""
        from flowstate.arrow import to_arrow

        return to_arrow(self, schema, name=name, parallelism=parallelism, uid=uid)

    def map_batches(self, fn: Callable[[Any], Any], *, name: str | None = None, parallelism: int | None = None,
                    uid: str | None = None) -> Any:
        """``fn(batch)`` for every ``pyarrow.RecordBatch`` item of the stream (``flowstate.arrow``,
        needs ``flowstate[arrow]``). Returns an ``ArrowStream``."""
        from flowstate.arrow import map_batches

        return map_batches(self, fn, name=name, parallelism=parallelism, uid=uid)

    def key_by(self, key_fn: Callable[[Any], Any], *, name: str | None = None) -> KeyedStream:
        """Partition the stream by ``key_fn(record)``: every record of one key goes to one subtask,
        which can keep keyed state for it. The key must be None, bool, int, float (not NaN), str,
        bytes, datetime.date or a tuple of these, and equal keys (``1``, ``1.0``, ``True``) are one
        key: the rules of ``flowstate.state.keys``, the same at every parallelism and backend."""
        _callable("key_by", name, key_fn)
        return KeyedStream(self._flow, self._node, key_fn, self._timestamp_fn)

    def assign_timestamps(
        self, fn: Callable[[Any], Any], *, max_out_of_orderness: Any = 0, idle_timeout: Any = None,
        watermark_interval: Any = "200ms", name: str | None = None, parallelism: int | None = None,
        uid: str | None = None,
    ) -> Stream:
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

    def process(self, fn: ProcessFunction, *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream:
        """Run a ``ProcessFunction`` over every record."""
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

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None, **_: Any) -> Stream:
        shown = name or getattr(fn, "__name__", None) or "reduce"
        if shown == "<lambda>":
            shown = "reduce"
        raise GraphError(f"reduce {shown!r} needs a keyed stream: call key_by(...) before reduce(...)")

    def union(self, *others: Stream, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream:
        """The records of this stream and of ``others``, interleaved."""
        if not others:
            raise GraphError("union needs at least one other stream")
        for other in others:
            if not isinstance(other, Stream) or other._flow is not self._flow:
                raise GraphError("union: every stream must belong to the same Dataflow")
        edges = self._edge() + tuple(e for o in others for e in o._edge())
        return Stream(self._flow, self._flow._add("union", name or "union", None, parallelism, edges, uid))

    def sink(self, sink: Any, *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> None:
        """Write the stream to ``sink`` (a Sink, or a callable called with each record)."""
        if not hasattr(sink, "build_writer"):
            if not callable(sink):
                raise GraphError(f"sink {name or sink!r}: expected a Sink or a callable, got {sink!r}")
            from flowstate.connectors.print_sink import CallbackSink

            sink = CallbackSink(sink)
        shown = name or getattr(sink, "name", None) or "sink"
        self._flow._add("sink", shown, sink, parallelism, self._edge(), uid)


class KeyedStream(Stream):
    """A stream partitioned by key: keyed state and ``reduce`` are available downstream."""

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None, parallelism: int | None = None, uid: str | None = None) -> Stream:  # type: ignore[override]
        """A running reduce per key: emits ``fn(previous, record)`` for every record (the first record
        of a key is emitted as is)."""
        return self._op("reduce", fn, name, parallelism, uid)

    def key_by(self, key_fn: Callable[[Any], Any], *, name: str | None = None) -> KeyedStream:
        return super().key_by(key_fn, name=name)

    def window(self, assigner: Any, *, allowed_lateness: Any = 0, early_every: Any = None,
               early_count: int | None = None) -> Any:
        """Windows per key: ``TumblingWindows``, ``SlidingWindows``, ``SessionWindows`` or
        ``CountWindows``; then ``.reduce``, ``.aggregate`` or ``.process``
        (``flowstate.windowed.WindowedStream``). Records later than ``allowed_lateness`` past the end
        of their window are late (``late_records()`` of the result). Early results of windows still
        open: every ``early_every`` of processing time, or every ``early_count`` records of a window
        (``EarlyWindowResult``; the final result follows as always)."""
        from flowstate.windowed import WindowedStream

        return WindowedStream(self, assigner, allowed_lateness, early_every=early_every, early_count=early_count)

    def interval_join(
        self, other: KeyedStream, *, lower: Any, upper: Any, fn: Callable[[Any, Any], Any] | None = None,
        name: str | None = None, parallelism: int | None = None, uid: str | None = None,
    ) -> Stream:
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

    def window_join(
        self, other: KeyedStream, assigner: Any, fn: Callable[[Any, Any], Any] | None = None, *,
        allowed_lateness: Any = 0, name: str | None = None, parallelism: int | None = None, uid: str | None = None,
    ) -> Any:
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
            _WindowPairs(fn), name=shown, parallelism=parallelism, uid=uid)

    def join_latest(
        self, table: KeyedStream, fn: Callable[[Any, Any], Any] | None = None, *, name: str | None = None,
        parallelism: int | None = None, uid: str | None = None,
    ) -> Stream:
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

    def _tagged_union(self, other: KeyedStream, shown: str, parallelism: int | None) -> KeyedStream:
        """Both inputs of a join as one keyed stream of ``(0, record)`` and ``(1, record)``."""
        sides = (_JoinSide(0, self._key_fn, self._timestamp_fn), _JoinSide(1, other._key_fn, other._timestamp_fn))
        tagged = [Stream(self._flow, s._node).map(side.tag, name=f"{shown} side {side.side}", parallelism=s._node.parallelism)
                  for s, side in zip((self, other), sides)]
        both = tagged[0].union(tagged[1], name=f"{shown} inputs", parallelism=parallelism)
        return KeyedStream(self._flow, both._node, _JoinKey(sides), _JoinKey(sides, timestamps=True))


class _JoinSide:
    """Tags a record of one side of a join, and reads its key and timestamp (picklable)."""

    def __init__(self, side: int, key_fn: Any, timestamp_fn: Any) -> None:
        self.side = side
        self.key_fn = key_fn
        self.timestamp_fn = timestamp_fn

    def tag(self, record: Any) -> tuple[int, Any]:
        return (self.side, record)


class _WindowPairs:
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


class _JoinKey:
    def __init__(self, sides: tuple[_JoinSide, _JoinSide], timestamps: bool = False) -> None:
        self.fns = tuple(s.timestamp_fn if timestamps else s.key_fn for s in sides)

    def __call__(self, tagged: tuple[int, Any]) -> Any:
        return self.fns[tagged[0]](tagged[1])
