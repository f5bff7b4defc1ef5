"""The timer queue against a sorted-list reference."""

from hypothesis import given, settings
from hypothesis import strategies as st

from flowstate.time.timers import TimerQueue


def test_timers_fire_in_timestamp_order_then_registration_order():
    q = TimerQueue()
    for key, ts in [("b", 5.0), ("a", 3.0), ("c", 5.0), ("a", 9.0)]:
        q.add(key, ts)
    fired = []
    while (t := q.pop_next(5.0)) is not None:
        fired.append(t)
    assert fired == [("a", 3.0), ("b", 5.0), ("c", 5.0)]
    assert q.peek() == 9.0 and len(q) == 1


def test_a_timer_is_registered_once_per_key_and_timestamp():
    q = TimerQueue()
    assert q.add("k", 1.0) and not q.add("k", 1.0)
    assert q.add("k", 2.0) and q.add("j", 1.0)
    assert len(q) == 3


def test_a_deleted_timer_never_fires_and_can_be_registered_again():
    q = TimerQueue()
    q.add("k", 1.0)
    assert q.delete("k", 1.0) and not q.delete("k", 1.0)
    assert q.pop_next(10.0) is None and q.peek() is None
    q.add("k", 1.0)
    assert q.pop_next(10.0) == ("k", 1.0)


def test_a_timer_added_while_firing_fires_in_the_same_round():
    q = TimerQueue()
    q.add("k", 1.0)
    assert q.pop_next(5.0) == ("k", 1.0)
    q.add("k", 4.0)
    assert q.pop_next(5.0) == ("k", 4.0)


ops = st.lists(st.tuples(st.sampled_from(["add", "delete", "fire"]), st.sampled_from("abc"), st.integers(0, 9)),
               max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_queue_matches_a_sorted_list_reference(script):
    q = TimerQueue()
    ref: list[tuple[float, int, str]] = []  # (ts, registration, key)
    seq = 0
    for op, key, n in script:
        ts = float(n)
        if op == "add":
            new = not any(k == key and t == ts for t, _, k in ref)
            assert q.add(key, ts) == new
            if new:
                seq += 1
                ref.append((ts, seq, key))
        elif op == "delete":
            present = [e for e in ref if e[2] == key and e[0] == ts]
            assert q.delete(key, ts) == bool(present)
            for e in present:
                ref.remove(e)
        else:
            due = sorted(e for e in ref if e[0] <= ts)
            fired = []
            while (t := q.pop_next(ts)) is not None:
                fired.append(t)
            assert fired == [(k, t) for t, _, k in due]
            for e in due:
                ref.remove(e)
        assert len(q) == len(ref)
        assert q.peek() == (min(ref)[0] if ref else None)
        assert sorted(q) == sorted((k, t) for t, _, k in ref)
