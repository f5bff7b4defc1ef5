"""Incremental heap snapshots (``flowstate.state.heap_chain``): when a snapshot writes a base or a
delta, what a delta holds, and, against a dict model, that any sequence of puts, deletes and
checkpoints (completed, aborted, or still running when the next one is taken) restores from every
completed checkpoint exactly the state at its barrier, from the base and deltas of its chain."""

from __future__ import annotations

import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowstate.state.heap_chain import Chain, ChainFile, ChainPolicy, FileRole, next_role, read_file
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.memory import CHAIN_FORMAT, HeapKeyedStateBackend

from .conftest import MAXP, Store, complete


def chain(base: int, *deltas: int) -> Chain:
    return Chain(ChainFile("b", FileRole.BASE, base), tuple(ChainFile(f"d{i}", FileRole.DELTA, n)
                                                           for i, n in enumerate(deltas)))


# ---- rule 3, pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("previous", "changed", "policy", "role"), [
    (None, 0, ChainPolicy(), FileRole.BASE),                                  # nothing to extend
    (chain(100), 10, ChainPolicy(), FileRole.DELTA),
    (chain(100, 10, 10), 10, ChainPolicy(max_deltas=2), FileRole.BASE),       # as many deltas as allowed
    (chain(100, 10), 10, ChainPolicy(max_deltas=2), FileRole.DELTA),
    (chain(100, 20, 20, 20, 20, 21), 5, ChainPolicy(max_delta_ratio=1.0), FileRole.BASE),  # deltas outgrew the base
    (chain(100, 20, 20, 20, 20, 20), 5, ChainPolicy(max_delta_ratio=1.0), FileRole.DELTA),
    (chain(100), 26, ChainPolicy(max_changed_fraction=0.25), FileRole.BASE),  # a base costs less than this delta
    (chain(100), 25, ChainPolicy(max_changed_fraction=0.25), FileRole.DELTA),
    (chain(100), 0, ChainPolicy(max_deltas=0), FileRole.BASE),                # full snapshots in files
    (chain(0), 1, ChainPolicy(max_changed_fraction=2.0), FileRole.BASE),      # an empty base: any change outgrows it
])
def test_a_snapshot_writes_a_base_or_a_delta_as_the_policy_says(previous, changed, policy, role):
    assert next_role(previous, changed, policy) is role


def test_a_chain_grows_by_deltas_and_starts_again_at_a_base():
    grown = chain(100).extended(ChainFile("d", FileRole.DELTA, 5))
    assert grown.keys == ["b", "d"]
    assert grown.extended(ChainFile("b2", FileRole.BASE, 105)).keys == ["b2"]


def test_a_policy_refuses_negative_bounds():
    with pytest.raises(ValueError, match="max_deltas"):
        ChainPolicy(max_deltas=-1)
    with pytest.raises(ValueError, match="max_delta_ratio"):
        ChainPolicy(max_delta_ratio=-0.5)
    with pytest.raises(ValueError, match="max_changed_fraction"):
        ChainPolicy(max_changed_fraction=-1)


# ---- what the files hold -----------------------------------------------------------------------------


def incremental(tmp_path: Path, groups: range = range(MAXP), **policy: Any) -> HeapKeyedStateBackend:
    return HeapKeyedStateBackend(MAXP, groups, incremental=True, base_dir=tmp_path / "work",
                                 policy=ChainPolicy(**policy))


def test_a_delta_holds_exactly_the_keys_changed_and_deleted_since_the_last_snapshot(tmp_path):
    store = Store(tmp_path / "store")
    backend = incremental(tmp_path)
    count = backend.value_state("count")
    for i in range(1000):
        backend.keys.current_key = i
        count.update(i)
    first = complete(backend.snapshot(), store)
    backend.maybe_fold()
    for i in range(10):
        backend.keys.current_key = i
        count.update(count.value() + 1)   # read below, written to top
    backend.keys.current_key = 500
    count.clear()
    backend.keys.current_key = 7777
    assert count.value() is None          # a read of a key without a value changes nothing
    second = complete(backend.snapshot(), store)
    assert first.data["format"] == CHAIN_FORMAT and len(first.data["chain"]) == 1
    assert second.data["chain"][0] == first.data["chain"][0] and len(second.data["chain"]) == 2
    delta = read_file(second.files[second.data["chain"][1]])
    assert delta.role is FileRole.DELTA
    _, puts, deleted = delta.states["count"]
    assert {k: v for chunk in puts for k, v in chunk.items()} == {i: i + 1 for i in range(10)}
    assert deleted == [500]
    assert store.uploads == 2             # the base was stored once
    backend.close()


