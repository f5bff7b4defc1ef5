"""State TTL in running operators and jobs: event-time ttl of a keyed process function on the heap
and on RocksDB (checkpoints never hold an expired entry), an exactly-once job with a crash whose
committed output equals a batch computation of the same expiry rule, and a key space that grows
without end whose reported live entries stay bounded."""

from __future__ import annotations

import pickle
import shutil
import zlib
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import flowstate as fs
from flowstate.checkpoint.coordinator import CheckpointConfig
from flowstate.clock import ManualClock, SystemClock
from flowstate.config import JobConfig, Mode, NoRestart
from flowstate.failpoints import Failpoints
from flowstate.operators.base import OperatorEnv
from flowstate.operators.timers import TimedKeyedProcessOperator
from flowstate.runner.job import JobRunner
from flowstate.state.backend import RestoredState
from flowstate.state.memory import HeapKeyedStateBackend
from flowstate.state.rocksdb import RocksDBBackendFactory
from flowstate.time.watermarks import Watermark

from .windowjobs import close, committed

TTL = 40.0


class LastVisit(fs.KeyedProcessFunction):
    """Per user, with event-time ttl: the time of the last visit, the number of visits and the pages
    seen; emits what was still live when each click came."""

    def open(self, ctx):
        self.last = ctx.value_state("last", ttl=TTL, ttl_time="event")
        self.visits = ctx.reducing_state("visits", lambda a, b: a + b, ttl=TTL, ttl_time="event")
        self.pages = ctx.map_state("pages", ttl=TTL, ttl_time="event")
        self.trail = ctx.list_state("trail", ttl=TTL, ttl_time="event")

    def process(self, click, ctx):
        user, ts, page = click
        previous = self.last.value()
        seen = self.pages.contains(page)
        trail = len(self.trail.get())
        n = self.visits.add_and_get(1)
        self.last.update(ts)
        self.pages.put(page, ts)
        self.trail.add(page)
        yield (user, ts, previous, n, seen, trail)


def click(i: int) -> tuple[str, float, str]:
    """In timestamp order; a user comes back after gaps both shorter and longer than the ttl."""
    return (f"u{zlib.crc32(str(i).encode()) % 40}", float(i), f"p{i % 5}")


def batch_visits(count: int) -> Counter:
    """The same expiry rule, computed without the engine: an entry written at ``t`` is visible to
    a record at ``ts`` while ``ts < t + TTL``; a write moves the expiry to ``ts + TTL``."""
    last: dict = {}
    visits: dict = {}
    pages: dict = {}
    trails: dict = {}
    out: Counter = Counter()
    for i in range(count):
        user, ts, page = click(i)
        live_last = last.get(user)
        previous = live_last[0] if live_last and live_last[1] > ts else None
        seen = pages.get((user, page), -1.0) > ts
        trail = sum(1 for expiry in trails.get(user, ()) if expiry > ts)
        old = visits.get(user)
        n = (old[0] if old and old[1] > ts else 0) + 1
        last[user] = (ts, ts + TTL)
        visits[user] = (n, ts + TTL)
        pages[(user, page)] = ts + TTL
        trails.setdefault(user, []).append(ts + TTL)
        out[(user, ts, previous, n, seen, trail)] += 1
    return out


def visits_job(out: Path, count: int, rate: float | None = None) -> fs.Dataflow:
    flow = fs.Dataflow("visits", parallelism=2)
    (flow.source(fs.GeneratorSource(click, count, splits=1, rate=rate), uid="clicks")
         .assign_timestamps(lambda c: c[1], max_out_of_orderness=0, uid="time")
         .key_by(lambda c: c[0])
         .process(LastVisit(), uid="visits")
         .sink(fs.FileSink(out), uid="out"))
    return flow


def test_the_batch_rule_is_not_trivial():
    expected = batch_visits(2000)
    assert sum(1 for row in expected if row[2] is None) > 100  # first visits and returns after the ttl
    assert sum(1 for row in expected if row[2] is not None) > 500  # returns within it
    assert sum(1 for row in expected if row[4]) > 100 and max(row[5] for row in expected) >= 2


# RocksDB runs on threads: a worker forked from a test process that already opened RocksDB can hang.
@pytest.mark.parametrize(("executor", "backend"), [("threads", "heap"), ("processes", "heap"), ("threads", "rocksdb")])
def test_event_time_ttl_is_recovered_exactly_once_from_a_checkpoint(tmp_path, executor, backend):
    count = 2000
    # The third commit fails: a slow RocksDB checkpoint on a busy machine must not let the job end first.
    failpoints = fs.Failpoints({"sink.before_commit": "raise@3"})
    result = fs.run(
        visits_job(tmp_path / "out", count, rate=2000.0),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", mode="exactly_once", interval="30ms"),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "state"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor=executor),
        failpoints=failpoints,
    )
    assert failpoints.fired("sink.before_commit") == 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < count
    got, expected = committed(tmp_path / "out"), batch_visits(count)
    assert got == expected, close(got, expected)


# ---- one operator, scripted ---------------------------------------------------------------------------


