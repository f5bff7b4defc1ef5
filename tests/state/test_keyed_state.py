"""Conformance of keyed state backends: every backend must pass this suite.

Parametrized over ``BACKENDS`` (``conftest.py``); a new backend is done when it passes. Every restore
goes through ``take``: pickled data, files copied into a store, snapshot released.
"""

from __future__ import annotations

import dataclasses
import datetime
import pickle
import zlib

import pytest

from flowstate.functions import RuntimeContext
from flowstate.state.backend import RestoredState, StateError
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.keys import UnsupportedKeyError

from .conftest import BACKENDS, MAXP, complete, dump


def ctx_for(backend) -> RuntimeContext:
    return RuntimeContext("op", 0, 1, backend)


KINDS = {"count": "value", "items": "list", "seen": "map", "total": "reducing"}


def fill(backend, keys) -> None:
    """Writes one entry of every kind for each key; what is written depends on the key only."""
    count = backend.value_state("count")
    items = backend.list_state("items")
    seen = backend.map_state("seen")
    total = backend.reducing_state("total", lambda a, b: a + b)
    for key in keys:
        backend.keys.current_key = key
        n = zlib.crc32(repr(key).encode()) % 1000
        count.update(n)
        items.add(n)
        items.add(repr(key))
        seen.put(("m", n % 3), repr(key))
        total.add(n)
        total.add(1)


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
    backend.keys.current_key = "b"
    count.clear()
    assert count.value() == 0
    assert list(backend.state_keys("count")) == []


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


def test_every_list_operation_keeps_the_order_of_the_elements(make):
    backend = make()
    items = backend.list_state("items")
    backend.keys.current_key = "k"
    assert items.get() == []
    items.add_all([])
    assert list(backend.state_keys("items")) == []
    items.add("a")
    items.add_all(x for x in "bc")
    assert items.get() == ["a", "b", "c"]
    got = items.get()
    got.append("not stored")
    assert items.get() == ["a", "b", "c"]
    items.update(reversed(items.get()))
    assert items.get() == ["c", "b", "a"]
    items.update([])
    assert items.get() == [] and list(backend.state_keys("items")) == []
    items.add(1)
    items.clear()
    assert items.get() == []


def test_every_map_operation_sees_the_entries_of_the_current_key_only(make):
    backend = make()
    seen = backend.map_state("seen")
    backend.keys.current_key = "other"
    seen.put("z", 26)
    backend.keys.current_key = "k"
    assert seen.is_empty() and seen.get("z") is None and seen.get("z", -1) == -1
    seen.put_all({"a": 1, "b": (2, "two"), ("c", 3): None})
    assert dict(seen.items()) == {"a": 1, "b": (2, "two"), ("c", 3): None}
    assert sorted(map(repr, seen.keys())) == sorted(map(repr, ["a", "b", ("c", 3)]))
    assert seen.contains(("c", 3)) and seen.get(("c", 3), "default") is None
    assert sorted(map(repr, seen.values())) == sorted(map(repr, [1, (2, "two"), None]))
    seen.remove("missing")
    seen.remove("a")
    assert not seen.contains("a") and len(list(seen.items())) == 2
    seen.clear()
    assert seen.is_empty() and list(seen.keys()) == []
    backend.keys.current_key = "other"
    assert dict(seen.items()) == {"z": 26}
    assert list(backend.state_keys("seen")) == ["other"]


def test_reducing_state_combines_with_its_function_and_clears(make):
    backend = make()
    longest = backend.reducing_state("longest", lambda a, b: a if len(a) >= len(b) else b)
    backend.keys.current_key = 7
    assert longest.get() is None
    for word in ["ab", "abcd", "abc"]:
        longest.add(word)
    assert longest.get() == "abcd"
    assert longest.add_and_get("abcdef") == "abcdef" and longest.add_and_get("x") == "abcdef"
    longest.clear()
    assert longest.get() is None
    longest.add("x")
    assert longest.get() == "x"
    snapshot = backend.snapshot()  # and while a snapshot holds the entry
    assert longest.add_and_get("xy") == "xy" and longest.get() == "xy"
    snapshot.release()