def test_a_snapshot_after_one_released_unwritten_writes_a_base(tmp_path):
    store = Store(tmp_path / "store")
    backend = incremental(tmp_path)
    value = backend.value_state("v")
    backend.keys.current_key = "a"
    value.update(1)
    complete(backend.snapshot(), store)
    value.update(2)
    backend.snapshot().release()          # aborted before its delta was written
    value.update(3)
    third = complete(backend.snapshot(), store)
    assert len(third.data["chain"]) == 1 and third.data["chain"][0].endswith("-base")
    backend.close()


def test_close_deletes_the_working_directory_once_every_snapshot_is_released(tmp_path):
    backend = incremental(tmp_path)
    backend.value_state("v")
    snapshot = backend.snapshot()
    snapshot.materialize()
    backend.close()
    assert [p.name for p in (tmp_path / "work").iterdir()]  # the snapshot's files are still in use
    snapshot.release()
    assert list((tmp_path / "work").iterdir()) == []


def test_a_value_read_and_changed_in_place_between_two_snapshots_is_in_the_next_delta(tmp_path):
    # A mutable value handed out may be changed in place (rule 2 of flowstate.state.values): the read
    # counts as a change of its key.
    store = Store(tmp_path / "store")
    backend = incremental(tmp_path)
    lists = backend.value_state("list")
    for key in range(100):
        backend.keys.current_key = key
        lists.update([key])
    complete(backend.snapshot(), store)
    backend.maybe_fold()
    backend.keys.current_key = 7
    lists.value().append("more")          # no update(): changed in place
    second = complete(backend.snapshot(), store)
    assert len(second.data["chain"]) == 2  # a base and a delta
    backend.close()
    fresh = HeapKeyedStateBackend(MAXP, range(MAXP))
    fresh.restore([second])
    fresh.keys.current_key = 7
    assert fresh.value_state("list").value() == [7, "more"]
    fresh.close()


def test_a_key_deleted_under_one_running_snapshot_and_written_again_under_the_next_is_in_the_next_base(tmp_path):
    # Found by the model below: a base merged every layer and then removed every key that any layer
    # above the lowest deleted, so a key deleted in one layer and written again in a later one was lost.
    store = Store(tmp_path / "store")
    backend = incremental(tmp_path, max_deltas=0)
    counts = backend.value_state("count")
    first = backend.snapshot()
    backend.keys.current_key = 0
    counts.clear()                        # a tombstone in the layer the next snapshot freezes
    second = backend.snapshot()
    complete(first, store)
    backend.maybe_fold()                  # the second still runs: the layers stay
    counts.update(5)
    third = backend.snapshot()
    complete(second, store)
    restored = complete(third, store)
    backend.close()
    fresh = HeapKeyedStateBackend(MAXP, range(MAXP))
    fresh.restore([restored])
    state = fresh.value_state("count")
    fresh.keys.current_key = 0
    assert state.value() == 5
    fresh.close()


def test_values_holding_a_buffer_come_back_with_their_types_from_a_chain_file(tmp_path):
    # marshal writes any object with the buffer protocol as bytes: such values must be pickled.
    values = {0: bytearray(b"ab"), 1: [1, bytearray(b"c")], 2: {"k": array.array("i", [1, 2])},
              3: b"plain", 4: (1, "x", 2.5), 5: {1: [None, True]}}
    store = Store(tmp_path / "store")
    backend = incremental(tmp_path)
    state = backend.value_state("v")
    for key, value in values.items():
        backend.keys.current_key = key
        state.update(value)
    restored = complete(backend.snapshot(), store)
    backend.close()
    fresh = HeapKeyedStateBackend(MAXP, range(MAXP))
    fresh.restore([restored])
    state = fresh.value_state("v")
    for key, value in values.items():
        fresh.keys.current_key = key
        back = state.value()
        assert back == value and type(back) is type(value)
    fresh.keys.current_key = 1
    assert type(state.value()[1]) is bytearray
    fresh.keys.current_key = 2
    assert type(state.value()["k"]) is array.array
    fresh.close()


