"""The vectorized path: streams whose records are ``pyarrow.RecordBatch`` items (the API is
``ArrowStream`` and ``KeyedArrowStream`` in ``flowstate.dataflow``; this module holds what the API,
the operators, the routing and the transport share, and imports no pyarrow until asked).

For jobs whose per-record work is columnar, a record costs a share of one call into Arrow rather
than a call of a Python function. Rules:

1. **pyarrow is an optional extra** (``pip install 'flowstate[arrow]'``). Nothing in the core
   imports it; the API below imports it when a job asks for it, and without it fails with one line
   naming the extra (``MissingExtraError``).
2. **An Arrow stream is a stream whose items are record batches.** An item is the unit of a
   barrier: a checkpoint falls between two items, never inside one, so the engine's rules (batches,
   barriers, exactly-once) hold unchanged. ``to_arrow()`` turns a batch of Python records (dicts, or
   tuples with a ``schema``) into one record batch; ``to_records()`` turns record batches back into
   Python records (one dict per row). The engine counts items: the records a source read, or that
   a task processed, are record batches.
3. **``map_batches(fn)``**: ``fn(batch)`` returns a ``RecordBatch``, a ``Table`` (its batches) or
   ``None`` (nothing); any other value fails naming the operator.
4. **``key_by(column)``** partitions rows by the key group of the column's value (the rules of
   ``flowstate.state.keys``: a value is a key by its Python value, ``to_pylist()``), so a key lands
   where the per-record path would put it and keyed state restores and rescales as any other.
   Routing hashes each distinct key of a batch once; the rows are split with Arrow compute.
5. **Keyed aggregation** (``aggregate``, ``sum``, ``count``, ``min``, ``max``, ``mean``) runs in two
   steps, as Flink's local-global aggregation does: a *partial* step in the upstream task groups
   each record batch by key (Arrow group-by) and sends one row per key of the batch; the keyed step
   groups those rows again (when an engine batch brings several items) and merges them, one state
   access per key and batch, into each key's accumulator, a tuple in value state
   (heap or RocksDB: in every checkpoint, restored, rescaled by key group). The partial step keeps
   nothing between two batches, so it needs no state of its own. For every input item the keyed
   step emits one record batch: the key column and the new result of every key that batch touched
   (``<column>_<function>``), an update stream whose last row per key is the result so far. A
   keyed Arrow stream offers these aggregations only.
6. Nulls: ``sum``, ``min`` and ``max`` ignore them (null for a key with none but nulls); ``count``
   counts the values that are not null; ``mean`` is their sum over their count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zlib import crc32

from flowstate.errors import FlowstateError
from flowstate.state.keygroups import GOLDEN, stable_key_bytes
from flowstate.state.keys import check_key

if TYPE_CHECKING:
    import pyarrow as pa

EXTRA = "pip install 'flowstate[arrow]'"


class MissingExtraError(FlowstateError, ImportError):
    """A feature needs an optional dependency that is not installed; the message says what to install."""


def require_pyarrow(what: str) -> Any:
    """The ``pyarrow`` module, or ``MissingExtraError`` naming ``what`` needs it (rule 1)."""
    try:
        import pyarrow
    except ImportError:
        raise MissingExtraError(f"{what} needs pyarrow, which is not installed: {EXTRA}") from None
    return pyarrow


def is_record_batch(item: Any) -> bool:
    """Whether ``item`` is a ``pyarrow.RecordBatch``, without importing pyarrow."""
    t = type(item)
    return t.__name__ == "RecordBatch" and t.__module__ == "pyarrow.lib"


class Shown(str):
    """How errors show a record batch: its size and schema on one line, not its values."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def shown(item: Any) -> Any:
    """``item`` as a ``UserFunctionError`` shows it: a record batch as ``Shown``, anything else as it is."""
    if not is_record_batch(item):
        return item
    fields = ", ".join(f"{f.name}: {f.type}" for f in item.schema)
    return Shown(f"<record batch of {item.num_rows} rows ({fields})>")


# ---- aggregate functions ---------------------------------------------------------------------------

FUNCTIONS = ("sum", "count", "min", "max", "mean")
"""The aggregate functions of ``KeyedArrowStream.aggregate``."""

_PARTS: dict[str, tuple[str, ...]] = {
    "sum": ("sum",), "count": ("count",), "min": ("min",), "max": ("max",), "mean": ("sum", "count"),
}
"""The partial aggregates (Arrow hash aggregate functions) each function is computed from."""
MERGE_IN_ARROW = {"sum": "sum", "count": "sum", "min": "min", "max": "max"}
"""How partials of one kind merge in Arrow: counts add up."""


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a + b