def test_two_objects_for_one_state_name_see_the_same_entries(make):
    backend = make()
    first, second = backend.value_state("v", default=0), backend.value_state("v", default=-1)
    backend.keys.current_key = "k"
    assert (first.value(), second.value()) == (0, -1)
    first.update(3)
    assert second.value() == 3


def test_asking_for_one_state_name_with_two_kinds_is_refused_and_changes_nothing(make):
    backend = make()
    value = backend.value_state("s")
    backend.keys.current_key = "k"
    value.update(1)
    with pytest.raises(StateError, match="'s' is value state"):
        backend.list_state("s")
    with pytest.raises(StateError, match="'s' is value state; it cannot also be map state"):
        backend.map_state("s")
    assert value.value() == 1
    assert dump(backend, {"s": "value"}) == {"s": {"k": 1}}


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def test_keys_and_values_of_many_types_survive_a_snapshot(make, take):
    keys = ["s", "", "ünïcode", b"\x00bytes", 0, -1, 2**40, 2**80, 1.5, None, ("a", 1, (b"b", None)), ()]
    values = [1, "text", b"raw", 2.5, None, True, [1, [2]], {"a": (1, 2)}, (1, "x"), {1, 2}, Point(1, 2), 2**70]
    backend = make()
    state = backend.value_state("v")
    for key, value in zip(keys, values, strict=True):
        backend.keys.current_key = key
        state.update(("wrapped", value))
    restored = make()
    restored.restore([take(backend)])
    rstate = restored.value_state("v")
    for key, value in zip(keys, values, strict=True):
        restored.keys.current_key = key
        got = rstate.value()
        assert got == ("wrapped", value) and type(got[1]) is type(value), key
    assert sorted(map(repr, restored.state_keys("v"))) == sorted(map(repr, keys))


def test_snapshot_then_restore_gives_the_same_entries(make, take):
    backend = make()
    count = ctx_for(backend).value_state("count")
    for i in range(1000):
        backend.keys.current_key = f"key-{i}"
        count.update(i)
    restored = make()
    restored.restore([take(backend)])
    assert restored.entry_count() == 1000
    assert restored.state_size_bytes() > 0
    rcount = ctx_for(restored).value_state("count")
    for i in range(0, 1000, 97):
        restored.keys.current_key = f"key-{i}"
        assert rcount.value() == i


def test_a_restored_backend_keeps_going_and_snapshots_again(make, take):
    keys = [f"k{i}" for i in range(50)]
    first = make()
    fill(first, keys)
    expected = dump(first, KINDS)
    second = make()
    second.restore([take(first)])
    items = second.list_state("items")
    for key in keys[:10]:
        second.keys.current_key = key
        items.add("after")
        expected["items"][key].append("after")
    third = make()
    third.restore([take(second)])
    assert dump(third, KINDS) == expected
    assert expected["items"]["k3"][-1] == "after" and len(expected["items"]["k30"]) == 2


def test_a_snapshot_is_not_changed_by_later_updates_of_any_kind(make, store):
    backend = make()
    ctx = ctx_for(backend)
    count, items, seen, total = (ctx.value_state("count"), ctx.list_state("items"), ctx.map_state("seen"),
                                 ctx.reducing_state("total", lambda a, b: a + b))
    for key in ("k", "gone"):
        backend.keys.current_key = key
        count.update(1)
        items.add("a")
        seen.put("a", 1)
        total.add(10)
    snapshot = backend.snapshot()
    backend.keys.current_key = "k"
    count.update(2)
    items.add("b")  # an in-place change of the list the snapshot holds
    seen.put("b", 2)  # and of the map
    seen.remove("a")
    total.add(5)
    backend.keys.current_key = "gone"
    for state in (count, items, seen, total):
        state.clear()
    backend.keys.current_key = "new"
    count.update(9)
    backend.maybe_fold()
    restored = make()
    restored.restore([complete(snapshot, store)])
    expected = {"count": {"k": 1, "gone": 1}, "items": {"k": ["a"], "gone": ["a"]},
                "seen": {"k": {"a": 1}, "gone": {"a": 1}}, "total": {"k": 10, "gone": 10}}
    assert dump(restored, KINDS) == expected
    assert dump(backend, KINDS) == {"count": {"k": 2, "new": 9}, "items": {"k": ["a", "b"]},
                                    "seen": {"k": {"b": 2}}, "total": {"k": 15}}


