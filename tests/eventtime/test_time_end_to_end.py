"""Event time end to end, beyond the window matrix: a quiet stream closes its windows through
idle_timeout, allowed lateness and the late stream against a sequential reference, timers of a
keyed process function fire before the final checkpoint, and a real SIGKILL in the middle of open
session windows."""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs

from .windowjobs import batch_windows, close, committed, floats_match

HERE = Path(__file__).parent


# ---- a stream that goes quiet ---------------------------------------------------------------------


class QuietSource:
    """Emits ``records`` at once, then nothing, until ``done`` is set (or ``give_up`` seconds pass)."""

    name = "quiet"
    replayable = True

    def __init__(self, records, done: threading.Event, give_up: float) -> None:
        self.records = records
        self.done = done
        self.give_up = give_up

    def splits(self):
        return ["only"]

    def build_reader(self, splits, resume_state):
        return QuietReader(self, (resume_state or {}).get("only", 0))


class QuietReader:
    def __init__(self, source: QuietSource, position: int) -> None:
        self.source = source
        self.position = position
        self.started = time.monotonic()

    def poll(self, max_records):
        records = self.source.records
        if self.position < len(records):
            out = records[self.position:self.position + max_records]
            self.position += len(out)
            return out
        if self.source.done.is_set() or time.monotonic() - self.started > self.source.give_up:
            return None
        time.sleep(0.01)
        return []

    def snapshot(self):
        return {"only": self.position}

    def close(self):
        pass


def test_a_quiet_stream_closes_its_last_window_through_idle_timeout(tmp_path):
    records = [("k", 0.1 * i) for i in range(1, 26)]  # 0.1 .. 2.5: windows [0,1), [1,2), [2,3)
    done = threading.Event()
    seen: list[tuple] = []
    before_end: list[bool] = []

    def collect(result):
        seen.append((result.window.start, result.value))
        if result.window.start == 2.0:
            before_end.append(not done.is_set())
            done.set()

    flow = fs.Dataflow("quiet")
    (flow.source(QuietSource(records, done, give_up=20.0))
         .assign_timestamps(lambda r: r[1], idle_timeout="200ms")
         .key_by(lambda r: r[0])
         .window(fs.TumblingWindows(1))
         .aggregate(fs.aggregates.count())
         .sink(fs.CallbackSink(collect)))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    assert sorted(seen) == [(0.0, 9), (1.0, 10), (2.0, 6)]
    assert before_end == [True], "the last window was emitted only when the input ended, not through idleness"


def test_without_idle_timeout_a_quiet_stream_keeps_its_last_window_open_until_the_input_ends(tmp_path):
    records = [("k", 0.1 * i) for i in range(1, 26)]
    done = threading.Event()
    seen: list[float] = []
    flow = fs.Dataflow("quiet")
    (flow.source(QuietSource(records, done, give_up=1.0))
         .assign_timestamps(lambda r: r[1])
         .key_by(lambda r: r[0])
         .window(fs.TumblingWindows(1))
         .aggregate(fs.aggregates.count())
         .sink(fs.CallbackSink(lambda r: seen.append((r.window.start, done.is_set())))))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    assert not done.is_set() and sorted(seen)[-1][0] == 2.0  # emitted at the end of the input (give_up)


# ---- allowed lateness and the late stream ---------------------------------------------------------


def lateness_reference(seq, size, lateness):
    """Record by record: the watermark after a record is the largest timestamp so far (no
    out-of-orderness bound); windows fire when it passes their end, fire again on every record
    within the lateness, and are cleared at end + lateness."""
    wm = -math.inf
    state: dict[tuple, int] = {}
    out: Counter = Counter()
    late = []
    for key, ts in seq:
        start = ts - ts % size
        end = start + size
        if end + lateness <= wm:
            late.append((key, ts))
        else:
            state[(key, start)] = state.get((key, start), 0) + 1
            if end <= wm:
                out[(key, start, end, state[(key, start)])] += 1
        if ts > wm:
            for (k, s), c in state.items():
                if wm < s + size <= ts:
                    out[(k, s, s + size, c)] += 1
            for k, s in [g for g in state if g[1] + size + lateness <= ts]:
                del state[(k, s)]
            wm = ts
    for (k, s), c in state.items():
        if s + size > wm:
            out[(k, s, s + size, c)] += 1
    return out, late


