"""Record the checkpoint histories the doctor's tests read, from real runs of small jobs.

Each history is the ``_history.jsonl`` a run wrote into its checkpoint directory, copied to
``tests/observe/histories/<name>.jsonl``. Run ``python tests/observe/record_histories.py [NAME …]``
(about a minute for all); the names:

- ``healthy``: a keyed count well below what the machine can do: nothing to diagnose.
- ``backpressure``: the throttled scenario of ``benchmarks/backpressure.py``, aligned, with a timeout
  long enough for checkpoints to complete: barriers wait behind queued records.
- ``expired``: the same scenario with a checkpoint timeout shorter than the barriers' wait.
- ``declined``: the same scenario, unaligned, with a ``max_inflight_bytes`` too small for what is in
  flight: tasks decline.
- ``skew``: nine records in ten carry the same key: the subtask that owns it holds back every checkpoint.
- ``sync``: RocksDB state written fast: each snapshot flushes large write buffers in the synchronous part.
- ``upload``: a heap state of 150 000 large values, uncompressed: writing it dominates.
- ``growth``: a new key for every record: the state grows checkpoint after checkpoint.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "histories"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import flowstate as fs  # noqa: E402
from flowstate.observe.history import HISTORY_FILE  # noqa: E402


def _keep(name: str, directory: str | Path) -> None:
    OUT.mkdir(exist_ok=True)
    shutil.copyfile(Path(directory) / HISTORY_FILE, OUT / f"{name}.jsonl")
    print(f"recorded {name}: {sum(1 for _ in open(OUT / f'{name}.jsonl'))} events", flush=True)


def _run(name: str, flow: fs.Dataflow, *, interval: float, timeout: float = 600.0, batch_size: int = 2048,
         state: fs.StateOptions | None = None) -> None:
    directory = tempfile.mkdtemp(prefix=f"flowstate-history-{name}-")
    try:
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=directory, interval=interval, timeout=timeout),
            state=state,
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="threads", batch_size=batch_size),
        )
        _keep(name, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, record: object, ctx: fs.RuntimeContext) -> object:
        n = self.count.value() + 1
        self.count.update(n)
        yield n


def healthy() -> None:
    flow = fs.Dataflow("healthy", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: f"k{i % 500}", count=60_000, splits=2, rate=5_000))
         .key_by(lambda k: k).process(Count()).sink(lambda r: None))
    _run("healthy", flow, interval=0.4)


def _backpressure(name: str, mode: str, timeout: float, **extra: object) -> None:
    """One run of the benchmark's throttled scenario; its checkpoint directory is kept long enough
    to copy the history out of it."""
    import backpressure

    real = shutil.rmtree

    def keep_then_remove(path: str, ignore_errors: bool = False) -> None:
        _keep(name, path)
        real(path, ignore_errors=True)

    backpressure.shutil = types.SimpleNamespace(rmtree=keep_then_remove)  # type: ignore[assignment]
    for key, value in extra.items():
        setattr(backpressure, key, value)
    config = backpressure.Config(name, mode, timeout=timeout)
    backpressure.run_job("throttled", config, seconds=8.0, rate=60_000, fraction=0.5)


def backpressure_history() -> None:
    _backpressure("backpressure", "exactly_once", 60.0)


def expired() -> None:
    _backpressure("expired", "exactly_once", 0.3)


def declined() -> None:
    _backpressure("declined", "unaligned", 60.0, MAX_INFLIGHT_BYTES=20_000)


def skew() -> None:
    class Slow(fs.KeyedProcessFunction):
        def open(self, ctx: fs.RuntimeContext) -> None:
            self.count = ctx.value_state("count", default=0)

        def process(self, record: object, ctx: fs.RuntimeContext) -> object:
            n = self.count.value() + 1
            self.count.update(n)
            sum(range(2000))  # some work per record
            yield n

    flow = fs.Dataflow("skew", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: "hot" if i % 10 else f"k{i % 1000}", count=160_000, splits=2, rate=20_000))
         .key_by(lambda k: k).process(Slow()).sink(lambda r: None))
    _run("skew", flow, interval=0.5, timeout=60, batch_size=1024)


def sync() -> None:
    class Wide(fs.KeyedProcessFunction):
        def open(self, ctx: fs.RuntimeContext) -> None:
            self.value = ctx.value_state("value", default=None)

        def process(self, record: int, ctx: fs.RuntimeContext) -> object:
            self.value.update((record, "v" * 1000))
            return None

    flow = fs.Dataflow("sync", parallelism=1)
    (flow.source(fs.GeneratorSource(lambda i: i, count=300_000, splits=1, rate=60_000))
         .key_by(lambda k: k).process(Wide()).sink(lambda r: None))
    _run("sync", flow, interval=1.0, state=fs.StateOptions(backend="rocksdb"))


def upload() -> None:
    class Wide(fs.KeyedProcessFunction):
        def open(self, ctx: fs.RuntimeContext) -> None:
            self.value = ctx.value_state("value", default=None)

        def process(self, record: int, ctx: fs.RuntimeContext) -> object:
            self.value.update((record, f"{record:0400d}"))
            return None

    flow = fs.Dataflow("upload", parallelism=1)
    (flow.source(fs.GeneratorSource(lambda i: i % 150_000, count=900_000, splits=1, rate=120_000))
         .key_by(lambda k: k).process(Wide()).sink(lambda r: None))
    _run("upload", flow, interval=0.2, state=fs.StateOptions(compression="none"))


def growth() -> None:
    flow = fs.Dataflow("growth", parallelism=1)
    (flow.source(fs.GeneratorSource(lambda i: i, count=120_000, splits=1, rate=15_000))
         .key_by(lambda k: k).process(Count()).sink(lambda r: None))
    _run("growth", flow, interval=0.5)


RECORDERS: dict[str, Callable[[], None]] = {
    "healthy": healthy, "backpressure": backpressure_history, "expired": expired, "declined": declined,
    "skew": skew, "sync": sync, "upload": upload, "growth": growth,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(RECORDERS):
        started = time.monotonic()
        RECORDERS[name]()
        print(f"  {time.monotonic() - started:.1f} s", flush=True)
