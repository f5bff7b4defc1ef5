"""The event-time test kit: a source with explicit timestamps and watermarks drives late data and
timers to the exact record."""

from __future__ import annotations

from datetime import UTC

import pytest

import flowstate as fs
from flowstate.testing import TimedSource


def test_an_explicit_watermark_fires_timers_exactly_between_the_records_around_it(tmp_path):
    class Echo(fs.KeyedProcessFunction):
        def process(self, record, ctx):
            ctx.timers.register_event_time(ctx.timestamp + 5)
            yield ("record", ctx.timestamp)

        def on_timer(self, timestamp, ctx):
            yield ("timer", timestamp)

    seen = []
    flow = fs.Dataflow("kit")
    (flow.source(TimedSource([("k", 1.0), fs.Watermark(7.0), ("k", 8.0)], timestamp=lambda r: r[1]))
         .key_by(lambda r: r[0])
         .process(Echo())
         .sink(fs.CallbackSink(seen.append)))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    assert seen == [("record", 1.0), ("timer", 6.0), ("record", 8.0), ("timer", 13.0)]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_record_behind_an_explicit_watermark_is_late_for_its_closed_window(parallelism, tmp_path):
    events = [("a", 1.0), ("b", 5.0), fs.Watermark(10.0), ("a", 3.0), ("a", 12.0)]
    results, late = [], []
    flow = fs.Dataflow("kit", parallelism=parallelism)
    windowed = (flow.source(TimedSource(events, timestamp=lambda r: r[1]))
                    .key_by(lambda r: r[0])
                    .window(fs.TumblingWindows(10))
                    .aggregate(fs.aggregates.count()))
    windowed.sink(fs.CallbackSink(lambda r: results.append((r.key, r.window.start, r.value))))
    windowed.late_records().sink(fs.CallbackSink(late.append))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    assert sorted(results) == [("a", 0.0, 1), ("a", 10.0, 1), ("b", 0.0, 1)]
    assert late == [("a", 3.0)]


def test_windows_on_a_stream_without_event_time_are_refused_when_the_graph_is_built():
    flow = fs.Dataflow("kit")
    keyed = flow.source(fs.GeneratorSource(lambda i: i, 3)).key_by(lambda r: r)
    with pytest.raises(fs.GraphError, match="assign_timestamps"):
        keyed.window(fs.TumblingWindows(1))
    assert keyed.window(fs.CountWindows(2))  # count windows need no event time
    mapped = flow.source(TimedSource([], timestamp=lambda r: r)).map(str).key_by(len)
    with pytest.raises(fs.GraphError, match="assign_timestamps"):
        mapped.window(fs.SessionWindows(1))


def test_timestamps_may_be_aware_datetimes_and_a_bad_one_names_its_record(tmp_path):
    from datetime import datetime, timedelta

    base = datetime(2026, 1, 1, tzinfo=UTC)
    seen = []
    flow = fs.Dataflow("dates")
    (flow.source(fs.GeneratorSource(lambda i: ("k", base + timedelta(seconds=i)), 130))
         .assign_timestamps(lambda r: r[1])
         .key_by(lambda r: r[0])
         .window(fs.TumblingWindows("1m"))
         .aggregate(fs.aggregates.count())
         .sink(fs.CallbackSink(lambda r: seen.append((r.window.start - base.timestamp(), r.value)))))
    fs.run(flow, checkpoints=fs.CheckpointOptions(mode="none"), execution=fs.ExecutionOptions(executor="threads"))
    assert sorted(seen) == [(0.0, 60), (60.0, 60), (120.0, 10)]

    flow = fs.Dataflow("naive")
    (flow.source(fs.GeneratorSource(lambda i: ("k", datetime(2026, 1, 1) if i == 3 else base), 5))
         .assign_timestamps(lambda r: r[1])
         .sink(fs.CallbackSink(lambda r: None)))
    with pytest.raises(fs.JobFailedError, match="naive datetime"):
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(mode="none"),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="threads"),
        )
