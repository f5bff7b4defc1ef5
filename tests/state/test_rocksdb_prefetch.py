"""Prefetch of the RocksDB backend (rules 7 and 8 of ``flowstate.state.rocksdb.cache``, rule 8 of
``flowstate.state.backend``): a prefetch changes nothing that a read returns or a snapshot holds,
looks in the frozen layers before RocksDB, caches absent rows without writing them, and the keyed
operators hand it a batch's keys without changing which error a batch fails with."""

from __future__ import annotations

from typing import Any

import pytest

import flowstate as fs
from flowstate.errors import UserFunctionError
from flowstate.failpoints import Failpoints
from flowstate.operators.base import KeyedProcessOperator, OperatorEnv, ReduceOperator
from flowstate.state.rocksdb import RocksDBBackendFactory, RocksDBKeyedStateBackend
from flowstate.state.rocksdb.cache import ABSENT, PrefetchPolicy

from .conftest import complete, dump

MAXP = 128


@pytest.fixture
def backends(tmp_path):
    built = []

    def build(**kwargs: Any) -> RocksDBKeyedStateBackend:
        backend = RocksDBKeyedStateBackend(MAXP, range(MAXP), base_dir=tmp_path / "work", **kwargs)
        built.append(backend)
        return backend

    yield build
    for backend in built:
        backend.close()


def prefetch(backend: RocksDBKeyedStateBackend, keys: list[Any]) -> None:
    assert backend.wants_prefetch(len(keys))
    backend.prefetch(keys)


def reads(backend: RocksDBKeyedStateBackend, keys: list[Any]) -> list[tuple[Any, Any, Any]]:
    value = backend.value_state("v", default="none")
    total = backend.reducing_state("r", lambda a, b: a + b)
    out = []
    for key in keys:
        backend.keys.current_key = key
        out.append((key, value.value(), total.get()))
    return out


def fill(backend: RocksDBKeyedStateBackend, keys: list[Any], start: int) -> None:
    value = backend.value_state("v", default="none")
    total = backend.reducing_state("r", lambda a, b: a + b)
    for n, key in enumerate(keys):
        backend.keys.current_key = key
        value.update(start + n)
        total.add(start + n)


KEYS = ["a", "b", 3, ("t", 1), "é", b"x"]


def test_a_prefetch_then_reads_give_what_reads_without_it_give(backends):
    plain, fetched = backends(prefetch="never"), backends(prefetch="always")
    for backend in (plain, fetched):
        fill(backend, KEYS[:4], 10)
        for column in backend._columns.values():
            column.flush()  # in RocksDB only
        fill(backend, ["b"], 100)  # and one newer in the top layer
    prefetch(fetched, [*KEYS, "missing", "a"])
    assert fetched._columns["v"].objects[fetched._keys.prefixes(["b"])[0]] == 100, "a cached row is kept"
    assert reads(fetched, [*KEYS, "missing"]) == reads(plain, [*KEYS, "missing"])
    assert not plain.wants_prefetch(10)


def test_a_prefetch_reads_a_row_from_the_frozen_layers_before_rocksdb(backends, store):
    backend = backends(prefetch="always")
    fill(backend, ["old", "gone", "same"], 1)
    for column in backend._columns.values():
        column.flush()  # RocksDB: old=1, gone=2, same=3
    fill(backend, ["old"], 50)  # newer than RocksDB, in the layer the snapshot freezes
    backend.keys.current_key = "gone"
    backend.value_state("v").clear()
    backend.reducing_state("r", lambda a, b: a + b).clear()
    snapshot = backend.snapshot()  # the cut is pending: RocksDB still has old=1 and gone=2
    prefetch(backend, ["old", "gone", "same", "new"])
    assert reads(backend, ["old", "gone", "same", "new"]) == [
        ("old", 50, 51), ("gone", "none", None), ("same", 3, 3), ("new", "none", None)]
    state = complete(snapshot, store)
    restored = backends()
    restored.restore([state])
    assert dump(restored, {"v": "value"}) == {"v": {"old": 50, "same": 3}}


def test_a_changed_in_place_object_a_prefetch_copied_from_a_frozen_layer_stays_out_of_the_snapshot(
        backends, store):
    backend = backends(prefetch="always")
    bag = backend.value_state("bag")
    backend.keys.current_key = "k"
    bag.update(["at the barrier"])
    snapshot = backend.snapshot()
    prefetch(backend, ["k"])
    bag.value().append("after")  # stored (rule 2), but not in the snapshot
    restored = backends()
    restored.restore([complete(snapshot, store)])
    assert dump(restored, {"bag": "value"}) == {"bag": {"k": ["at the barrier"]}}
    assert dump(backend, {"bag": "value"}) == {"bag": {"k": ["at the barrier", "after"]}}


def test_writes_after_a_prefetch_win_and_reach_the_next_snapshot(backends, store):
    backend = backends(prefetch="always")
    fill(backend, ["a", "b"], 1)
    backend.snapshot().release()
    prefetch(backend, ["a", "b", "c"])
    fill(backend, ["b", "c"], 7)
    assert reads(backend, ["a", "b", "c"]) == [("a", 1, 1), ("b", 7, 9), ("c", 8, 8)]
    restored = backends()
    restored.restore([complete(backend.snapshot(), store)])
    assert dump(restored, {"v": "value", "r": "reducing"}) == {
        "v": {"a": 1, "b": 7, "c": 8}, "r": {"a": 1, "b": 9, "c": 8}}


