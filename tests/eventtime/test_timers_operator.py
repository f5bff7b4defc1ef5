"""A keyed process function with timers, driven by scripted batches, watermarks and a manual clock,
on the heap and on RocksDB: firing order and domains, state in on_timer, snapshots, rescaling."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.clock import ManualClock
from flowstate.failpoints import Failpoints
from flowstate.operators.base import OperatorEnv
from flowstate.operators.timers import TimedKeyedProcessOperator
from flowstate.state.backend import RestoredState
from flowstate.state.keygroups import key_group_of
from flowstate.state.memory import HeapKeyedStateBackend
from flowstate.state.rocksdb import RocksDBBackendFactory
from flowstate.time.watermarks import Watermark

MAXP = 16


class Store:
    """Checkpoint storage for one test: each file of a snapshot copied once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)


def complete(snapshot, store: Store) -> RestoredState:
    """The asynchronous part, storage and release: what a completed checkpoint restores."""
    try:
        parts = snapshot.materialize()
        files = {}
        for key, path in parts.files.items():
            target = store.root / key
            if not target.exists():
                shutil.copyfile(path, target)
            files[key] = str(target)
    finally:
        snapshot.release()
    return RestoredState(pickle.loads(pickle.dumps(parts.data)), files)


class Alert(fs.KeyedProcessFunction):
    """Counts records per key; an event-time timer 10 s after each record, a processing-time timer
    5 s after the first; on a timer, emits (key, domain, timestamp, count so far)."""

    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, record, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        ctx.timers.register_event_time(ctx.timestamp + 10)
        if n == 1:
            ctx.timers.register_processing_time(ctx.timers.current_processing_time() + 5)
        if record[2] == "cancel":
            ctx.timers.delete_event_time(ctx.timestamp + 10)
        return ()

    def on_timer(self, timestamp, ctx):
        yield (ctx.key, str(ctx.timer_domain), timestamp, self.count.value())


FACTORIES = {"heap": lambda tmp: HeapKeyedStateBackend,
             "rocksdb": lambda tmp: RocksDBBackendFactory(base_dir=str(tmp / "work"))}


@pytest.fixture(params=sorted(FACTORIES))
def factory(request, tmp_path: Path):
    return FACTORIES[request.param](tmp_path)


def operator(factory, clock, subtask=0, parallelism=1):
    env = OperatorEnv(subtask, parallelism, MAXP, True, Failpoints(), factory, clock)
    op = TimedKeyedProcessOperator("alert", "alert", env, lambda r: r[0], Alert(), lambda r: r[1])
    return op


def test_event_time_timers_fire_in_order_with_their_key_and_state_and_are_deduplicated(factory, tmp_path):
    clock = ManualClock()
    op = operator(factory, clock)
    op.open(None)
    op.process_batch([("a", 100.0, ""), ("b", 95.0, ""), ("a", 100.0, ""), ("c", 101.0, "cancel")])
    assert op.on_watermark(Watermark(104.9)) == ([], Watermark(104.9))
    fired, passed = op.on_watermark(Watermark(110.0))
    assert passed == Watermark(110.0)
    # b's timer (105) before a's (110); a registered 110 twice, fires once; c's was deleted.
    assert fired == [("b", "event_time", 105.0, 1), ("a", "event_time", 110.0, 2)]
    assert op.on_watermark(Watermark(1e9))[0] == []
    op.close()


def test_processing_time_timers_follow_the_injected_clock_only(factory, tmp_path):
    clock = ManualClock()
    op = operator(factory, clock)
    op.open(None)
    start = clock.wall()
    op.process_batch([("a", 1.0, ""), ("a", 2.0, "")])
    assert op.on_tick(0.0) == ([], None)
    clock.advance(4.9)
    assert op.on_tick(0.0) == ([], None)
    clock.advance(0.2)
    assert op.on_tick(0.0) == ([("a", "processing_time", start + 5, 2)], None)
    assert op.on_tick(0.0) == ([], None)
    op.close()


def test_timers_are_in_the_snapshot_and_follow_their_key_groups_on_a_rescale(factory, tmp_path):
    store = Store(tmp_path / "store")
    clock = ManualClock()
    op = operator(factory, clock)
    op.open(None)
    keys = [f"k{i}" for i in range(12)]
    op.process_batch([(k, float(i), "") for i, k in enumerate(keys)])
    state = complete(op.snapshot(1), store)
    op.process_batch([("late-key", 0.0, "")])  # after the snapshot: not in it
    op.close()

    fired = {}
    for subtask in range(2):
        restored = operator(factory, clock, subtask, 2)
        restored.open([state])
        out, _ = restored.on_watermark(Watermark(1000.0))
        fired[subtask] = out
        restored.close()
    every = sorted(fired[0] + fired[1])
    assert every == sorted((k, "event_time", float(i) + 10, 1) for i, k in enumerate(keys))
    for subtask, out in fired.items():
        assert all((key_group_of(k, MAXP) >= MAXP // 2) == bool(subtask) for k, *_ in out)


def test_a_restored_timer_already_due_fires_at_the_first_watermark(factory, tmp_path):
    store = Store(tmp_path / "store")
    op = operator(factory, ManualClock())
    op.open(None)
    op.process_batch([("a", 1.0, "")])
    state = complete(op.snapshot(1), store)
    op.close()
    again = operator(factory, ManualClock())
    again.open(state)
    assert again.on_watermark(Watermark(50.0))[0] == [("a", "event_time", 11.0, 1)]
    again.close()