class Sessions(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0, ttl="10s", ttl_time="event")

    def process(self, record, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (record[0], n)


FACTORIES = {"heap": lambda tmp: HeapKeyedStateBackend,
             "rocksdb": lambda tmp: RocksDBBackendFactory(base_dir=str(tmp / "work"))}


@pytest.fixture(params=sorted(FACTORIES))
def factory(request, tmp_path: Path):
    return FACTORIES[request.param](tmp_path)


def operator(factory):
    env = OperatorEnv(0, 1, 16, True, Failpoints(), factory, ManualClock())
    return TimedKeyedProcessOperator("s", "s", env, lambda r: r[0], Sessions(), lambda r: r[1])


def restore(snapshot, store: Path) -> RestoredState:
    """The asynchronous part, a copy of its files as an upload would make, and the release."""
    store.mkdir(exist_ok=True)
    try:
        parts = snapshot.materialize()
        files = {}
        for key, path in parts.files.items():
            files[key] = str(store / key)
            shutil.copyfile(path, files[key])
        return RestoredState(pickle.loads(pickle.dumps(parts.data)), files)
    finally:
        snapshot.release()


def test_a_snapshot_never_holds_an_entry_expired_at_its_barrier_and_a_restore_keeps_the_expiry(factory, tmp_path):
    op = operator(factory)
    op.open(None)
    assert op.process_batch([("a", 0.0), ("b", 5.0), ("a", 9.0)]) == [("a", 1), ("b", 1), ("a", 2)]
    op.on_watermark(Watermark(14.0))  # b (written at 5) expired at 15: still live
    assert op.ttl_counts() == (2, 0)
    op.ctx.watermark = 16.0  # moved without a cleanup: b is expired but not removed yet
    assert op.ttl_counts() == (1, 1)
    snapshot = op.snapshot(1)  # the snapshot removes it first
    assert op.ttl_counts() == (1, 0)
    state = restore(snapshot, tmp_path / "store")
    op.close()

    again = operator(factory)
    again.open(state)
    assert sorted(again.backend.state_keys("count")) == ["a"]
    again.on_watermark(Watermark(16.0))
    assert again.ttl_counts() == (1, 0)
    # a was written at 9: it is visible at 18 and gone at 19, as without the restore.
    assert again.process_batch([("a", 18.0), ("a", 30.0)]) == [("a", 3), ("a", 1)]
    again.close()


def test_an_event_time_ttl_over_a_key_space_that_grows_without_end_keeps_bounded_state(factory):
    op = operator(factory)
    op.open(None)
    peak = 0
    for second in range(300):
        op.process_batch([(f"user-{second}-{j}", float(second)) for j in range(5)])
        op.on_watermark(Watermark(float(second)))
        live, expired = op.ttl_counts()
        peak = max(peak, live + expired)
    # 1,500 keys were written; at any watermark only the last 10 s of them (5 per second) are kept.
    assert peak == 50
    op.close()


# ---- the acceptance test: a job over a key space that grows without end ------------------------------

KEYS = 3000
PROCESSING_TTL = 100


class SteppedWall(SystemClock):
    """The system's clock, except for processing time (``wall``), which moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def wall(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += 1.0


class Remember(fs.KeyedProcessFunction):
    """Remembers every key for ``PROCESSING_TTL`` seconds of processing time; each record moves the
    clock by one second (``step`` is a function, shared by the copy each subtask gets)."""

    def __init__(self, step) -> None:
        self.step = step

    def open(self, ctx):
        self.seen = ctx.value_state("seen", ttl=PROCESSING_TTL)

    def process(self, key, ctx):
        self.step()
        self.seen.update(True)
        return None


def test_a_ttl_job_over_a_key_space_that_grows_without_end_keeps_bounded_state(tmp_path):
    clock = SteppedWall()
    flow = fs.Dataflow("forever-new-keys", parallelism=1)
    (flow.source(fs.GeneratorSource(lambda i: f"key-{i}", KEYS))
         .key_by(lambda k: k)
         .process(Remember(lambda: clock.step()), name="remember")
         .sink(fs.CallbackSink(lambda r: None)))
    config = JobConfig(mode=Mode.parse("exactly_once"), checkpoint_dir=tmp_path / "chk",
                       checkpoint=CheckpointConfig(interval=0.05), restart=NoRestart(), executor="threads",
                       metrics_port=0)
    runner = JobRunner(flow, config, clock=clock)
    runner.run()
    reported = [ttl for counters in runner.observer.task_counters().values()
                for ttl in counters.operators_ttl if ttl is not None]
    # 3,000 keys were written; a key written at clock t is live until t + 100, so at the final
    # snapshot exactly the last 100 are, and the expired ones were all removed.
    assert reported == [(PROCESSING_TTL, 0)]
    exposed = {(s.name, s.labels.get("operator")): s.value
               for family in text_string_to_metric_families(runner.observer.metrics.exposition().decode())
               for s in family.samples if s.name.startswith("flowstate_operator_state_entries")}
    assert exposed == {("flowstate_operator_state_entries_live", "remember"): PROCESSING_TTL,
                       ("flowstate_operator_state_entries_expired", "remember"): 0}


def test_event_time_ttl_on_a_stream_without_timestamps_is_refused_saying_what_to_do(tmp_path):
    flow = fs.Dataflow("no-time")
    (flow.source(fs.GeneratorSource(lambda i: ("k", i), 10))
         .key_by(lambda r: r[0]).process(LastVisit(), name="visits").sink(fs.CallbackSink(lambda r: None)))
    with pytest.raises(fs.JobFailedError, match=r"event-time ttl, but its stream has no timestamps: call "
                                                r"assign_timestamps\(\.\.\.\) before key_by"):
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="threads"),
        )