def test_an_absent_row_is_cached_read_once_and_never_written(backends):
    backend = backends(prefetch="never")
    value = backend.value_state("v", default=0)
    column = backend._columns["v"]
    backend.keys.current_key = "nobody"
    assert value.value() == 0 and column.misses == 1
    assert value.value() == 0 and column.misses == 1, "the second read hits the negative entry"
    assert list(column.objects.values()) == [ABSENT]
    column.flush()
    assert list(column.cf.items()) == [] and backend.state_keys("v") is not None
    assert list(backend.state_keys("v")) == []


def test_an_absent_row_in_a_frozen_layer_reads_as_absent_and_a_later_write_is_kept(backends, store):
    backend = backends(prefetch="always")
    reads(backend, [])  # the states
    prefetch(backend, ["x"])  # absent: cached as such, then frozen
    assert set(backend._columns["v"].objects.values()) == {ABSENT}
    snapshot = backend.snapshot()
    assert reads(backend, ["x"]) == [("x", "none", None)]
    fill(backend, ["x"], 5)
    restored = backends()
    restored.restore([complete(snapshot, store)])
    assert dump(restored, {"v": "value"}) == {"v": {}}
    assert reads(backend, ["x"]) == [("x", 5, 5)]


def test_list_and_map_states_are_not_prefetched(backends):
    backend = backends(prefetch="always")
    backend.list_state("l")
    backend.map_state("m")
    assert not backend.wants_prefetch(4)


def test_the_policy_prefetches_while_batches_miss_and_probes_now_and_then():
    policy = PrefetchPolicy()
    assert not policy.before_batch(100, 0), "nothing known yet"
    assert policy.before_batch(100, 13), "13 of 100 records read RocksDB"
    decisions = [policy.before_batch(100, 90) for _ in range(PrefetchPolicy.PROBE_EVERY * 2)]
    assert decisions.count(False) == 2, "one probe every PROBE_EVERY batches"
    assert not policy.before_batch(100, 12), "fewer than 1 in 8 missed"
    policy.before_batch(0, 50)
    assert not policy.before_batch(100, 50), "an empty batch tells nothing: a batch must miss again"


def test_the_backend_turns_prefetching_on_and_off_from_the_rows_it_reads(backends):
    backend = backends()
    keys = [f"k{i}" for i in range(64)]
    fill(backend, keys, 0)
    for column in backend._columns.values():
        column.flush()
    assert not backend.wants_prefetch(64)
    reads(backend, keys)  # every row from RocksDB, one at a time
    assert backend.wants_prefetch(64)
    backend.prefetch(keys)  # nothing left to read: every row is cached now
    assert reads(backend, keys)[:1] == [("k0", 0, 0)]
    assert not backend.wants_prefetch(64), "the prefetch read no row: stop"


# ---- the keyed operators ----------------------------------------------------------------------------


class Count(fs.KeyedProcessFunction):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, value: Any, ctx: fs.RuntimeContext):  # type: ignore[no-untyped-def]
        self.seen.append(value)
        n = self.count.value() + 1
        self.count.update(n)
        yield (value, n)


def env(tmp_path, prefetch: str) -> OperatorEnv:
    return OperatorEnv(0, 1, MAXP, True, Failpoints(),
                       state_backend=RocksDBBackendFactory(base_dir=str(tmp_path / "work"), prefetch=prefetch))


def key_of(record: Any) -> Any:
    if record == "boom":
        raise ValueError("no key")
    return [] if record == "list" else record


@pytest.mark.parametrize("prefetch_mode", ["always", "never"])
@pytest.mark.parametrize("bad", ["boom", "list"])
def test_a_key_error_fails_the_batch_at_its_record_after_the_records_before_it(tmp_path, prefetch_mode, bad):
    operator = KeyedProcessOperator("u", "count", env(tmp_path, prefetch_mode), key_of, Count([]))
    operator.open(None)
    try:
        assert operator.process_batch(["a", "b", "a"]) == [("a", 1), ("b", 1), ("a", 2)]
        with pytest.raises(UserFunctionError) as raised:
            operator.process_batch(["a", "c", bad, "d"])
        assert (raised.value.operator, raised.value.record) == ("key_by", bad)
        assert operator.fn.seen == ["a", "b", "a", "a", "c"]  # the subtask's copy of the function
    finally:
        operator.close()


@pytest.mark.parametrize("prefetch_mode", ["always", "never"])
def test_the_operators_give_the_same_output_with_and_without_prefetch(tmp_path, prefetch_mode):
    records = [f"w{i % 37}" for i in range(500)]
    process = KeyedProcessOperator("u", "count", env(tmp_path / "p", prefetch_mode), lambda r: r, Count([]))
    reduce = ReduceOperator("r", "reduce", env(tmp_path / "r", prefetch_mode), lambda r: r[0], lambda a, b: a + b)
    process.open(None)
    reduce.open(None)
    try:
        counted = [record for i in range(0, 500, 64) for record in process.process_batch(records[i:i + 64])]
        reduced = [record for i in range(0, 500, 64) for record in reduce.process_batch(records[i:i + 64])]
    finally:
        process.close()
        reduce.close()
    seen: dict[str, int] = {}
    expected = []
    for record in records:
        seen[record] = seen.get(record, 0) + 1
        expected.append((record, seen[record]))
    assert counted == expected
    sums: dict[str, str] = {}
    for record in records:
        sums[record[0]] = sums[record[0]] + record if record[0] in sums else record
    assert reduced[-1] == sums["w"]