def _least(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None or a <= b else b


def _greatest(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None or a >= b else b


_MERGE_VALUES: dict[str, Callable[[Any, Any], Any]] = {"sum": _add, "count": _add, "min": _least, "max": _greatest}
"""How partials of one kind merge into an accumulator in Python (``None``: no value yet)."""


@dataclass(frozen=True, slots=True)
class Part:
    """One partial aggregate: ``function`` of ``column``, named ``<column>_<function>`` (Arrow's name)."""

    column: str
    function: str

    @property
    def name(self) -> str:
        return f"{self.column}_{self.function}"


@dataclass(frozen=True, slots=True)
class BatchAggregate:
    """What a keyed aggregation computes: ``specs`` are ``(column, function)`` pairs; ``parts`` the
    partial aggregates they need, each once. Picklable, pure: the operators hold one."""

    key: str
    specs: tuple[tuple[str, str], ...]
    parts: tuple[Part, ...]

    @classmethod
    def of(cls, key: str, specs: Sequence[tuple[str, str]]) -> BatchAggregate:
        parts: list[Part] = []
        for column, function in specs:
            for kind in _PARTS[function]:
                part = Part(column, kind)
                if part not in parts:
                    parts.append(part)
        return cls(key, tuple(specs), tuple(parts))

    def output_names(self) -> list[str]:
        return [f"{column}_{function}" for column, function in self.specs]

    def merges(self) -> list[Callable[[Any, Any], Any]]:
        return [_MERGE_VALUES[p.function] for p in self.parts]

    def plan(self) -> list[tuple[int, int]]:
        """Per spec, where its value is in an accumulator (one value per part): the index of its part,
        and ``-1``; for a mean, the indices of its sum and of its count."""
        index = {p: i for i, p in enumerate(self.parts)}
        return [(index[Part(c, "sum")], index[Part(c, "count")]) if f == "mean" else (index[Part(c, f)], -1)
                for c, f in self.specs]


class PartialAggregate:
    """The partial step (rule 5): a record batch → one row per key, with every partial aggregate.
    The ``map_batches`` function of the node in front of the keyed exchange (picklable)."""

    def __init__(self, aggregate: BatchAggregate) -> None:
        self.aggregate = aggregate

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        import pyarrow as pa

        if batch.num_rows == 0:
            return None
        agg = self.aggregate
        grouped = pa.Table.from_batches([batch]).group_by(agg.key, use_threads=False).aggregate(
            [(p.column, p.function) for p in agg.parts])
        names = [agg.key, *(p.name for p in agg.parts)]
        return pa.RecordBatch.from_arrays([grouped.column(n).combine_chunks() for n in names], names=names)


# ---- routing by a key column -----------------------------------------------------------------------

ROUTE_CACHE_KEYS = 1 << 16
"""Keys whose route a column key remembers (as ``flowstate.task.output`` does for records)."""


class ColumnKey:
    """The key of an Arrow keyed edge: the value of ``column``. ``split_batch`` routes the rows of
    record batches by the key group of each value (rule 4), on the exchange
    (``flowstate.task.output``) and for in-flight batches replayed at another parallelism
    (``flowstate.task.assignment``, rule 5); called on a Python record (a dict, as ``to_records``
    makes) it returns the record's value of the column."""

    def __init__(self, column: str) -> None:
        self.column = column
        self._routes: dict[Any, int] = {}

    def __getstate__(self) -> str:
        return self.column

    def __setstate__(self, column: str) -> None:
        self.column = column
        self._routes = {}

    def __call__(self, record: Any) -> Any:
        if is_record_batch(record):
            raise TypeError(f"a record batch keyed by column {self.column!r} is routed by split_batch, "
                            "not one record at a time")
        return record[self.column]

    def split_batch(self, batch: list[Any], route: list[int], max_parallelism: int, targets: int) -> list[list[Any]]:
        """The items of ``batch`` (record batches) for each of ``targets`` subtasks, by the key group
        of each row's key (``route``: key group → subtask). A record batch whose keys all go to one
        subtask goes there whole. Raises what the rules of keys raise for a value that is no key."""
        import pyarrow as pa
        import pyarrow.compute as pc

        buckets: list[list[Any]] = [[] for _ in range(targets)]
        routes = self._routes
        for item in batch:
            if not is_record_batch(item):
                raise TypeError(f"key_by({self.column!r}) expects pyarrow.RecordBatch items, got {type(item).__name__}")
            if item.num_rows == 0:
                continue
            column = item.column(self.column)
            distinct = pc.unique(column)
            chosen = []
            for key in distinct.to_pylist():
                target = routes.get(key)
                if target is None:
                    check_key(key)
                    data = key.encode("utf-8", "surrogatepass") if type(key) is str else stable_key_bytes(key)
                    target = route[((crc32(data) * GOLDEN) & 0xFFFFFFFF) * max_parallelism >> 32]
                    if len(routes) < ROUTE_CACHE_KEYS:
                        routes[key] = target
                chosen.append(target)
            first = chosen[0]
            if all(t == first for t in chosen):
                buckets[first].append(item)
                continue
            targets_of_keys = pa.array(chosen, pa.int32())
            if len(distinct) == item.num_rows:
                # Every row has a key of its own (a partial aggregate's rows): ``unique`` keeps the
                # order of first occurrence, so the keys' targets are the rows'.
                rows = targets_of_keys
            else:
                rows = pc.take(targets_of_keys, pc.index_in(column, value_set=distinct))
            for target in sorted(set(chosen)):
                buckets[target].append(item.filter(pc.equal(rows, target)))
        return buckets


# ---- IPC: record batches across processes ----------------------------------------------------------

def encode_ipc(batch: list[Any]) -> bytes | None:
    """The Arrow IPC stream of ``batch`` when every item is a record batch of one schema, else
    ``None`` (the caller pickles it)."""
    import pyarrow as pa

    schema = batch[0].schema
    for item in batch:
        if not is_record_batch(item) or not item.schema.equals(schema, check_metadata=True):
            return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for item in batch:
            writer.write_batch(item)
    return sink.getvalue().to_pybytes()


def decode_ipc(payload: memoryview) -> list[Any]:
    """The record batches of an IPC stream. The payload is copied once: the batches must not point
    into a buffer the frame reader reuses."""
    import pyarrow as pa

    with pa.ipc.open_stream(pa.py_buffer(bytes(payload))) as reader:
        return list(reader)
