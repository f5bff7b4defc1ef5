"""Keyed operators get their state from the backend their ``OperatorEnv`` names, snapshot it and
are rebuilt from it (``flowstate.operators.base``), with each backend."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.failpoints import Failpoints
from flowstate.operators.base import (
    KeyedProcessOperator,
    OperatorEnv,
    ReduceOperator,
)
from flowstate.state.backend import RestoredState, SnapshotParts, StateError
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.memory import HeapKeyedStateBackend
from flowstate.state.rocksdb import RocksDBBackendFactory, RocksDBKeyedStateBackend

from .conftest import Store, complete


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.seen = ctx.list_state("seen")

    def process(self, value, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        self.seen.add(value)
        yield (ctx.current_key, n, len(self.seen.get()))


def env(factory, subtask: int = 0, parallelism: int = 1) -> OperatorEnv:
    return OperatorEnv(subtask, parallelism, 128, True, Failpoints(), factory)


FACTORIES = {"heap": lambda tmp: HeapKeyedStateBackend,
             "rocksdb": lambda tmp: RocksDBBackendFactory(base_dir=str(tmp / "work"))}


@pytest.fixture(params=sorted(FACTORIES))
def factory(request, tmp_path: Path):
    return FACTORIES[request.param](tmp_path)


def words(n: int) -> list[str]:
    return [f"w{i % 7}" for i in range(n)]


def test_the_heap_backend_is_the_default():
    operator = KeyedProcessOperator("u", "count", OperatorEnv(0, 1, 128, True, Failpoints()), lambda r: r, Count())
    assert isinstance(operator.backend, HeapKeyedStateBackend)
    operator.close()


def test_a_keyed_process_operator_continues_from_its_snapshot(factory, tmp_path):
    store = Store(tmp_path / "store")
    first = KeyedProcessOperator("u", "count", env(factory), lambda r: r, Count())
    first.open(None)
    first.process_batch(words(20))
    state = complete(first.snapshot(1), store)
    after = first.process_batch(words(7))
    first.close()
    second = KeyedProcessOperator("u", "count", env(factory), lambda r: r, Count())
    second.open(state)
    assert second.process_batch(words(7)) == after
    second.close()


def test_a_reduce_operator_continues_from_its_snapshot_and_emits_every_reduced_value(factory, tmp_path):
    store = Store(tmp_path / "store")
    first = ReduceOperator("u", "sum", env(factory), lambda r: r[0], lambda a, b: (a[0], a[1] + b[1]))
    first.open(None)
    assert first.process_batch([("a", 1), ("b", 2), ("a", 3)]) == [("a", 1), ("b", 2), ("a", 4)]
    state = complete(first.snapshot(1), store)
    first.close()
    second = ReduceOperator("u", "sum", env(factory), lambda r: r[0], lambda a, b: (a[0], a[1] + b[1]))
    second.open(state)
    assert second.process_batch([("a", 10), ("c", 1)]) == [("a", 14), ("c", 1)]
    second.close()


def test_an_operator_takes_the_snapshot_parts_as_the_runtime_stores_them_and_a_list_after_a_rescale():
    stored = []
    for subtask in range(2):
        operator = KeyedProcessOperator("u", "count", env(HeapKeyedStateBackend, subtask, 2), lambda r: r, Count())
        operator.open(None)
        own = key_group_range(128, 2, subtask)
        operator.process_batch([w for w in words(30) if key_group_of(w, 128) in own])
        snapshot = operator.snapshot(1)
        stored.append(pickle.loads(pickle.dumps(snapshot.materialize())))
        operator.close()
    assert all(isinstance(parts, SnapshotParts) for parts in stored)
    single = KeyedProcessOperator("u", "count", env(HeapKeyedStateBackend), lambda r: r, Count())
    single.open(stored)
    assert single.process_batch(["w0", "w6"]) == [("w0", 6, 6), ("w6", 5, 5)]
    with pytest.raises(StateError, match="must be RestoredState or SnapshotParts, not dict"):
        KeyedProcessOperator("u", "count", env(HeapKeyedStateBackend), lambda r: r, Count()).open({"x": 1})


def test_closing_the_operator_closes_its_backend_even_when_the_function_fails_to_close(tmp_path):
    class Failing(Count):
        def close(self) -> None:
            raise RuntimeError("boom")

    operator = KeyedProcessOperator("u", "count", env(RocksDBBackendFactory(base_dir=str(tmp_path))), lambda r: r,
                                    Failing())
    operator.open(None)
    operator.process_batch(words(3))
    backend = operator.backend
    assert isinstance(backend, RocksDBKeyedStateBackend)
    with pytest.raises(RuntimeError, match="boom"):
        operator.close()
    assert not backend.directory.exists()


def test_restored_state_of_another_backend_fails_the_open_with_a_clear_error(tmp_path):
    store = Store(tmp_path / "store")
    heap = KeyedProcessOperator("u", "count", env(HeapKeyedStateBackend), lambda r: r, Count())
    heap.open(None)
    heap.process_batch(words(3))
    state = complete(heap.snapshot(1), store)
    rocks = KeyedProcessOperator("u", "count", env(RocksDBBackendFactory(base_dir=str(tmp_path))), lambda r: r,
                                 Count())
    with pytest.raises(StateError, match="rocksdb state backend cannot restore a snapshot of format 'heap-v2'"):
        rocks.open(RestoredState(state.data, state.files))
    rocks.close()


def test_the_identity_key_gives_what_a_key_function_computing_the_same_key_gives(factory):
    """``lambda r: r`` is not called (rule 4 of ``flowstate.state.keys``); ``(r,)[0]`` is: same output,
    and a record that is not a key fails as key_by either way."""
    outputs = []
    for key_fn, itself in ((lambda r: r, True), (lambda r: (r,)[0], False)):
        operator = KeyedProcessOperator("u", "count", env(factory), key_fn, Count())
        assert operator.key_is_record is itself
        operator.open(None)
        outputs.append([operator.process_batch(words(20)), operator.process_batch(words(9) + [("t", 1)])])
        with pytest.raises(fs.UserFunctionError, match="key_by"):
            operator.process_batch(["w1", ["not", "a", "key"]])
        operator.close()
    assert outputs[0] == outputs[1]


def test_a_running_reduce_keyed_by_the_identity_gives_what_a_computed_key_gives(factory):
    outputs = []
    for key_fn, itself in ((lambda r: r, True), (lambda r: (r,)[0], False)):
        operator = ReduceOperator("u", "longest", env(factory), key_fn, lambda a, b: a + b)
        assert operator.key_is_record is itself
        operator.open(None)
        outputs.append([operator.process_batch(words(20)), operator.process_batch(words(9))])
        with pytest.raises(fs.UserFunctionError, match="key_by"):
            operator.process_batch(["w1", ["not", "a", "key"]])
        operator.close()
    assert outputs[0] == outputs[1] and outputs[0][0]
