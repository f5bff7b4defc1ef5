"""Conformance of keyed state backends: every backend must pass this suite.

Parametrized over ``BACKENDS``; a new backend is done when it passes.
"""

from __future__ import annotations

import pickle

import pytest

from flowstate.functions import RuntimeContext
from flowstate.state.backend import StateError, StateKind
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.memory import HeapKeyedStateBackend

BACKENDS = {"heap": HeapKeyedStateBackend}
MAXP = 128


@pytest.fixture(params=sorted(BACKENDS))
def make(request):
    cls = BACKENDS[request.param]

    def build(parallelism: int = 1, subtask: int = 0):
        return cls(MAXP, key_group_range(MAXP, parallelism, subtask))

    return build


def ctx_for(backend) -> RuntimeContext:
    return RuntimeContext("op", 0, 1, backend)


def test_value_state_is_per_key_and_defaults_for_unseen_keys(make):
    backend = make()
    ctx = ctx_for(backend)
    count = ctx.value_state("count", default=0)
    backend.keys.current_key = "a"
    count.update(count.value() + 1)
    count.update(count.value() + 1)
    backend.keys.current_key = "b"
    assert count.value() == 0
    count.update(5)
    backend.keys.current_key = "a"
    assert count.value() == 2
    count.update(None)
    assert count.value() == 0


def test_list_map_and_reducing_state_keep_entries_per_key(make):
    backend = make()
    ctx = ctx_for(backend)
    items = ctx.list_state("items")
    seen = ctx.map_state("seen")
    total = ctx.reducing_state("total", lambda a, b: a + b)
    for key, value in [("x", 1), ("y", 10), ("x", 2)]:
        backend.keys.current_key = key
        items.add(value)
        seen.put(value, True)
        total.add(value)
    backend.keys.current_key = "x"
    assert items.get() == [1, 2]
    assert sorted(seen.keys()) == [1, 2] and seen.contains(2) and not seen.contains(10)
    assert total.get() == 3
    seen.remove(1)
    seen.remove(2)
    assert seen.is_empty()
    backend.keys.current_key = "y"
    assert items.get() == [10] and total.get() == 10


def test_asking_for_one_state_name_with_two_kinds_is_refused(make):
    backend = make()
    backend.table("s", StateKind.VALUE)
    with pytest.raises(StateError, match="'s' is value state"):
        backend.table("s", StateKind.LIST)


def test_a_snapshot_is_not_changed_by_later_updates(make):
    backend = make()
    ctx = ctx_for(backend)
    count, items = ctx.value_state("count"), ctx.list_state("items")
    backend.keys.current_key = "k"
    count.update(1)
    items.add("a")
    snapshot = backend.snapshot()
    count.update(2)
    items.add("b")
    state = pickle.loads(pickle.dumps(snapshot.materialize()))
    restored = make()
    restored.restore([state])
    rctx = ctx_for(restored)
    restored.keys.current_key = "k"
    assert rctx.value_state("count").value() == 1
    assert rctx.list_state("items").get() == ["a"]


def test_snapshot_then_restore_gives_the_same_entries(make):
    backend = make()
    ctx = ctx_for(backend)
    count = ctx.value_state("count")
    for i in range(1000):
        backend.keys.current_key = f"key-{i}"
        count.update(i)
    restored = make()
    restored.restore([pickle.loads(pickle.dumps(backend.snapshot().materialize()))])
    assert restored.entry_count() == 1000
    rcount = ctx_for(restored).value_state("count")
    for i in range(0, 1000, 97):
        restored.keys.current_key = f"key-{i}"
        assert rcount.value() == i


@pytest.mark.parametrize(("old", "new"), [(1, 2), (2, 3), (4, 1)])
def test_restore_at_another_parallelism_keeps_exactly_the_owned_key_groups(make, old, new):
    keys = [f"w{i}" for i in range(2000)] + list(range(500)) + [("t", i) for i in range(100)]
    states = []
    for subtask in range(old):
        backend = make(old, subtask)
        table = backend.table("v", StateKind.VALUE)
        own = key_group_range(MAXP, old, subtask)
        for key in keys:
            if key_group_of(key, MAXP) in own:
                table[key] = repr(key)
        states.append(pickle.loads(pickle.dumps(backend.snapshot().materialize())))
    seen = {}
    for subtask in range(new):
        backend = make(new, subtask)
        backend.restore(states)
        own = key_group_range(MAXP, new, subtask)
        for key, value in backend.table("v", StateKind.VALUE).items():
            assert key_group_of(key, MAXP) in own
            assert key not in seen
            seen[key] = value
    assert seen == {key: repr(key) for key in keys}


def test_restore_refuses_a_different_max_parallelism(make):
    backend = make()
    backend.table("v", StateKind.VALUE)["k"] = 1
    state = backend.snapshot().materialize()
    other = BACKENDS["heap"](64, range(64))
    with pytest.raises(StateError, match="max_parallelism cannot change"):
        other.restore([state])