@pytest.mark.parametrize("backend", ["heap", "rocksdb"])
def test_late_records_refire_their_window_within_the_lateness_and_go_to_the_late_stream_after(backend, tmp_path):
    rng = random.Random(12)
    seq = []
    for i in range(400):
        ts = float(i // 2) + (rng.choice([0, 0, 0, -3, -7, -12, -25]) if i % 5 == 0 else 0)
        seq.append((f"k{rng.randrange(3)}", ts))
    expected_out, expected_late = lateness_reference(seq, 10.0, 8.0)
    firings = Counter(row[:3] for row in expected_out.elements())
    assert expected_late and max(firings.values()) > 1  # the input exercises both rules

    results, late = [], []
    flow = fs.Dataflow("late")
    windowed = (flow.source(fs.GeneratorSource(lambda i: seq[i], len(seq)))
                    .assign_timestamps(lambda r: r[1], watermark_interval=0)  # one after every record
                    .key_by(lambda r: r[0])
                    .window(fs.TumblingWindows("10s"), allowed_lateness="8s")
                    .aggregate(fs.aggregates.count()))
    windowed.sink(fs.CallbackSink(lambda r: results.append((r.key, r.window.start, r.window.end, r.value))))
    windowed.late_records().sink(fs.CallbackSink(late.append))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "state"),
        execution=fs.ExecutionOptions(batch_size=1, executor="threads"),
    )
    assert Counter(results) == expected_out
    assert late == expected_late


# ---- timers of a keyed process function ----------------------------------------------------------


class Reminder(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.seen = ctx.value_state("seen", default=0)

    def process(self, record, ctx):
        self.seen.update(self.seen.value() + 1)
        ctx.timers.register_event_time(ctx.timestamp + 600)
        return ()

    def on_timer(self, timestamp, ctx):
        assert ctx.timer_domain is fs.TimeDomain.EVENT_TIME
        yield (ctx.key, timestamp, self.seen.value())


def test_every_event_time_timer_fires_and_is_committed_before_the_final_checkpoint(tmp_path):
    def rec(i):
        return (f"user{i % 5}", 1000.0 + 37 * (i // 5) % 900)

    flow = fs.Dataflow("reminders", parallelism=2)
    (flow.source(fs.GeneratorSource(rec, 500, splits=2))
         .assign_timestamps(lambda r: r[1], max_out_of_orderness=900)
         .key_by(lambda r: r[0])
         .process(Reminder())
         .sink(fs.FileSink(tmp_path / "out")))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    got = committed(tmp_path / "out")
    expected = Counter((f"user{k}", float(ts) + 600, 100)
                       for k in range(5) for ts in {rec(i)[1] for i in range(500) if i % 5 == k})
    assert got == expected, close(got, expected)


# ---- a real SIGKILL ---------------------------------------------------------------------------------

JOB = """\
import sys
sys.path.insert(0, {tests!r})
import flowstate as fs
from eventtime.windowjobs import window_job

flow = window_job("session", fs.FileSink({out!r}), parallelism=2, count={count}, rate=2000.0)
"""


@pytest.mark.slow
def test_a_sigkill_in_the_middle_of_open_sessions_is_recovered_exactly_once(tmp_path):
    count = 3000
    out, chk = tmp_path / "out", tmp_path / "chk"
    job = tmp_path / "job.py"
    job.write_text(JOB.format(tests=str(HERE.parent), out=str(out), count=count))
    command = [sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir", str(chk),
               "--mode", "exactly_once", "--interval", "50ms"]
    first = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((d / "_metadata").exists() for d in chk.glob("chk-*")
                                                   if int(d.name.split("-")[1]) >= 2):
        time.sleep(0.02)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    expected = Counter({floats_match(r): c for r, c in batch_windows("session", count).items()})
    partial = Counter({floats_match(r): c for r, c in committed(out).items()})
    assert sum(partial.values()) < sum(expected.values())

    second = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=tmp_path, timeout=120)
    stderr = second.stderr.decode()
    assert second.returncode == 0, stderr[-3000:]
    restored = [int(x) for x in __import__("re").findall(r"restoring from checkpoint (\d+)", stderr)]
    assert restored and restored[0] >= 2, stderr[-3000:]
    actual = Counter({floats_match(r): c for r, c in committed(out).items()})
    assert actual == expected, close(actual, expected)