def test_overlapping_snapshots_each_hold_their_own_cut_whatever_the_order_they_end_in(make, store):
    backend = make()
    count = backend.value_state("count")
    items = backend.list_state("items")
    backend.keys.current_key = "k"
    count.update(1)
    items.add(1)
    first = backend.snapshot()
    count.update(2)
    items.add(2)
    backend.maybe_fold()
    second = backend.snapshot()
    count.update(3)
    items.add(3)
    backend.keys.current_key = "late"
    count.update(0)
    backend.maybe_fold()
    state2 = complete(second, store)
    backend.maybe_fold()
    items.add("x")
    state1 = complete(first, store)
    backend.maybe_fold()  # both done: the layers fold back
    backend.keys.current_key = "k"
    items.add(4)
    state3 = complete(backend.snapshot(), store)
    cuts = []
    for state in (state1, state2, state3):
        restored = make()
        restored.restore([state])
        cuts.append(dump(restored, {"count": "value", "items": "list"}))
    assert cuts == [
        {"count": {"k": 1}, "items": {"k": [1]}},
        {"count": {"k": 2}, "items": {"k": [1, 2]}},
        {"count": {"k": 3, "late": 0}, "items": {"k": [1, 2, 3, 4], "late": ["x"]}},
    ]


def test_a_released_snapshot_that_was_never_materialized_does_not_hold_the_backend_back(make, take):
    backend = make()
    count = backend.value_state("count")
    backend.keys.current_key = "k"
    count.update(1)
    backend.snapshot().release()
    count.update(2)
    backend.maybe_fold()
    restored = make()
    restored.restore([take(backend)])
    assert dump(restored, {"count": "value"}) == {"count": {"k": 2}}


def test_a_snapshot_materializes_once(make):
    backend = make()
    backend.value_state("v")
    snapshot = backend.snapshot()
    snapshot.materialize()
    with pytest.raises(StateError, match="already"):
        snapshot.materialize()
    snapshot.release()


@pytest.mark.parametrize(("old", "new"), [(1, 2), (2, 3), (4, 1), (3, 2)])
def test_restore_at_another_parallelism_keeps_exactly_the_owned_key_groups(make, take, old, new):
    keys = [f"w{i}" for i in range(600)] + list(range(300)) + [("t", i) for i in range(100)]
    states = []
    for subtask in range(old):
        backend = make(old, subtask)
        own = key_group_range(MAXP, old, subtask)
        fill(backend, [k for k in keys if key_group_of(k, MAXP) in own])
        states.append(take(backend))
    reference = make()
    fill(reference, keys)
    expected = dump(reference, KINDS)
    seen: dict[str, dict] = {name: {} for name in KINDS}
    for subtask in range(new):
        backend = make(new, subtask)
        backend.restore(states)
        own = key_group_range(MAXP, new, subtask)
        for name, entries in dump(backend, KINDS).items():
            for key, value in entries.items():
                assert key_group_of(key, MAXP) in own, (name, key)
                assert key not in seen[name]
                seen[name][key] = value
    assert seen == expected


def test_restore_from_no_snapshot_or_from_snapshots_of_other_key_groups_gives_an_empty_backend(make, take):
    source = make(2, 0)
    fill(source, [k for k in range(200) if key_group_of(k, MAXP) in key_group_range(MAXP, 2, 0)])
    state = take(source)
    other = make(2, 1)
    other.restore([state])
    assert dump(other, KINDS) == {name: {} for name in KINDS}
    empty = make()
    empty.restore([])
    assert empty.entry_count() == 0