# ---- the model ---------------------------------------------------------------------------------------

KEYS = st.integers(0, 6)
CHECKPOINT = st.tuples(st.just("checkpoint"), st.sampled_from(["complete", "complete", "abort", "leave running"]))
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, st.integers(0, 99)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("append"), KEYS, st.integers(0, 9)),   # a list read, changed in place
    CHECKPOINT, CHECKPOINT,
    st.tuples(st.just("finish"), st.sampled_from(["complete", "abort"])),
    st.tuples(st.just("fold")),
    st.tuples(st.just("read"), KEYS),
), min_size=4, max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, max_deltas=st.integers(0, 4), ratio=st.sampled_from([0.2, 1.0, 5.0]),
       fraction=st.sampled_from([0.25, 10.0]), split=st.booleans())
def test_restore_from_any_completed_checkpoint_equals_the_model(tmp_path_factory, ops, max_deltas, ratio, fraction,
                                                                split):
    tmp = tmp_path_factory.mktemp("chain")
    store = Store(tmp / "store")
    backend = incremental(tmp, max_deltas=max_deltas, max_delta_ratio=ratio, max_changed_fraction=fraction)
    counts, lists = backend.value_state("count"), backend.value_state("list")
    model: dict[str, dict[int, Any]] = {"count": {}, "list": {}}
    running: list[tuple[Any, dict[str, dict[int, Any]]]] = []
    completed = []
    longest = 0

    def finish(how: str) -> None:
        nonlocal longest
        snapshot, expected = running.pop(0)
        if how == "abort":
            snapshot.release()
            return
        restored = complete(snapshot, store)
        longest = max(longest, len(restored.data["chain"]))
        completed.append((restored, expected))
        backend.maybe_fold()  # as the task does before its next batch: flat again, tracking changes

    for op in ops:
        match op:
            case ("put", key, value):
                backend.keys.current_key = key
                counts.update(value)
                model["count"][key] = value
            case ("delete", key):
                backend.keys.current_key = key
                counts.clear()
                model["count"].pop(key, None)
            case ("append", key, item):
                backend.keys.current_key = key
                found = lists.value()
                if found is None:
                    lists.update([item])
                else:
                    found.append(item)        # stored without update (rule 2 of state.values)
                model["list"][key] = [*model["list"].get(key, []), item]
            case ("checkpoint", how):
                running.append((backend.snapshot(), {n: {k: (list(v) if isinstance(v, list) else v)
                                                         for k, v in e.items()} for n, e in model.items()}))
                if how != "leave running":
                    finish(how)
            case ("finish", how) if running:
                finish(how)
            case ("fold",):
                backend.maybe_fold()
            case ("read", key):
                backend.keys.current_key = key
                assert (counts.value(), lists.value()) == (model["count"].get(key), model["list"].get(key))
    while running:
        finish("complete")
    backend.close()
    assert longest <= max_deltas + 1
    parallelism = 2 if split else 1
    for restored, expected in completed:
        for subtask in range(parallelism):
            groups = key_group_range(MAXP, parallelism, subtask)
            fresh = HeapKeyedStateBackend(MAXP, groups)
            fresh.restore([restored])
            got = {}
            for name in expected:
                state = fresh.value_state(name)
                got[name] = {}
                for key in fresh.state_keys(name):
                    fresh.keys.current_key = key
                    got[name][key] = state.value()
            assert got == {n: {k: v for k, v in e.items() if key_group_of(k, MAXP) in groups}
                           for n, e in expected.items()}
            fresh.close()
