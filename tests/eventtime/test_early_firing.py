"""Early results of windows still open: ``early_count`` (every N-th record of a window, in arrival
order) and ``early_every`` (every T of processing time, the windows that changed).

``early_count`` is checked against a reference model with random batches and watermarks, and end to
end under a crash: its early results are the same on every run, so the committed output (early and
final results) must equal a plain batch computation. ``early_every`` depends on processing time: it
is checked with a manual clock, and end to end only in what does not depend on timing."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowstate as fs
from flowstate.clock import ManualClock
from flowstate.failpoints import Failpoints
from flowstate.operators.base import OperatorEnv
from flowstate.operators.timestamps import LateRecord
from flowstate.operators.windows import WindowOperator
from flowstate.time.watermarks import MAX_WATERMARK, Watermark

from .test_window_operator_model import SIZE, SLIDE, Reference, record
from .windowjobs import SPLITS, N, close, committed, records

EVERY = 3


def build(kind: str, lateness: float, clock: Any = None, **early: Any) -> WindowOperator:
    flow = fs.Dataflow("early")
    keyed = (flow.source(fs.GeneratorSource(lambda i: i, 1)).assign_timestamps(lambda r: r[1])
                 .key_by(lambda r: r[0]))
    assigner = {"tumbling": fs.TumblingWindows(SIZE), "sliding": fs.SlidingWindows(SIZE, SLIDE),
                "session": fs.SessionWindows(3.0)}[kind]
    windowed = keyed.window(assigner, allowed_lateness=lateness, **early)
    result = windowed.aggregate(_Values())
    result.late_records()
    node = next(n for n in flow.nodes if n.kind == "window")
    op = WindowOperator("w", "w", OperatorEnv(0, 1, 16, True, Failpoints(), clock=clock), lambda r: r[0], node)
    op.open(None)
    return op


class _Values:
    """The values of a window's records, as a sorted tuple."""

    def create(self) -> list[int]:
        return []

    def add(self, acc: list[int], record: Any) -> list[int]:
        acc.append(record[2])
        return acc

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        return a + b

    def result(self, acc: list[int]) -> tuple[int, ...]:
        return tuple(sorted(acc))


def rows(out: list[Any]) -> tuple[Counter, Counter]:
    """(early results, final results) as (key, start, end, values) rows."""
    early: Counter = Counter()
    final: Counter = Counter()
    for r in out:
        if type(r) is LateRecord:
            continue
        row = (r.key, r.window.start, r.window.end, r.value)
        (early if r.early else final)[row] += 1
    return early, final


class EarlyReference(Reference):
    """The reference of the window operator, plus: every EVERY-th record of a (key, window), in
    arrival order, fires the window early with its values so far when the window is still open."""

    def __init__(self, kind: str, lateness: float) -> None:
        super().__init__(kind, lateness)
        self.since: dict[tuple[str, float, float], int] = {}

    def early(self, batch: list[tuple[str, float, int]]) -> Counter:
        out: Counter = Counter()
        contents = {w: list(vs) for w, vs in self.windows.items()}
        for k, ts, v in batch:
            for s, e in self.windows_of(ts):
                if e + self.lateness <= self.wm:
                    continue
                window = (k, s, e)
                contents.setdefault(window, []).append(v)
                self.since[window] = self.since.get(window, 0) + 1
                if self.since[window] == EVERY:
                    self.since[window] = 0
                    if e > self.wm:
                        out[(k, s, e, tuple(sorted(contents[window])))] += 1
        return out

    def watermark(self, wm: float) -> Counter:
        out = super().watermark(wm)
        self.since = {w: n for w, n in self.since.items() if w in self.windows}
        return out


event = st.one_of(st.lists(record, min_size=1, max_size=6), st.integers(0, 30).map(float))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["tumbling", "sliding"]), st.sampled_from([0.0, 2.0]), st.lists(event, max_size=14))
def test_early_count_fires_every_nth_record_of_an_open_window_as_the_reference_does(kind, lateness, script):
    op = build(kind, lateness, early_count=EVERY)
    ref = EarlyReference(kind, lateness)
    for step in script + [MAX_WATERMARK]:
        if isinstance(step, list):
            early, final = rows(op.process_batch(step))
            want_early = ref.early(step)
            want_final, _ = ref.batch(step)
        else:
            early, final = rows(op.on_watermark(Watermark(step))[0])
            want_early, want_final = Counter(), ref.watermark(step)
        assert early == want_early, (kind, lateness, step)
        assert final == want_final, (kind, lateness, step)
    op.close()


@pytest.mark.parametrize("kind", ["tumbling", "session"])
def test_early_every_fires_the_windows_that_changed_once_per_period_of_processing_time(kind):
    clock = ManualClock()
    op = build(kind, 0.0, clock=clock, early_every="10s")
    assert op.wants_ticks

    op.process_batch([("a", 1.0, 1), ("b", 1.5, 2)])
    assert rows(op.on_tick(clock.monotonic() + 5.0)[0]) == (Counter(), Counter()), "before its period"
    early, final = rows(op.on_tick(clock.monotonic() + 10.0)[0])
    end_a, end_b = (SIZE, SIZE) if kind == "tumbling" else (4.0, 4.5)
    assert early == Counter({("a", 0.0 if kind == "tumbling" else 1.0, end_a, (1,)): 1,
                             ("b", 0.0 if kind == "tumbling" else 1.5, end_b, (2,)): 1})
    assert not final

    op.process_batch([("a", 2.0, 3)])
    assert rows(op.on_tick(clock.monotonic() + 15.0)[0]) == (Counter(), Counter()), "within the period"
    early, _ = rows(op.on_tick(clock.monotonic() + 20.0)[0])
    assert [row[0] for row in early] == ["a"], "only the key that changed fires"
    assert rows(op.on_tick(clock.monotonic() + 30.0)[0]) == (Counter(), Counter()), "nothing changed"

    early, final = rows(op.on_watermark(Watermark(MAX_WATERMARK))[0])
    assert not early and sorted(row[0] for row in final) == ["a", "b"]
    assert sorted(final)[0][3] == (1, 3), "the final result holds every record"
    op.close()