def test_restore_refuses_a_different_max_parallelism(make, take):
    backend = make()
    backend.value_state("v")
    state = take(backend)
    other = make(maxp=64)
    with pytest.raises(StateError, match="max_parallelism cannot change"):
        other.restore([state])


def test_restore_refuses_a_snapshot_of_another_backend_naming_both_formats(kind, make, take, tmp_path, store):
    family = kind.split("-")[0]  # heap and heap-incremental are one backend: each restores the other
    other_kind = next(k for k in BACKENDS if k.split("-")[0] != family)
    other = BACKENDS[other_kind](MAXP, range(MAXP), tmp_path / "other")
    try:
        other.value_state("v")
        state = complete(other.snapshot(), store)
    finally:
        other.close()
    with pytest.raises(StateError, match=f"cannot restore a snapshot of format '{other_kind}"):
        make().restore([state])


@pytest.mark.parametrize("data", [None, {"no": "format"}, ["heap-v2"]])
def test_restore_refuses_what_is_not_a_snapshot(make, data):
    with pytest.raises(StateError, match="not a keyed state snapshot"):
        make().restore([RestoredState(data)])


def test_restore_must_come_before_any_state_is_created(make, take):
    source = make()
    source.value_state("v")
    state = take(source)
    backend = make()
    backend.value_state("v")
    with pytest.raises(StateError, match="restore\\(\\) must come first"):
        backend.restore([state])


def test_snapshot_data_pickles_and_names_its_format_and_key_groups(make):
    backend = make(4, 1)
    backend.value_state("v")
    snapshot = backend.snapshot()
    parts = snapshot.materialize()
    snapshot.release()
    data = pickle.loads(pickle.dumps(parts.data))
    assert data["format"] in {"heap-v2", "heap-chain-v1", "rocksdb-v1"}
    assert data["max_parallelism"] == MAXP
    assert data["key_groups"] == [32, 64]


# ---- the rules of state values: the same on every backend ------------------------------------------
#
# 1. A snapshot is the state at the moment it was taken, whatever the task does afterwards with the
#    objects that state reads return (or that it stored).
# 2. A change made in place to a value read from state (or stored in it) is stored: ``value()``,
#    ``ReducingState.get()``, ``MapState.get/values/items`` and the items of ``ListState.get()``
#    return the state's own objects. The list ``ListState.get()`` returns is the caller's: appending
#    to it changes nothing. A default is never stored: a mutable default is a fresh copy each time.


def test_the_issue_repro_a_value_changed_in_place_after_a_snapshot_is_not_in_the_snapshot(make, store):
    backend = make()
    backend.keys.current_key = "k"
    s = backend.value_state("s")
    s.update({"n": 1})
    snap = backend.snapshot()  # the synchronous part, at the barrier
    d = s.value()
    d["n"] += 100  # a record after the barrier
    s.update(d)
    restored = make()
    restored.restore([complete(snap, store)])
    restored.keys.current_key = "k"
    assert restored.value_state("s").value() == {"n": 1}
    assert s.value() == {"n": 101}


def mutate_everything(backend, tag: str) -> None:
    """Changes, in place and without storing them again, objects read from every kind of state."""
    acc = backend.value_state("acc")
    log = backend.list_state("log")
    index = backend.map_state("index")
    merged = backend.reducing_state("merged", lambda a, b: (a.update(b), a)[1])
    for key in ("a", "b"):
        backend.keys.current_key = key
        acc.value()["seen"].append(tag)
        log.get()[0]["seen"].append(tag)
        index.get("x")["seen"].append(tag)
        for _, value in index.items():
            value.setdefault("via_items", []).append(tag)
        merged.get()[tag] = True


