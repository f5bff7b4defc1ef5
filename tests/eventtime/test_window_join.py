"""The window join against a batch computation of the same pairs, at parallelism 1 and 2, on both
backends, and after a crash (the window contents of both sides are keyed state)."""

from __future__ import annotations

from collections import Counter

import pytest

import flowstate as fs

from .windowjobs import committed

CLICKS, VIEWS = 700, 900
SIZE = 30.0


def click(i: int) -> tuple[str, float, int]:
    return (f"u{i % 10}", 1000.0 + i * 1.0 + (i % 3), i)


def view(i: int) -> tuple[str, float, int]:
    return (f"u{(i * 3) % 10}", 1000.0 + i * 0.8 + (i % 5), i)


def batch_pairs() -> Counter:
    """Pairs with equal keys whose timestamps fall in one 30 s tumbling window."""
    pairs: Counter = Counter()
    views = list(map(view, range(VIEWS)))
    for c in map(click, range(CLICKS)):
        for v in views:
            if c[0] == v[0] and c[1] // SIZE == v[1] // SIZE:
                pairs[(c[0], c[2], v[2])] += 1
    return pairs


def job(out, parallelism: int, rate: float | None = None) -> fs.Dataflow:
    flow = fs.Dataflow("window-join", parallelism=parallelism)
    clicks = (flow.source(fs.GeneratorSource(click, CLICKS, splits=2, rate=rate, name="clicks"), uid="clicks")
                  .assign_timestamps(lambda c: c[1], max_out_of_orderness=5, uid="click-time")
                  .key_by(lambda c: c[0]))
    views = (flow.source(fs.GeneratorSource(view, VIEWS, splits=2, rate=rate, name="views"), uid="views")
                 .assign_timestamps(lambda v: v[1], max_out_of_orderness=5, uid="view-time")
                 .key_by(lambda v: v[0]))
    (clicks.window_join(views, fs.TumblingWindows(SIZE), lambda c, v: (c[0], c[2], v[2]), uid="join")
           .sink(fs.FileSink(out), uid="out"))
    return flow


@pytest.mark.parametrize(("parallelism", "backend"), [(1, "heap"), (2, "rocksdb")])
def test_the_window_join_emits_every_pair_of_a_window_once(parallelism, backend, tmp_path):
    fs.run(
        job(tmp_path / "out", parallelism),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms"),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "state"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    expected = batch_pairs()
    assert sum(expected.values()) > 2000  # several records of each side per key and window
    assert committed(tmp_path / "out") == expected


def test_the_window_contents_of_both_sides_are_restored_after_a_crash(tmp_path):
    failpoints = fs.Failpoints({"sink.before_commit": "raise@5"})
    result = fs.run(
        job(tmp_path / "out", 2, rate=1500.0),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="30ms"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=failpoints,
    )
    assert failpoints.fired("sink.before_commit") == 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < CLICKS + VIEWS, "the last attempt read both inputs whole: it did not restore"
    assert committed(tmp_path / "out") == batch_pairs()


def test_without_fn_the_pairs_are_tuples_and_late_records_keep_their_side():
    flow = fs.Dataflow("pairs")
    a = flow.source(fs.GeneratorSource(click, 1)).assign_timestamps(lambda c: c[1]).key_by(lambda c: c[0])
    b = flow.source(fs.GeneratorSource(view, 1)).assign_timestamps(lambda v: v[1]).key_by(lambda v: v[0])
    joined = a.window_join(b, fs.SessionWindows(gap=10))
    node = next(n for n in flow.nodes if n.kind == "window")
    assert node.fn(("k",), None, [(0, "a1"), (1, "b1"), (0, "a2")]) == [("a1", "b1"), ("a2", "b1")]
    assert joined.late_records() is not None


def test_a_window_join_needs_keyed_streams_with_event_time_and_time_windows():
    flow = fs.Dataflow("join")
    timed = flow.source(fs.GeneratorSource(click, 3)).assign_timestamps(lambda c: c[1]).key_by(lambda c: c[0])
    untimed = flow.source(fs.GeneratorSource(click, 3)).key_by(lambda c: c[0])
    with pytest.raises(fs.GraphError, match="event time"):
        timed.window_join(untimed, fs.TumblingWindows(5))
    with pytest.raises(fs.GraphError, match="time windows"):
        timed.window_join(timed, fs.CountWindows(5))
    with pytest.raises(fs.GraphError, match="keyed stream"):
        timed.window_join(flow.source(fs.GeneratorSource(click, 3)), fs.TumblingWindows(5))
