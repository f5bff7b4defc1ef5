"""Watermark generation and combining: scripted sequences, and a Hypothesis model of combining."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from flowstate.time.watermarks import MIN_WATERMARK, ChannelWatermarks, SplitWatermarks, Watermark

INF = math.inf


# ---- generation -------------------------------------------------------------------------------

def test_a_split_watermark_is_its_largest_timestamp_minus_the_bound():
    gen = SplitWatermarks(5.0, None)
    assert gen.current(0.0) is None
    gen.on_records("a", 100.0, 0.0)
    assert gen.current(0.0) == Watermark(95.0)
    gen.on_records("a", 90.0, 0.1)  # out of order: no change
    assert gen.current(0.1) is None
    gen.on_records("a", 110.0, 0.2)
    assert gen.current(0.2) == Watermark(105.0)


def test_the_slowest_active_split_holds_the_watermark_back():
    gen = SplitWatermarks(0.0, None)
    gen.on_records("a", 100.0, 0.0)
    gen.on_records("b", 50.0, 0.0)
    assert gen.current(0.0) == Watermark(50.0)
    gen.on_records("a", 200.0, 1.0)
    assert gen.current(1.0) is None
    gen.on_records("b", 150.0, 1.0)
    assert gen.current(1.0) == Watermark(150.0)


def test_an_idle_split_stops_holding_the_watermark_back():
    gen = SplitWatermarks(0.0, idle_timeout=10.0)
    gen.on_records("a", 100.0, 0.0)
    gen.on_records("b", 50.0, 0.0)
    assert gen.current(0.0) == Watermark(50.0)
    gen.on_records("a", 120.0, 9.0)
    assert gen.current(9.0) is None
    assert gen.current(10.0) == Watermark(120.0)  # b idle since 0 + 10


def test_when_every_split_is_idle_event_time_follows_processing_time():
    gen = SplitWatermarks(5.0, idle_timeout=30.0)
    gen.on_records("a", 1000.0, 0.0)
    assert gen.current(0.0) == Watermark(995.0)
    assert gen.current(29.0) is None
    assert gen.current(40.0) == Watermark(1005.0)  # 995 + (40 - 0 - 30)
    gen.on_records("a", 1001.0, 41.0)  # active again: never backwards
    assert gen.current(41.0) is None
    assert gen.emitted == 1005.0


def test_a_subtask_without_data_goes_idle_after_the_timeout_and_only_then():
    gen = SplitWatermarks(0.0, idle_timeout=1.0)
    assert gen.current(0.0) is None
    assert gen.current(0.5) is None
    assert gen.current(1.0) == Watermark(-INF, idle=True)
    assert gen.current(2.0) is None  # said once
    gen.on_records("a", 7.0, 3.0)
    assert gen.current(3.0) == Watermark(7.0)


def test_a_restored_generator_emits_its_watermark_first_and_never_goes_back():
    gen = SplitWatermarks(10.0, None)
    gen.on_records("a", 500.0, 0.0)
    gen.on_records("b", 300.0, 0.0)
    assert gen.current(0.0) == Watermark(290.0)
    snap = gen.snapshot()
    gen.on_records("b", 900.0, 1.0)  # after the snapshot: not in it
    restored = SplitWatermarks(10.0, None, snap)
    assert restored.current(5.0) == Watermark(290.0)
    restored.on_records("b", 200.0, 6.0)  # replayed records older than before
    assert restored.current(6.0) is None
    assert restored.emitted == 290.0


# ---- combining --------------------------------------------------------------------------------

def test_the_combined_watermark_is_the_minimum_over_channels():
    valve = ChannelWatermarks(2)
    assert valve.on_watermark(0, Watermark(10.0)) is None
    assert valve.on_watermark(1, Watermark(5.0)) == Watermark(5.0)
    assert valve.on_watermark(1, Watermark(20.0)) == Watermark(10.0)
    assert valve.on_watermark(1, Watermark(15.0)) is None  # a channel never goes back


def test_idle_channels_are_excluded_and_all_idle_makes_the_output_idle():
    valve = ChannelWatermarks(2)
    valve.on_watermark(0, Watermark(10.0))
    assert valve.on_watermark(1, Watermark(-INF, idle=True)) == Watermark(10.0)
    assert valve.on_watermark(0, Watermark(10.0, idle=True)) == Watermark(10.0, idle=True)
    assert valve.on_watermark(1, Watermark(-INF, idle=True)) is None
    assert valve.on_watermark(1, Watermark(8.0)) == Watermark(10.0)  # active again, not backwards
    assert valve.current == 10.0


def test_an_ended_channel_counts_as_infinity_and_all_ended_releases_everything():
    valve = ChannelWatermarks(2)
    valve.on_watermark(0, Watermark(10.0))
    assert valve.on_end_of_input(1) == Watermark(10.0)
    assert valve.on_end_of_input(0) == Watermark(INF)


def test_a_restored_floor_is_never_undercut():
    valve = ChannelWatermarks(1, floor=100.0)
    assert valve.on_watermark(0, Watermark(50.0)) is None
    assert valve.current == 100.0


events = st.lists(st.tuples(
    st.integers(0, 2),
    st.sampled_from(["wm", "idle", "end"]),
    st.integers(0, 50).map(float),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(events)
def test_combining_matches_a_reference_model(script):
    """The reference recomputes from scratch; the valve must agree on every step."""
    valve = ChannelWatermarks(3)
    wm = [-INF] * 3
    idle = [False] * 3
    ended = [False] * 3
    out = -INF
    out_idle = False
    for ch, kind, ts in script:
        if kind == "wm":
            event = valve.on_watermark(ch, Watermark(ts))
            if not ended[ch]:
                idle[ch] = False
                wm[ch] = max(wm[ch], ts)
        elif kind == "idle":
            event = valve.on_watermark(ch, Watermark(ts, idle=True))
            if not ended[ch]:
                idle[ch] = True
        else:
            event = valve.on_end_of_input(ch)
            ended[ch], idle[ch], wm[ch] = True, False, INF
        considered = [wm[c] for c in range(3) if not idle[c]]
        all_idle = any(idle) and all(idle[c] or ended[c] for c in range(3))
        before, before_idle = out, out_idle
        if all_idle:
            out_idle = True
        else:
            out_idle = False
            out = max(out, min(considered))
        assert valve.current == out
        assert valve.idle == out_idle
        if out != before:
            assert event == Watermark(out)
        elif out_idle and not before_idle:
            assert event == Watermark(out, idle=True)
        elif before_idle and not out_idle:
            assert event == Watermark(out)
        else:
            assert event is None


def test_a_finished_split_no_longer_holds_the_watermark_back():
    gen = SplitWatermarks(0.0, None)
    gen.on_records("old", 10.0, 0.0)
    gen.on_records("new", 50.0, 0.0)
    assert gen.current(0.0) == Watermark(10.0)
    gen.finish("old")
    assert gen.current(0.0) == Watermark(50.0)
    assert gen.snapshot() == {"splits": {"new": 50.0}, "emitted": 50.0}


def test_an_announced_split_holds_the_watermark_back_until_it_produces():
    gen = SplitWatermarks(10.0, None)
    gen.add_split("p0", 0.0)
    gen.add_split("p1", 0.0)
    gen.on_records("p0", 100.0, 0.1)
    assert gen.current(0.1) is None  # p1 may still deliver anything above -inf
    gen.on_records("p1", 60.0, 0.2)
    assert gen.current(0.2) == Watermark(50.0)


def test_an_announced_split_that_stays_quiet_stops_holding_the_watermark_once_idle():
    gen = SplitWatermarks(0.0, 5.0)
    gen.add_split("p0", 0.0)
    gen.add_split("p1", 0.0)
    gen.on_records("p0", 100.0, 1.0)
    assert gen.current(4.9) is None
    assert gen.current(5.0) == Watermark(100.0)  # p1 idle 5 s after its announcement


def test_announced_splits_that_never_produce_make_the_subtask_idle():
    gen = SplitWatermarks(0.0, 5.0)
    gen.add_split("p0", 0.0)
    assert gen.current(0.0) is None
    assert gen.current(5.0) == Watermark(MIN_WATERMARK, idle=True)
    assert gen.current(6.0) is None  # said once
    gen.on_records("p0", 30.0, 7.0)
    assert gen.current(7.0) == Watermark(30.0)


def test_announcing_a_known_split_keeps_its_watermark():
    gen = SplitWatermarks(0.0, None)
    gen.on_records("p0", 40.0, 0.0)
    gen.add_split("p0", 1.0)
    assert gen.current(1.0) == Watermark(40.0)
    assert gen.snapshot() == {"splits": {"p0": 40.0}, "emitted": 40.0}



def test_restored_splits_the_reader_no_longer_reads_stop_holding_the_watermark_back():
    gen = SplitWatermarks(0.0, None, {"splits": {"*": 40.0, "t:0": 50.0, "t:1": 45.0}, "emitted": 40.0})
    assert gen.current(0.0) == Watermark(40.0)  # rule 4 first
    gen.retain({"t:0", "t:2"})  # "*" was the reader as one split, "t:1" is read by another subtask now
    gen.add_split("t:2", 0.0)
    gen.on_records("t:2", 70.0, 0.1)
    assert gen.current(0.1) == Watermark(50.0)
    assert gen.snapshot() == {"splits": {"t:0": 50.0, "t:2": 70.0}, "emitted": 50.0}


split_events = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from("abc"), st.just(0.0)),
    st.tuples(st.just("records"), st.sampled_from("abc"), st.integers(0, 100).map(float)),
    st.tuples(st.just("finish"), st.sampled_from("abc"), st.just(0.0)),
    st.tuples(st.just("tick"), st.just(""), st.sampled_from([0.0, 0.5, 2.0, 6.0])),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(split_events)
def test_no_split_that_is_announced_and_active_is_overtaken_by_the_watermark(script):
    """Reference: per split its largest timestamp (-inf when announced without records) and when it was
    last heard of. A watermark that advances never passes the lowest active split (whose records stay
    on time) while there is one; it never goes backwards."""
    gen = SplitWatermarks(1.0, 5.0)
    splits: dict[str, list[float]] = {}
    now = 0.0
    emitted = MIN_WATERMARK
    for kind, split, value in script:
        if kind == "add":
            gen.add_split(split, now)
            splits.setdefault(split, [MIN_WATERMARK, now])
        elif kind == "records":
            gen.on_records(split, value, now)
            state = splits.setdefault(split, [value, now])
            state[0], state[1] = max(state[0], value), now
        elif kind == "finish":
            gen.finish(split)
            splits.pop(split, None)
        else:
            now += value
        event = gen.current(now)
        active = [max_ts - 1.0 for max_ts, seen in splits.values() if now - seen < 5.0]
        if event is None or event.idle:
            continue
        assert event.timestamp >= emitted
        if event.timestamp > emitted and active:
            assert event.timestamp <= min(active), f"{event} overtakes an active split: {splits} at {now}"
        emitted = event.timestamp
