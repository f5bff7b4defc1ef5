"""State time-to-live (``flowstate.state.ttl``): the pure rules against tables and a model, then the
ttl states on every backend (``conftest.BACKENDS``): visibility, update types, cleanup lag, counts,
snapshots, restores and the isolation of values read from state."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowstate.state.backend import StateError
from flowstate.state.ttl import (
    Access,
    ExpiryIndex,
    StateTtl,
    TtlStates,
    TtlTime,
    TtlUpdate,
    as_state_ttl,
    expiry_after,
    is_expired,
    refreshes,
)

from .conftest import complete

# ---- the pure rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "access", "current", "expected"), [
    (10.0, 0.0, None, 10.0),       # a new entry
    (10.0, 5.0, 10.0, 15.0),       # a later write moves it on
    (10.0, 2.0, 15.0, 15.0),       # an out-of-order (earlier) access never moves it back
    (10.0, 5.0, 15.0, 15.0),
])
def test_expiry_after_an_access(ttl, access, current, expected):
    assert expiry_after(ttl, access, current) == expected


@pytest.mark.parametrize(("update", "access", "expected"), [
    (TtlUpdate.ON_CREATE_AND_WRITE, Access.WRITE, True),
    (TtlUpdate.ON_CREATE_AND_WRITE, Access.READ, False),
    (TtlUpdate.ON_READ_AND_WRITE, Access.WRITE, True),
    (TtlUpdate.ON_READ_AND_WRITE, Access.READ, True),
])
def test_which_accesses_refresh_the_expiry(update, access, expected):
    assert refreshes(update, access) is expected


@pytest.mark.parametrize(("expiry", "now", "expected"), [
    (10.0, 9.999, False), (10.0, 10.0, True), (10.0, 11.0, True), (10.0, -math.inf, False), (10.0, math.inf, True),
])
def test_an_entry_is_expired_from_its_expiry_on(expiry, now, expected):
    assert is_expired(expiry, now) is expected


@pytest.mark.parametrize(("given_ttl", "seconds"), [(90, 90.0), ("500ms", 0.5), ("30m", 1800.0),
                                                    (timedelta(hours=1), 3600.0)])
def test_a_ttl_is_a_duration_as_users_write_it(given_ttl, seconds):
    config = as_state_ttl(given_ttl, "event", "on_read_and_write")
    assert config == StateTtl(seconds, TtlTime.EVENT, TtlUpdate.ON_READ_AND_WRITE)
    assert as_state_ttl(given_ttl) == StateTtl(seconds)  # processing time, on create and write
    assert as_state_ttl(StateTtl(given_ttl, "event")) == StateTtl(seconds, TtlTime.EVENT)


@pytest.mark.parametrize(("args", "message"), [
    ((0,), "positive"), (("-5m",), "negative"), (("soon",), "500ms"), ((10, "wall"), "'event' or 'processing'"),
    ((10, "event", "on_read"), "on_read_and_write"), ((None, "event"), "need a ttl"),
])
def test_a_bad_ttl_is_refused_saying_what_is_accepted(args, message):
    with pytest.raises(ValueError, match=message):
        as_state_ttl(*args)
    if args[0] is not None:
        with pytest.raises(ValueError, match=message):
            StateTtl(*args)


ikeys = st.sampled_from(["a", "b", "c", ("a", 1), ("b", 2)])
times = st.integers(0, 30).map(float)
steps = st.lists(st.one_of(
    st.tuples(st.just("set"), ikeys, times),
    st.tuples(st.just("extend"), ikeys, times),
    st.tuples(st.just("discard"), ikeys),
    st.tuples(st.just("pop"), times),
    st.tuples(st.just("counts"), times),
), max_size=80)


@given(steps)
@settings(max_examples=300, deadline=None)
def test_the_expiry_index_matches_a_dictionary_model(script):
    index, model = ExpiryIndex(), {}
    for step in script:
        match step:
            case ("set", ikey, expiry):
                index.set(ikey, expiry)
                model[ikey] = expiry
            case ("extend", ikey, expiry):
                later = expiry_after(0.0, expiry, model.get(ikey))
                assert index.extend(ikey, expiry) == later
                model[ikey] = later
            case ("discard", ikey):
                index.discard(ikey)
                model.pop(ikey, None)
            case ("pop", upto):
                due = sorted((e, repr(k)) for k, e in model.items() if e <= upto)
                got = index.pop_due(upto)
                assert sorted((e, repr(k)) for k, e in got) == due
                model = {k: e for k, e in model.items() if e > upto}
            case ("counts", now):
                expired = sum(1 for e in model.values() if e <= now)
                assert index.counts(now) == (len(model) - expired, expired)
        assert len(index) == len(model)
        assert all(index.expiry(k) == e for k, e in model.items())


def test_the_expiry_index_stays_within_twice_its_entries_however_often_one_key_is_written():
    index = ExpiryIndex()
    for t in range(100_000):
        index.set("hot", float(t % 1000))  # earlier and later again: a push each time it is earlier
        index.discard("cold")
        index.set("cold", float(-t))
    assert len(index) == 2 and len(index._heap) <= 2 * 2 + 65


# ---- the states on every backend ---------------------------------------------------------------------


class Clock:
    """A ttl clock moved by the test: access time, now and removal time are all ``t``."""

    def __init__(self) -> None:
        self.t = 0.0

    def access_time(self) -> float:
        return self.t

    def now(self) -> float:
        return self.t

    def removal_time(self) -> float:
        return self.t


def ttl_states(backend, clock: Clock, time: TtlTime = TtlTime.PROCESSING) -> TtlStates:
    if time is TtlTime.EVENT:
        return TtlStates(backend, "op", Clock(), clock)
    return TtlStates(backend, "op", clock, None, "no timestamps")


def states(ttls: TtlStates, config: StateTtl):
    return {
        "value": ttls.value_state("v", 0, config),
        "list": ttls.list_state("l", config),
        "map": ttls.map_state("m", config),
        "reducing": ttls.reducing_state("r", lambda a, b: a + b, config),
    }


def write(s, n: int = 1) -> None:
    s["value"].update(n)
    s["list"].add(n)
    s["map"].put("x", n)
    s["reducing"].add(n)


def read(s) -> dict:
    return {"value": s["value"].value(), "list": s["list"].get(), "map": dict(s["map"].items()),
            "reducing": s["reducing"].get()}


NOTHING = {"value": 0, "list": [], "map": {}, "reducing": None}


@pytest.mark.parametrize("time", list(TtlTime))
def test_an_entry_is_visible_until_its_expiry_and_invisible_from_then_on(make, time):
    backend, clock = make(), Clock()
    s = states(ttl_states(backend, clock, time), StateTtl(10.0, time))
    backend.keys.current_key = "k"
    write(s, 7)
    clock.t = 9.99
    assert read(s) == {"value": 7, "list": [7], "map": {"x": 7}, "reducing": 7}
    assert s["map"].contains("x") and not s["map"].is_empty() and s["map"].get("x") == 7
    clock.t = 10.0
    assert read(s) == NOTHING
    assert not s["map"].contains("x") and s["map"].is_empty() and s["map"].get("x", "d") == "d"
    # An expired reduction starts afresh: the old value is not combined with the new one.
    assert s["reducing"].add_and_get(5) == 5


def test_each_list_element_and_map_entry_expires_on_its_own(make):
    backend, clock = make(), Clock()
    s = states(ttl_states(backend, clock), StateTtl(10.0))
    backend.keys.current_key = "k"
    s["list"].add("early")
    s["map"].put("early", 1)
    clock.t = 5.0
    s["list"].add("late")
    s["map"].put("late", 2)
    clock.t = 12.0
    assert s["list"].get() == ["late"]
    assert dict(s["map"].items()) == {"late": 2} and list(s["map"].keys()) == ["late"]
    assert list(s["map"].values()) == [2]


@pytest.mark.parametrize(("update", "visible_at_15"), [(TtlUpdate.ON_CREATE_AND_WRITE, False),
                                                        (TtlUpdate.ON_READ_AND_WRITE, True)])
def test_a_read_refreshes_the_expiry_only_on_read_and_write(make, update, visible_at_15):
    backend, clock = make(), Clock()
    s = states(ttl_states(backend, clock), StateTtl(10.0, update=update))
    backend.keys.current_key = "k"
    write(s, 3)
    clock.t = 8.0
    assert read(s) == {"value": 3, "list": [3], "map": {"x": 3}, "reducing": 3}
    clock.t = 15.0
    assert read(s) == ({"value": 3, "list": [3], "map": {"x": 3}, "reducing": 3} if visible_at_15 else NOTHING)


def test_a_write_always_refreshes_the_expiry(make):
    backend, clock = make(), Clock()
    s = states(ttl_states(backend, clock), StateTtl(10.0))
    backend.keys.current_key = "k"
    write(s, 1)
    clock.t = 8.0
    s["value"].update(2)
    s["map"].put("x", 2)
    s["reducing"].add(2)
    clock.t = 15.0
    assert (s["value"].value(), s["map"].get("x"), s["reducing"].get()) == (2, 2, 3)


@pytest.mark.parametrize("time", list(TtlTime))
def test_expired_entries_are_counted_until_the_next_cleanup_removes_them_from_the_backend(make, time):
    backend, clock = make(), Clock()
    ttls = ttl_states(backend, clock, time)
    s = states(ttls, StateTtl(100.0, time))
    for i in range(20):
        clock.t = float(i)
        backend.keys.current_key = f"k{i}"
        write(s)
    # value, list and reducing count a key as one entry; the map one per (key, map key).
    assert ttls.counts() == (80, 0)
    clock.t = 105.0  # the entries written at 0..5 expired
    assert ttls.counts() == (56, 24)
    assert sorted(backend.state_keys("v")) == sorted(f"k{i}" for i in range(20))  # not removed yet
    assert ttls.cleanup() == 24
    assert ttls.counts() == (56, 0)
    for name in ("v", "l", "m", "r"):
        assert sorted(backend.state_keys(name)) == sorted(f"k{i}" for i in range(6, 20))
    assert ttls.cleanup() == 0  # nothing due: nothing to do
    clock.t = 1e9
    ttls.cleanup()
    assert ttls.counts() == (0, 0)
    assert all(list(backend.state_keys(name)) == [] for name in ("v", "l", "m", "r"))


def test_cleanup_keeps_the_list_elements_that_are_still_live(make):
    backend, clock = make(), Clock()
    ttls = ttl_states(backend, clock)
    items = ttls.list_state("l", StateTtl(10.0))
    backend.keys.current_key = "k"
    items.add("a")
    clock.t = 4.0
    items.add_all(["b", "c"])
    clock.t = 11.0
    assert ttls.cleanup() == 1
    assert items.get() == ["b", "c"] and ttls.counts() == (1, 0)
    clock.t = 14.0
    assert ttls.cleanup() == 1 and list(backend.state_keys("l")) == []


def test_a_snapshot_after_cleanup_holds_only_live_entries_and_a_restore_keeps_their_expiry(make, store):
    backend, clock = make(), Clock()
    ttls = ttl_states(backend, clock)
    s = states(ttls, StateTtl(10.0))
    for i in range(10):
        clock.t = float(i)
        backend.keys.current_key = i
        write(s, i)
    clock.t = 14.5  # 0..4 expired
    ttls.cleanup()
    restored_state = complete(backend.snapshot(), store)

    restored, later = make(), Clock()
    restored.restore([restored_state])
    later.t = 14.5
    again = ttl_states(restored, later)
    r = states(again, StateTtl(10.0))
    assert sorted(restored.state_keys("v")) == [5, 6, 7, 8, 9]
    assert again.counts() == (20, 0)
    restored.keys.current_key = 7
    assert read(r) == {"value": 7, "list": [7], "map": {"x": 7}, "reducing": 7}
    later.t = 17.0  # written at 7: expires at 17, as it would have without the restore
    assert read(r) == NOTHING
    assert again.counts() == (8, 12)


def test_a_state_cannot_gain_a_ttl_across_a_restore(make, take):
    backend = make()
    backend.keys.current_key = "k"
    backend.value_state("v").update(41)
    restored = make()
    restored.restore([take(backend)])
    with pytest.raises(StateError, match="cannot gain or lose ttl"):
        ttl_states(restored, Clock()).value_state("v", None, StateTtl(10.0))


def test_a_name_keeps_its_kind_and_its_ttl(make):
    ttls = ttl_states(make(), Clock())
    ttls.value_state("v", None, StateTtl(10.0))
    assert ttls.value_state("v", None, StateTtl(10.0)) is ttls.value_state("v", None, StateTtl(10.0))
    with pytest.raises(StateError, match="same ttl"):
        ttls.value_state("v", None, StateTtl(20.0))
    with pytest.raises(StateError, match="value state"):
        ttls.map_state("v", StateTtl(10.0))
    ttls.plain("p")
    with pytest.raises(StateError, match="without a ttl"):
        ttls.list_state("p", StateTtl(10.0))


def test_event_time_ttl_on_an_operator_without_timestamps_is_refused_saying_what_to_do(make):
    ttls = ttl_states(make(), Clock())
    with pytest.raises(StateError, match="event-time ttl.*no timestamps"):
        ttls.value_state("v", None, StateTtl(10.0, TtlTime.EVENT))


def test_a_value_read_from_ttl_state_and_changed_after_a_snapshot_is_not_in_the_snapshot(make, store):
    """The isolation rule of ``flowstate.state.values`` holds for ttl states: a change in place is
    stored, and never reaches a snapshot taken before it."""
    backend, clock = make(), Clock()
    ttls = ttl_states(backend, clock)
    acc = ttls.value_state("acc", None, StateTtl(100.0))
    log = ttls.list_state("log", StateTtl(100.0))
    index = ttls.map_state("index", StateTtl(100.0))
    merged = ttls.reducing_state("merged", lambda a, b: {**a, **b}, StateTtl(100.0))
    backend.keys.current_key = "k"
    acc.update({"seen": []})
    log.add({"seen": []})
    index.put("x", {"seen": []})
    merged.add({"first": True})

    def mutate(tag: str) -> None:
        acc.value()["seen"].append(tag)
        log.get()[0]["seen"].append(tag)
        index.get("x")["seen"].append(tag)
        merged.get()[tag] = True

    mutate("before")
    snap = backend.snapshot()
    mutate("after")
    backend.maybe_fold()
    mutate("folded")
    restored = make()
    restored.restore([complete(snap, store)])
    r = ttl_states(restored, clock)
    restored.keys.current_key = "k"
    assert r.value_state("acc", None, StateTtl(100.0)).value() == {"seen": ["before"]}
    assert r.list_state("log", StateTtl(100.0)).get() == [{"seen": ["before"]}]
    assert r.map_state("index", StateTtl(100.0)).get("x") == {"seen": ["before"]}
    assert r.reducing_state("merged", lambda a, b: {**a, **b}, StateTtl(100.0)).get() == {"first": True,
                                                                                          "before": True}
    assert acc.value() == {"seen": ["before", "after", "folded"]}
    assert log.get() == [{"seen": ["before", "after", "folded"]}]
    assert index.get("x") == {"seen": ["before", "after", "folded"]}
    assert merged.get() == {"first": True, "before": True, "after": True, "folded": True}


def test_a_mutable_default_of_a_ttl_value_state_is_fresh_every_time(make):
    backend = make()
    v = ttl_states(backend, Clock()).value_state("v", [], StateTtl(10.0))
    backend.keys.current_key = "k"
    v.value().append(1)
    assert v.value() == [] and list(backend.state_keys("v")) == []


# ---- ttl states against a model, with cleanups, snapshots and restores ------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
MAP_KEYS = st.sampled_from([1, 2])
OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), KEYS, MAP_KEYS, st.integers(0, 9)),
    st.tuples(st.just("read"), KEYS, MAP_KEYS),
    st.tuples(st.just("advance"), st.integers(1, 4).map(float)),
    st.tuples(st.just("cleanup")),
    st.tuples(st.just("restore")),
), max_size=40)


@pytest.mark.parametrize("update", list(TtlUpdate))
def test_ttl_states_match_a_model_through_cleanups_snapshots_and_restores(make, store, kind, update):
    config = StateTtl(5.0, update=update)

    @given(OPS)
    @settings(max_examples=60 if kind == "heap" else 15, deadline=None)
    def run(script):
        clock = Clock()
        backend = make()
        ttls = ttl_states(backend, clock)
        value, entries = ttls.value_state("v", None, config), ttls.map_state("m", config)
        model: dict = {}  # ("v", key) or ("m", key, map key) -> (value, expiry); kept until cleanup

        def visible(ikey):
            got = model.get(ikey)
            return got[0] if got is not None and got[1] > clock.t else None

        for step in script:
            match step:
                case ("write", key, mk, n):
                    backend.keys.current_key = key
                    value.update(n)
                    entries.put(mk, n)
                    model[("v", key)] = model[("m", key, mk)] = (n, clock.t + 5.0)
                case ("read", key, mk):
                    backend.keys.current_key = key
                    assert value.value() == visible(("v", key))
                    assert entries.get(mk) == visible(("m", key, mk))
                    if update is TtlUpdate.ON_READ_AND_WRITE:
                        for ikey in (("v", key), ("m", key, mk)):
                            if visible(ikey) is not None:
                                model[ikey] = (model[ikey][0], clock.t + 5.0)
                case ("advance", dt):
                    clock.t += dt
                case ("cleanup",):
                    ttls.cleanup()
                    model = {k: v for k, v in model.items() if v[1] > clock.t}
                case ("restore",):
                    snapshot = complete(backend.snapshot(), store)
                    backend = make()
                    backend.restore([snapshot])
                    ttls = ttl_states(backend, clock)
                    value, entries = ttls.value_state("v", None, config), ttls.map_state("m", config)
            expired = sum(1 for _, e in model.values() if e <= clock.t)
            assert ttls.counts() == (len(model) - expired, expired), step

    run()


def test_ttl_entries_follow_their_key_groups_on_a_rescale_with_their_expiry(make, take):
    backend, clock = make(), Clock()
    ttls = ttl_states(backend, clock)
    s = states(ttls, StateTtl(100.0))
    for i in range(40):
        clock.t = float(i)
        backend.keys.current_key = i
        write(s, i)
    clock.t = 110.0  # 0..10 expired, not removed: they travel too, and stay invisible
    snapshot = take(backend)
    total_live = total_expired = 0
    for subtask in range(3):
        part = make(3, subtask)
        part.restore([snapshot])
        r = ttl_states(part, clock)
        rs = states(r, StateTtl(100.0))
        live, expired = r.counts()
        total_live, total_expired = total_live + live, total_expired + expired
        for key in part.state_keys("v"):
            part.keys.current_key = key
            assert rs["value"].value() == (key if key > 10 else 0)
    assert (total_live, total_expired) == (29 * 4, 11 * 4)