@pytest.mark.parametrize(("settings_", "message"), [
    ({"early_count": 0}, "early_count must be a whole number"),
    ({"early_count": 2.5}, "early_count must be a whole number"),
    ({"early_every": "0s"}, "early_every must be above 0"),
    ({"early_every": "soon"}, "early_every"),
    ({"early_every": 1, "early_count": 2}, "not both"),
])
def test_bad_early_triggers_are_one_line_graph_errors(settings_, message):
    keyed = (fs.Dataflow("bad").source(fs.GeneratorSource(lambda i: (i, float(i)), 3))
                 .assign_timestamps(lambda r: r[1]).key_by(lambda r: r[0]))
    with pytest.raises(fs.GraphError, match=message):
        keyed.window(fs.TumblingWindows("5s"), **settings_)


def test_early_count_is_refused_for_session_and_count_windows_with_what_to_use():
    keyed = (fs.Dataflow("bad").source(fs.GeneratorSource(lambda i: (i, float(i)), 3))
                 .assign_timestamps(lambda r: r[1]).key_by(lambda r: r[0]))
    with pytest.raises(fs.GraphError, match="use early_every"):
        keyed.window(fs.SessionWindows(gap=1), early_count=3)
    with pytest.raises(fs.GraphError, match="fire on their own count"):
        keyed.window(fs.CountWindows(3), early_every="1s")


# ---- end to end --------------------------------------------------------------------------------------

EARLY_N = 5


def early_job(sink: Any, *, parallelism: int, rate: float | None = None) -> fs.Dataflow:
    flow = fs.Dataflow("early", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(record_of, N, splits=SPLITS, rate=rate, name="events"), uid="events")
         .assign_timestamps(lambda r: r[1], max_out_of_orderness=0.25, uid="timestamps")
         .key_by(lambda r: r[0])
         .window(fs.TumblingWindows("5s"), early_count=EARLY_N)
         .aggregate(fs.aggregates.count(), uid="win")
         .map(lambda r: (r.key, round(r.window.start, 6), r.value, r.early), uid="rows")
         .sink(sink, uid="out"))
    return flow


def record_of(i: int) -> Any:
    from .windowjobs import record

    return record(i)


def batch_early_counts() -> Counter:
    """Every EARLY_N-th record of a (key, window) fires it early with its count so far; every
    window fires once at the end with its count (no record is late in this input)."""
    seen: dict[tuple[str, float], int] = defaultdict(int)
    out: Counter = Counter()
    for key, ts, _ in records(N):
        start = round(ts - ts % 5.0, 6)
        seen[(key, start)] += 1
        if seen[(key, start)] % EARLY_N == 0:
            out[(key, start, seen[(key, start)], True)] += 1
    for (key, start), n in seen.items():
        out[(key, start, n, False)] += 1
    return out


def test_early_counts_are_exactly_once_across_a_crash_and_a_restore(tmp_path):
    out = tmp_path / "out"
    failpoints = fs.Failpoints({"sink.before_commit": "raise@7"})  # 3 sinks: checkpoint 3's commit
    result = fs.run(
        early_job(fs.FileSink(out), parallelism=3, rate=1500.0),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="30ms"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor="threads", batch_size=16),
        failpoints=failpoints,
    )

    assert failpoints.fired("sink.before_commit") == 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < N, "the last attempt read the whole input: it did not resume from a checkpoint"
    expected = batch_early_counts()
    actual = committed(out)
    assert actual == expected, close(actual, expected)


@pytest.mark.parametrize("backend", ["heap", "rocksdb"])
def test_early_counts_do_not_depend_on_the_backend_or_the_parallelism(backend, tmp_path):
    out = tmp_path / "out"
    fs.run(
        early_job(fs.FileSink(out), parallelism=1 if backend == "heap" else 2),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms"),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "state"),
        execution=fs.ExecutionOptions(executor="threads", batch_size=64),
    )
    expected = batch_early_counts()
    actual = committed(out)
    assert actual == expected, close(actual, expected)


def test_early_every_results_never_exceed_the_final_ones_and_the_final_ones_equal_the_batch(tmp_path):
    out = tmp_path / "out"
    flow = fs.Dataflow("every", parallelism=1)
    (flow.source(fs.GeneratorSource(record_of, N, splits=SPLITS, rate=6000.0, name="events"), uid="events")
         .assign_timestamps(lambda r: r[1], max_out_of_orderness=0.25, uid="timestamps")
         .key_by(lambda r: r[0])
         .window(fs.TumblingWindows("5s"), early_every="20ms")
         .aggregate(fs.aggregates.count(), uid="win")
         .map(lambda r: (r.key, round(r.window.start, 6), r.value, r.early), uid="rows")
         .sink(fs.FileSink(out), uid="out"))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
        execution=fs.ExecutionOptions(executor="threads", batch_size=32),
    )

    rows_ = committed(out)
    final = {(k, s): n for (k, s, n, early) in rows_ if not early}
    expected = {(k, s): n for (k, s, n, early) in batch_early_counts() if not early}
    assert final == expected
    early = [(k, s, n) for (k, s, n, is_early) in rows_.elements() if is_early]
    assert early, "no early result in 0.3 s of input with a 20 ms trigger"
    assert all(n <= final[(k, s)] for k, s, n in early)
