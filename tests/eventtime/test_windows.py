"""Window assignment and session merging, scripted and against a batch reference."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowstate.time.windows import (
    CountWindows,
    SessionWindows,
    SlidingWindows,
    TimeWindow,
    TumblingWindows,
    merge_session,
)


def test_tumbling_windows_start_at_multiples_of_the_size_plus_offset():
    assert TumblingWindows("1m").assign(125.0) == (TimeWindow(120.0, 180.0),)
    assert TumblingWindows(60, offset=10).assign(125.0) == (TimeWindow(70.0, 130.0),)
    assert TumblingWindows("1s").assign(3.0) == (TimeWindow(3.0, 4.0),)


def test_sliding_windows_cover_every_window_that_contains_the_timestamp():
    assert SlidingWindows(10, 5).assign(12.0) == (TimeWindow(10.0, 20.0), TimeWindow(5.0, 15.0))
    assert SlidingWindows(10, 5).assign(10.0) == (TimeWindow(10.0, 20.0), TimeWindow(5.0, 15.0))
    assert SlidingWindows(10, 3).assign(9.0) == (TimeWindow(9.0, 19.0), TimeWindow(6.0, 16.0), TimeWindow(3.0, 13.0),
                                                 TimeWindow(0.0, 10.0))


@pytest.mark.parametrize("bad", [lambda: TumblingWindows(0), lambda: SlidingWindows(5, 0), lambda: SessionWindows(-1),
                                 lambda: CountWindows(0), lambda: CountWindows(True)])
def test_degenerate_windows_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(0, 19), st.integers(-100, 100))
def test_sliding_assignment_matches_a_brute_force_scan(size, slide, offset, ts):
    offset %= slide
    got = set(SlidingWindows(size, slide, offset).assign(float(ts)))
    expected = {TimeWindow(float(s), float(s + size)) for s in range(-200, 200)
                if (s - offset) % slide == 0 and s <= ts < s + size}
    assert got == expected


def test_a_record_between_two_sessions_merges_them():
    existing = [TimeWindow(0.0, 10.0), TimeWindow(15.0, 25.0), TimeWindow(40.0, 50.0)]
    merged, absorbed = merge_session(existing, TimeWindow(8.0, 18.0))
    assert merged == TimeWindow(0.0, 25.0)
    assert absorbed == [TimeWindow(0.0, 10.0), TimeWindow(15.0, 25.0)]
    assert merge_session(existing, TimeWindow(30.0, 40.0)) == (TimeWindow(30.0, 50.0), [TimeWindow(40.0, 50.0)])
    assert merge_session(existing, TimeWindow(26.0, 36.0)) == (TimeWindow(26.0, 36.0), [])


def batch_sessions(timestamps, gap):
    """The reference: sort, cut where consecutive timestamps are more than ``gap`` apart."""
    out = []
    for ts in sorted(timestamps):
        if out and ts <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], ts + gap), out[-1][2] + 1)
        else:
            out.append((ts, ts + gap, 1))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=40), st.integers(1, 15))
def test_incremental_merging_in_any_arrival_order_equals_batch_sessions(timestamps, gap):
    windows: dict[TimeWindow, int] = {}
    for ts in timestamps:
        merged, absorbed = merge_session(list(windows), SessionWindows(gap).assign(float(ts))[0])
        count = 1 + sum(windows.pop(w) for w in absorbed)
        windows[merged] = count
    got = sorted((w.start, w.end, c) for w, c in windows.items())
    assert got == [(float(s), float(e), c) for s, e, c in batch_sessions(timestamps, gap)]
