"""How a full heap snapshot encodes its entries (Step 3 of ``flowstate.state.memory``): every key and
value comes back of exactly the type it went in as, and snapshots written before, in chunks of
10,000 entries pickled with a memo, still restore, into the same key groups or fewer (a rescale)."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import itertools
import math
import pickle
from typing import Any

import pytest

from flowstate.state import heap_pickling, memory
from flowstate.state.backend import RestoredState
from flowstate.state.heap_pickling import fast_chunks
from flowstate.state.heap_tables import _ABSENT
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.memory import HeapKeyedStateBackend, heap_snapshot_entries

MAXP = 128


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Tag(bytes):
    pass


class Big(int):
    pass


Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass
class Reading:
    sensor: str
    values: list[float]


VALUES: list[Any] = [
    0, 1, -1, 255, 256, 65_536, 2**31, -(2**31) - 1, 2**63, -(2**64), 10**40,
    True, False, None,
    0.0, -0.0, 1.0, 2.5, 1e300, math.inf, -math.inf, math.nan,
    1 + 2j, "", "text", "ünïcödé ✓", "\ud800 lone surrogate", "x" * 300_000,
    b"", b"\x00\xff", b"y" * 300_000, bytearray(b"mutable bytes"),
    (), (1,), (1, "a", b"b", 2.0, None, True), [], [1, [2, (3, [4])]], ((1, 2), [3, 4]), [(1, 2), [3, 4]],
    {}, {"a": 1, 2: "b", (3, 4): [5.0], None: b"n", 1.5: True}, set(), {1, "a", (2, 3)}, frozenset({b"x", 4.5}),
    Colour.RED, Level.HIGH, Tag(b"tag"), Big(7), Point(1, (2, 3)), Reading("s1", [1.0, -0.0]),
    datetime.date(2024, 2, 29), datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
    datetime.timedelta(days=-1, microseconds=1), decimal.Decimal("-0.000"), fractions.Fraction(1, 3),
    range(3, 9, 2), collections.OrderedDict([("b", 1), ("a", 2)]), collections.Counter("abca"),
    collections.deque([1, 2]),
]
"""Values of every kind a job may keep: ones that plain-data encodings (msgpack, marshal) mistake
for others (bool/int/float, tuple/list, str/bytes, bytearray/bytes, subclasses of each) included."""

KEYS: list[Any] = [
    None, True, 2, -(2**70), 2.5, -1.5, "s", "", b"b", b"", datetime.date(2020, 1, 1),
    ("a", 1, (2.5, None, b"c")), (), Colour.RED, Level.HIGH, Tag(b"k"), Point("p", 1),
]
"""A key of every kind ``flowstate.state.keys`` allows, subclasses (which count as their plain
value but are stored as given) included."""


def exact(a: Any, b: Any) -> bool:
    """``a == b``, and every object inside each of the same type, in the same order (floats by
    ``repr``, so that NaN and -0.0 count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (float, complex)):
        return repr(a) == repr(b)
    if isinstance(a, (list, tuple, collections.deque)):
        return len(a) == len(b) and all(exact(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return exact(list(a), list(b)) and all(exact(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        return exact(sorted(a, key=repr), sorted(b, key=repr))
    if dataclasses.is_dataclass(a):
        return all(exact(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def test_exact_tells_apart_what_equality_does_not():
    assert not exact(1, True) and not exact(1, 1.0) and not exact((1,), [1]) and not exact(b"a", bytearray(b"a"))
    assert not exact(-0.0, 0.0) and exact(math.nan, math.nan) and not exact({1: "a", 2: "b"}, {2: "b", 1: "a"})
    assert not exact([Level.HIGH], [3]) and not exact({"k": Tag(b"t")}, {"k": b"t"})


def round_trip(backend: HeapKeyedStateBackend, groups: range = range(MAXP)) -> dict[str, dict[Any, Any]]:
    """The tables of a fresh backend of ``groups`` restored from a full snapshot of ``backend``,
    through the bytes of a pickled ``data`` (as a task state file stores it)."""
    snapshot = backend.snapshot()
    data = pickle.loads(pickle.dumps(snapshot.materialize().data, protocol=pickle.HIGHEST_PROTOCOL))
    snapshot.release()
    restored = HeapKeyedStateBackend(MAXP, groups)
    restored.restore([RestoredState(data)])
    return {name: table.top for name, table in restored._tables.items()}


def filled(keys: list[Any], values: list[Any]) -> HeapKeyedStateBackend:
    backend = HeapKeyedStateBackend(MAXP, range(MAXP))
    value, items, entries = backend.value_state("value"), backend.list_state("items"), backend.map_state("map")
    for key, v in zip(keys, itertools.cycle(values)):
        backend.keys.current_key = key
        value.update(v)
        items.update(values)
        entries.put_all({i: x for i, x in enumerate(values)})
    return backend


@pytest.mark.parametrize("value", VALUES, ids=[f"{type(v).__name__}-{i}" for i, v in enumerate(VALUES)])
def test_every_value_comes_back_of_exactly_its_type(value):
    backend = filled(["k"], [value])
    tables = round_trip(backend)
    assert exact(tables["items"], {"k": [value]}) and exact(tables["map"], {"k": {0: value}})
    assert exact(tables["value"], {} if value is None else {"k": value})  # None clears a value state


def test_values_of_every_type_together_in_each_kind_of_state_come_back_exactly():
    keys = [f"key-{i}" for i in range(3 * len(VALUES))]
    backend = filled(keys, VALUES)
    expected = {name: dict(table.top) for name, table in backend._tables.items()}
    assert exact(round_trip(backend), expected)
    # Hundreds of frozensets: one fast-mode call cannot pickle those states (CPython gh-146059).
    assert backend._in_chunks == {"items", "map"}


def test_a_state_one_call_cannot_pickle_is_pickled_in_chunks_from_then_on(monkeypatch):
    tried: list[Any] = []
    monkeypatch.setattr(memory, "fast_chunks", lambda entries: tried.append(entries) or fast_chunks(entries))
    backend = HeapKeyedStateBackend(MAXP, range(MAXP), chunk_entries=4)
    state, plain = backend.value_state("v"), backend.value_state("plain")
    for i in range(10):
        backend.keys.current_key = i
        plain.update(i)
        state.update([frozenset({i})] * 60)
    for _ in range(2):
        snapshot = backend.snapshot()
        data = snapshot.materialize().data
        snapshot.release()
        assert [len(pickle.loads(c)) for c in data["states"]["v"]["chunks"]] == [4, 4, 2]
        assert len(data["states"]["plain"]["chunks"]) == 1
        assert backend._in_chunks == {"v"}
        assert heap_snapshot_entries(data, "v") == {i: [frozenset({i})] * 60 for i in range(10)}
    assert [len(entries) for entries in tried] == [10, 10, 10], "v once, plain twice"


def test_every_kind_of_key_comes_back_of_exactly_its_type_and_in_its_order():
    backend = filled(KEYS, [1])
    tables = round_trip(backend)
    assert exact(list(tables["value"]), KEYS)


@pytest.mark.parametrize("subtask", [0, 1])
def test_a_rescale_keeps_exactly_the_keys_of_its_key_groups_of_exactly_their_types(subtask):
    keys = KEYS + [f"word-{i}" for i in range(200)]
    groups = key_group_range(MAXP, 2, subtask)
    backend = filled(keys, VALUES)
    everything = {name: dict(table.top) for name, table in backend._tables.items()}
    tables = round_trip(backend, groups)
    for name, entries in everything.items():
        mine = {k: v for k, v in entries.items() if key_group_of(k, MAXP) in groups}
        assert mine and len(mine) < len(entries)
        assert exact(tables[name], mine)


def test_a_cyclic_value_is_pickled_with_a_memo_and_comes_back_cyclic():
    backend = HeapKeyedStateBackend(MAXP, range(MAXP))
    state = backend.value_state("v")
    loop: list[Any] = [1]
    loop.append(loop)
    backend.keys.current_key = "k"
    state.update(loop)
    back = round_trip(backend)["v"]["k"]
    assert back[0] == 1 and back[1] is back


def test_the_view_of_stacked_layers_is_written_with_deletes_and_rewrites_applied():
    backend = HeapKeyedStateBackend(MAXP, range(MAXP))
    count = backend.value_state("count")
    for i in range(10):
        backend.keys.current_key = i
        count.update(i)
    first = backend.snapshot()
    backend.keys.current_key = 1
    count.clear()
    backend.keys.current_key = 2
    count.clear()
    backend.keys.current_key = 3
    count.update(33)
    second = backend.snapshot()
    backend.keys.current_key = 2
    count.update(22)
    backend.keys.current_key = 10
    count.update(10)
    third = backend.snapshot()
    assert backend._tables["count"].below[1][1] is _ABSENT, "the case under test: a tombstone in a layer"
    expected = {0: 0, 2: 22, 3: 33, **{i: i for i in range(4, 11)}}
    assert heap_snapshot_entries(third.materialize().data, "count") == expected
    assert heap_snapshot_entries(second.materialize().data, "count") == {0: 0, 3: 33, **{i: i for i in range(4, 10)}}
    assert heap_snapshot_entries(first.materialize().data, "count") == {i: i for i in range(10)}


def test_a_large_state_is_pickled_frame_by_frame_into_python_code(monkeypatch):
    """What lets the task thread take the interpreter lock during one pickler call (Step 3)."""
    writes: list[int] = []

    class Counted(heap_pickling._Frames):
        __slots__ = ()

        def write(self, data: bytes) -> int:
            writes.append(len(data))
            return super().write(data)

    monkeypatch.setattr(heap_pickling, "_Frames", Counted)
    backend = filled([f"key-{i}" for i in range(50_000)], [1])
    snapshot = backend.snapshot()
    snapshot.materialize()
    snapshot.release()
    assert len(writes) > 3 * len(backend._tables)
    assert max(writes) < 1 << 20


# ---- snapshots written before: chunks of 10,000 entries, pickled with a memo ----------------------


def written_before(backend: HeapKeyedStateBackend, size: int = 10_000) -> dict[str, Any]:
    """The ``data`` the asynchronous part wrote before it pickled each state in one chunk."""
    states = {}
    for name, table in backend._tables.items():
        entries = iter(table.top.items())
        chunks = []
        while chunk := dict(itertools.islice(entries, size)):
            chunks.append(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
        states[name] = {"kind": table.kind.value, "chunks": chunks}
    return {"format": "heap-v2", "max_parallelism": MAXP, "key_groups": [0, MAXP], "states": states}


@pytest.mark.parametrize("parallelism", [1, 3])
def test_a_snapshot_written_before_in_many_chunks_still_restores_exactly(parallelism):
    keys = KEYS + [f"word-{i}" for i in range(25_000)]
    backend = filled(keys, VALUES[:20])
    data = written_before(backend)
    assert len(data["states"]["value"]["chunks"]) == 3
    restored_keys: list[Any] = []
    for subtask in range(parallelism):
        groups = key_group_range(MAXP, parallelism, subtask)
        restored = HeapKeyedStateBackend(MAXP, groups)
        restored.restore([RestoredState(data)])
        for name, table in backend._tables.items():
            mine = {k: v for k, v in table.top.items() if key_group_of(k, MAXP) in groups}
            assert exact(restored._tables[name].top, mine)
        restored_keys.extend(restored._tables["value"].top)
    assert sorted(map(repr, restored_keys)) == sorted(map(repr, backend._tables["value"].top))
