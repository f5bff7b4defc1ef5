"""The heap backend's copy-on-write snapshots: what the synchronous part does not copy, how the
asynchronous part writes, and when the layers fold back (``flowstate.state.memory``)."""

from __future__ import annotations

import pickle

import pytest

from flowstate.state.backend import RestoredState
from flowstate.state.memory import (
    HeapKeyedStateBackend,
    HeapListState,
    HeapValueState,
    heap_snapshot_entries,
)

from .conftest import dump


def backend_with(n: int, **kwargs) -> HeapKeyedStateBackend:
    backend = HeapKeyedStateBackend(128, range(128), **kwargs)
    count = backend.value_state("count")
    for i in range(n):
        backend.keys.current_key = i
        count.update(i)
    return backend


def test_the_synchronous_part_freezes_the_live_table_without_copying_it():
    backend = backend_with(10_000)
    table = backend._tables["count"]
    live = table.top
    snapshot = backend.snapshot()
    assert table.below == (live,) and table.below[0] is live
    assert table.top == {} and table.top is not live
    snapshot.release()


def test_writes_during_a_snapshot_go_to_the_top_layer_and_the_frozen_one_never_changes():
    backend = backend_with(100)
    count = backend.value_state("count")
    frozen = dict(backend._tables["count"].top)
    snapshot = backend.snapshot()
    backend.keys.current_key = 5
    count.update(-5)
    backend.keys.current_key = 6
    count.clear()
    backend.keys.current_key = 1000
    count.update(1000)
    table = backend._tables["count"]
    assert table.below[0] == frozen
    assert len(table.top) == 3
    assert backend.entry_count() == 100
    assert heap_snapshot_entries(snapshot.materialize().data, "count") == frozen
    snapshot.release()


def test_the_asynchronous_part_pickles_each_state_in_one_chunk():
    backend = backend_with(1050, chunk_entries=100)
    backend.list_state("empty")
    snapshot = backend.snapshot()
    parts = snapshot.materialize()
    snapshot.release()
    chunks = parts.data["states"]["count"]["chunks"]
    assert [pickle.loads(c) for c in chunks] == [{i: i for i in range(1050)}]
    assert parts.data["states"]["empty"] == {"kind": "list", "chunks": []}
    assert parts.files == {}
    restored = HeapKeyedStateBackend(128, range(128))
    restored.restore([RestoredState(parts.data)])
    assert dump(restored, {"count": "value"}) == {"count": {i: i for i in range(1050)}}


def test_chunk_entries_must_be_positive():
    with pytest.raises(ValueError, match="chunk_entries must be at least 1"):
        HeapKeyedStateBackend(128, range(128), chunk_entries=0)


def test_the_layers_fold_back_only_once_every_snapshot_is_done_and_the_state_objects_become_flat_again():
    backend = backend_with(10)
    count = backend.value_state("count")
    items = backend.list_state("items")
    first = backend.snapshot()
    second = backend.snapshot()
    assert type(count) is not HeapValueState and type(items) is not HeapListState
    backend.keys.current_key = 3
    count.update(33)
    first.materialize()
    backend.maybe_fold()
    assert len(backend._tables["count"].below) == 2, "the second snapshot still holds its layers"
    second.release()
    backend.maybe_fold()
    table = backend._tables["count"]
    assert table.below == () and table.top[3] == 33 and len(table.top) == 10
    assert type(count) is HeapValueState and type(items) is HeapListState
    assert count.value() == 33


def test_the_next_snapshot_folds_the_layers_of_finished_ones_at_the_latest():
    backend = backend_with(10)
    count = backend.value_state("count")
    first = backend.snapshot()
    backend.keys.current_key = 1
    count.update(11)
    first.materialize()
    second = backend.snapshot()  # no maybe_fold in between
    table = backend._tables["count"]
    assert len(table.below) == 1 and table.below[0][1] == 11
    second.release()


def test_a_state_created_while_a_snapshot_is_pending_is_in_the_next_snapshot_only():
    backend = backend_with(3)
    first = backend.snapshot()
    late = backend.list_state("late")
    backend.keys.current_key = "k"
    late.add(1)
    second = backend.snapshot()
    late.add(2)
    data2 = second.materialize().data
    data1 = first.materialize().data
    backend.maybe_fold()
    assert "late" not in data1["states"]
    assert heap_snapshot_entries(data2, "late") == {"k": [1]}
    assert late.get() == [1, 2]


def test_closing_drops_every_table():
    backend = backend_with(10)
    backend.close()
    assert backend.entry_count() == 0


def test_the_size_estimate_grows_with_the_state():
    small, large = backend_with(100), backend_with(10_000)
    assert 0 < small.state_size_bytes() < large.state_size_bytes()
