"""The window operator against a reference model: random batches, watermarks and checkpoints, every
window kind but count, with and without allowed lateness, folding with ``process`` and with
``aggregate(count())`` (which counts whole batches at once), on the heap backend. Between two
events, what the operator emits must equal what the reference emits (as multisets), and so must the
late records. A checkpoint in the script moves the operator into a fresh one restored from it, so
every window open at a barrier must be in the checkpoint, whether it was stored or still in memory.

The reference keeps plain dicts and recomputes everything naively: windows fire when the watermark
passes their end, a window that already fired fires again once per batch that adds to it within the
lateness, a window is gone at end + lateness, session windows merge when they overlap or touch."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

import flowstate as fs
from flowstate.failpoints import Failpoints
from flowstate.operators.base import OperatorEnv
from flowstate.operators.timestamps import LateRecord
from flowstate.operators.windows import WindowOperator
from flowstate.time.watermarks import MAX_WATERMARK, Watermark

SIZE, SLIDE, GAP = 4.0, 2.0, 3.0


def sessions_of(values: list[tuple[float, int]]) -> list[tuple[float, float, list[int]]]:
    out: list[tuple[float, float, list[int]]] = []
    for ts, v in sorted(values):
        if out and ts <= out[-1][1]:
            s, e, vs = out[-1]
            out[-1] = (s, max(e, ts + GAP), vs + [v])
        else:
            out.append((ts, ts + GAP, [v]))
    return out


class Reference:
    def __init__(self, kind: str, lateness: float) -> None:
        self.kind = kind
        self.lateness = lateness
        self.wm = -float("inf")
        self.windows: dict[tuple[str, float, float], list[int]] = {}
        self.records: dict[str, list[tuple[float, int]]] = {}  # sessions: every live record per key

    def windows_of(self, ts: float) -> list[tuple[float, float]]:
        if self.kind == "tumbling":
            s = ts - ts % SIZE
            return [(s, s + SIZE)]
        last = ts - ts % SLIDE
        return [(s, s + SIZE) for s in (last, last - SLIDE) if s + SIZE > ts]

    def batch(self, batch: list[tuple[str, float, int]]) -> tuple[Counter, list]:
        out: Counter = Counter()
        late = []
        if self.kind == "session":
            for key in dict.fromkeys(k for k, _, _ in batch):
                before = {(s, e): sorted(vs) for s, e, vs in sessions_of(self.records.get(key, []))}
                for k, ts, v in batch:
                    if k != key:
                        continue
                    trial = sessions_of(self.records.get(key, []) + [(ts, v)])
                    s, e = next((s, e) for s, e, vs in trial if s <= ts <= e - GAP)
                    if e + self.lateness <= self.wm:
                        late.append((k, ts, v))
                    else:
                        self.records.setdefault(key, []).append((ts, v))
                for s, e, vs in sessions_of(self.records.get(key, [])):
                    if e <= self.wm and before.get((s, e)) != sorted(vs):
                        out[(key, s, e, tuple(sorted(vs)))] += 1
            return out, late
        touched = set()
        for k, ts, v in batch:
            placed = False
            for s, e in self.windows_of(ts):
                if e + self.lateness <= self.wm:
                    continue
                placed = True
                self.windows.setdefault((k, s, e), []).append(v)
                touched.add((k, s, e))
            if not placed:
                late.append((k, ts, v))
        for k, s, e in touched:
            if e <= self.wm:
                out[(k, s, e, tuple(sorted(self.windows[(k, s, e)])))] += 1
        return out, late

    def watermark(self, wm: float) -> Counter:
        out: Counter = Counter()
        if wm <= self.wm:
            return out
        old, self.wm = self.wm, wm
        if self.kind == "session":
            for key, recs in self.records.items():
                keep = []
                for s, e, vs in sessions_of(recs):
                    if old < e <= wm:
                        out[(key, s, e, tuple(sorted(vs)))] += 1
                    if e + self.lateness > wm:
                        keep += [(ts, v) for ts, v in recs if s <= ts < e]
                self.records[key] = keep
            return out
        for (k, s, e), vs in list(self.windows.items()):
            if old < e <= wm:
                out[(k, s, e, tuple(sorted(vs)))] += 1
            if e + self.lateness <= wm:
                del self.windows[(k, s, e)]
        return out


def build(kind: str, lateness: float, function: str, restored: Any = None) -> WindowOperator:
    flow = fs.Dataflow("model")
    keyed = (flow.source(fs.GeneratorSource(lambda i: i, 1)).assign_timestamps(lambda r: r[1])
                 .key_by(lambda r: r[0]))
    assigner = {"tumbling": fs.TumblingWindows(SIZE), "sliding": fs.SlidingWindows(SIZE, SLIDE),
                "session": fs.SessionWindows(GAP)}[kind]
    windowed = keyed.window(assigner, allowed_lateness=lateness)
    if function == "process":
        result = windowed.process(lambda key, w, recs: [(key, w.start, w.end, tuple(sorted(r[2] for r in recs)))])
    else:
        result = windowed.aggregate(fs.aggregates.count())
    result.late_records()
    node = next(n for n in flow.nodes if n.kind == "window")
    op = WindowOperator("w", "w", OperatorEnv(0, 1, 16, True, Failpoints()), lambda r: r[0], node)
    op.open(restored)
    return op


def restored_from_a_checkpoint(op: WindowOperator, kind: str, lateness: float, function: str) -> WindowOperator:
    """A fresh operator restored from ``op``'s checkpoint and given ``op``'s watermark, as a restored
    task does (its channels' watermark at the checkpoint); ``op`` is closed. Nothing fires then."""
    part = op.snapshot(1)
    state = part.materialize()
    part.release()
    op.close()
    fresh = build(kind, lateness, function, state)
    emitted, _ = fresh.on_watermark(Watermark(op.watermark))
    assert emitted == []
    return fresh


def split(out: list[Any], function: str) -> tuple[Counter, list]:
    results = [r for r in out if type(r) is not LateRecord]
    if function == "count":
        results = [(r.key, r.window.start, r.window.end, r.value) for r in results]
    return Counter(results), [r.record for r in out if type(r) is LateRecord]


def as_counts(results: Counter) -> Counter:
    return Counter({(k, s, e, len(values)): n for (k, s, e, values), n in results.items()})


record = st.tuples(st.sampled_from("ab"), st.integers(0, 24).map(float), st.integers(0, 9))
event = st.one_of(st.lists(record, min_size=1, max_size=5), st.integers(0, 30).map(float), st.just("checkpoint"))


@settings(max_examples=500, deadline=None)
# A record still in memory that reaches a stored session (stored at the checkpoint) keeps it from
# firing at the watermark that passes the stored end, as it would had it been stored at once.
@example("session", 0.0, "count", [[("a", 0.0, 1)], "checkpoint", [("a", 2.0, 2)], 4.0])
@example("session", 2.0, "process", [[("a", 0.0, 1)], "checkpoint", [("a", 2.0, 2)], 4.0])
@given(st.sampled_from(["tumbling", "sliding", "session"]), st.sampled_from([0.0, 2.0]),
       st.sampled_from(["process", "count"]), st.lists(event, max_size=12))
def test_the_window_operator_matches_the_reference(kind, lateness, function, script):
    op = build(kind, lateness, function)
    ref = Reference(kind, lateness)
    for step in script + [MAX_WATERMARK]:
        if step == "checkpoint":
            op = restored_from_a_checkpoint(op, kind, lateness, function)
            continue
        if isinstance(step, list):
            got, got_late = split(op.process_batch(step), function)
            want, want_late = ref.batch(step)
            assert got_late == want_late
        else:
            got, _ = split(op.on_watermark(Watermark(step))[0], function)
            want = ref.watermark(step)
        if function == "count":
            want = as_counts(want)
        assert got == want, (kind, lateness, step)
    op.close()