def seed_values(backend) -> None:
    acc = backend.value_state("acc")
    log = backend.list_state("log")
    index = backend.map_state("index")
    merged = backend.reducing_state("merged", lambda a, b: (a.update(b), a)[1])
    for key in ("a", "b"):
        backend.keys.current_key = key
        acc.update({"seen": []})
        log.add({"seen": []})
        index.put("x", {"seen": []})
        merged.add({"first": True})


VALUE_KINDS = {"acc": "value", "log": "list", "index": "map", "merged": "reducing"}


def expected_after(tags: list[str]) -> dict:
    via_items = {"via_items": tags} if tags else {}
    one = {
        "acc": {"seen": tags},
        "log": [{"seen": tags}],
        "index": {"x": {"seen": tags, **via_items}},
        "merged": {"first": True, **dict.fromkeys(tags, True)},
    }
    return {name: {key: one[name] for key in ("a", "b")} for name in VALUE_KINDS}


def test_a_value_changed_in_place_is_stored_and_a_snapshot_keeps_what_it_was(make, store):
    backend = make()
    seed_values(backend)
    mutate_everything(backend, "before")
    first = backend.snapshot()
    mutate_everything(backend, "after-1")
    second = backend.snapshot()  # overlaps the first: two frozen layers
    mutate_everything(backend, "after-2")
    assert dump(backend, VALUE_KINDS) == expected_after(["before", "after-1", "after-2"])
    for snap, tags in ((second, ["before", "after-1"]), (first, ["before"])):
        restored = make()
        restored.restore([complete(snap, store)])
        assert dump(restored, VALUE_KINDS) == expected_after(tags)
    backend.maybe_fold()
    mutate_everything(backend, "folded")
    assert dump(backend, VALUE_KINDS) == expected_after(["before", "after-1", "after-2", "folded"])


def test_the_list_that_list_get_returns_is_the_callers(make):
    backend = make()
    log = backend.list_state("log")
    backend.keys.current_key = "k"
    log.add(1)
    log.get().append(2)
    backend.snapshot()
    log.get().append(3)
    assert log.get() == [1]


def test_a_mutable_default_is_never_stored_nor_shared_between_keys(make):
    backend = make()
    acc = backend.value_state("acc", default={"n": 0})
    backend.keys.current_key = "a"
    acc.value()["n"] += 1
    backend.keys.current_key = "b"
    assert acc.value() == {"n": 0}
    assert list(backend.state_keys("acc")) == []


def test_one_one_point_zero_and_true_are_one_key_across_a_rescale(make, take):
    backend = make()
    count = backend.value_state("count", default=0)
    for key in (1, 1.0, True, ("w", 2), ("w", 2.0), 0, -0.0, False):
        backend.keys.current_key = key
        count.update(count.value() + 1)
    restored = [make(2, i) for i in range(2)]
    snapshot = take(backend)
    totals = {}
    for r in restored:
        r.restore([snapshot])
        c = r.value_state("count", default=0)
        for key in r.state_keys("count"):
            r.keys.current_key = key
            totals[key] = c.value()
    assert totals == {1: 3, ("w", 2): 2, 0: 3}


def test_date_keys_and_map_keys_follow_the_rules_of_keys(make, take):
    day = datetime.date(2024, 3, 1)
    backend = make()
    count = backend.value_state("count", default=0)
    per = backend.map_state("per")
    backend.keys.current_key = day
    count.update(count.value() + 1)
    per.put(1, "one")
    per.put(1.0, "one again")
    assert dict(per.items()) == {1: "one again"}
    with pytest.raises(UnsupportedKeyError):
        per.put(datetime.datetime(2024, 1, 1), "x")
    with pytest.raises(UnsupportedKeyError):
        per.put_all({float("nan"): 1})
    restored = make(2, key_group_of(day, MAXP) * 2 // MAXP)
    restored.restore([take(backend)])
    restored.keys.current_key = day
    assert restored.value_state("count").value() == 1
    assert list(restored.state_keys("count")) == [day]
