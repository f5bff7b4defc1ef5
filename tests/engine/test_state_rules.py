"""The rules of keys and state values hold end to end: one job set gives identical output on every
state backend, executor and parallelism, also under a failure.

The job set (one dataflow, three pipelines, three ``FileSink``s):

- **tally**: a word count whose state is mutable objects changed in place and never stored again: a
  dict in value state, a dict item of list state, a list in map state (rule 2 of
  ``flowstate.state.values``: such a change is stored). It emits ``(word, n, n, n)``.
- **days**: ``datetime.date`` keys (``flowstate.state.keys``, rule 1), emitting ``(iso date, n)``.
- **numbers**: keys ``1``, ``1.0``, ``True``, ``2``, ``2.0``, ``"1"`` (rule 2: equal keys are one key),
  emitting ``(the key as a float or a string, n)``.

Each runs on heap and RocksDB × (threads at parallelism 1, worker processes at parallelism 2). Every
output must equal the batch reference, so every run equals every other. A key that is not a key is
refused with the same error everywhere.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import flowstate as fs
from flowstate.errors import JobFailedError

from .jobs import committed_values, difference, line

WORD_LINES = 300
DAYS = [datetime.date(2024, 2, 27) + datetime.timedelta(days=i) for i in range(5)]
NUMBERS: list[Any] = [1, 1.0, True, 2, 2.0, "1"]
RECORDS = 240


class Tally(fs.KeyedProcessFunction):
    """Counts a word three times over, each count in a mutable object changed in place."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.acc = ctx.value_state("acc", default={"n": 0})
        self.items = ctx.list_state("items")
        self.per = ctx.map_state("per")

    def process(self, word: str, ctx: fs.RuntimeContext) -> Iterable[tuple[str, int, int, int]]:
        acc = self.acc.value()
        if acc["n"] == 0:
            self.acc.update(acc)  # the default is a fresh copy: stored once, then changed in place
        acc["n"] += 1
        items = self.items.get()
        if not items:
            self.items.add({"n": 0})
            items = self.items.get()
        items[0]["n"] += 1
        counts = self.per.get("n")
        if counts is None:
            self.per.put("n", [0])
            counts = self.per.get("n")
        counts[0] += 1
        yield (word, acc["n"], items[0]["n"], counts[0])


class Count(fs.KeyedProcessFunction):
    """Emits ``(shown(key), how many records of this key so far)``."""

    def __init__(self, shown: Any) -> None:
        self.shown = shown

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, record: Any, ctx: fs.RuntimeContext) -> Iterable[tuple[Any, int]]:
        n = self.count.value() + 1
        self.count.update(n)
        yield (self.shown(ctx.current_key), n)


def day(i: int) -> tuple[datetime.date, int]:
    return (DAYS[i % len(DAYS)], i)


def number(i: int) -> tuple[Any, int]:
    return (NUMBERS[i % len(NUMBERS)], i)


def shown_number(key: Any) -> Any:
    return key if isinstance(key, str) else float(key)


def job_set(out: Path, parallelism: int, *, slow: bool = False) -> fs.Dataflow:
    """The job set; ``slow`` limits the rate of every source, so that a run lasts about a second:
    long enough for several checkpoints before a failure injected in its middle, also on a loaded
    machine."""
    rate = 150.0 if slow else None
    record_rate = 120.0 if slow else None
    flow = fs.Dataflow("state-rules", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(line, WORD_LINES, splits=4, rate=rate, name="lines"), uid="lines")
         .flat_map(str.split, uid="words")
         .key_by(lambda word: word)
         .process(Tally(), uid="tally")
         .sink(fs.FileSink(out / "tally"), uid="tally-out"))
    (flow.source(fs.GeneratorSource(day, RECORDS, splits=2, rate=record_rate, name="days"), uid="days")
         .key_by(lambda record: record[0])
         .process(Count(datetime.date.isoformat), uid="per-day")
         .sink(fs.FileSink(out / "days"), uid="days-out"))
    (flow.source(fs.GeneratorSource(number, RECORDS, splits=2, rate=record_rate, name="numbers"), uid="numbers")
         .key_by(lambda record: record[0])
         .process(Count(shown_number), uid="per-number")
         .sink(fs.FileSink(out / "numbers"), uid="numbers-out"))
    return flow


def running_counts(keys: Iterable[Any]) -> Counter[tuple[Any, ...]]:
    """Every ``(key, n)`` for ``n`` in ``1 .. count(key)``: what a running count emits in any order."""
    counts = Counter(keys)
    return Counter((key, n) for key, c in counts.items() for n in range(1, c + 1))


def reference() -> dict[str, Counter[tuple[Any, ...]]]:
    """The batch computation of the job set, by plain Python, sharing nothing with the engine but
    ``line``: equal keys are counted together (a ``Counter`` is a dict)."""
    words = [word for i in range(WORD_LINES) for word in line(i).split()]
    return {
        "tally": Counter({(w, n, n, n): c for (w, n), c in running_counts(words).items()}),
        "days": running_counts(d.isoformat() for d, _ in map(day, range(RECORDS))),
        "numbers": running_counts(shown_number(k) for k, _ in map(number, range(RECORDS))),
    }


def output(out: Path) -> dict[str, Counter[tuple[Any, ...]]]:
    return {name: Counter(tuple(r) for r in committed_values(out / name)) for name in ("tally", "days", "numbers")}


def assert_matches_reference(out: Path) -> None:
    actual, expected = output(out), reference()
    for name in expected:
        assert actual[name] == expected[name], f"{name}: {difference(actual[name].elements(), expected[name])}"


CONFIGS = [
    pytest.param(backend, executor, parallelism, id=f"{backend}-{executor}-p{parallelism}")
    for backend, executor, parallelism in (
        ("heap", "threads", 1), ("heap", "processes", 2), ("rocksdb", "threads", 1), ("rocksdb", "processes", 2),
    )
]


def run_job_set(tmp_path: Path, backend: str, executor: str, parallelism: int) -> None:
    result = fs.run(
        job_set(tmp_path / "out", parallelism),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms"),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "rocksdb"),
        execution=fs.ExecutionOptions(executor=executor),
    )
    assert result.executor == executor
    assert result.checkpoints_completed >= 1
    assert_matches_reference(tmp_path / "out")


@pytest.mark.parametrize(("backend", "executor", "parallelism"), CONFIGS)
def test_the_job_set_gives_the_batch_reference_on_every_backend_executor_and_parallelism(
    backend, executor, parallelism, tmp_path,
):
    run_job_set(tmp_path, backend, executor, parallelism)


class NotAKey(fs.KeyedProcessFunction):
    def process(self, record: Any, ctx: fs.RuntimeContext) -> Iterable[Any]:
        yield record


@pytest.mark.parametrize(("backend", "executor", "parallelism"), CONFIGS)
def test_a_key_that_is_not_a_key_is_refused_the_same_way_everywhere(backend, executor, parallelism, tmp_path):
    flow = fs.Dataflow("not-a-key", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(lambda i: i, 10, splits=2, name="ints"))
         .key_by(lambda i: datetime.datetime(2024, 1, 1, i))
         .process(NotAKey())
         .sink(fs.FileSink(tmp_path / "out")))
    with pytest.raises(JobFailedError) as failed:
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
            state=fs.StateOptions(backend=backend, directory=tmp_path / "rocksdb"),
            recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(0, 0.0)),
            execution=fs.ExecutionOptions(executor=executor),
        )
    message = str(failed.value)
    assert "operator 'key_by' failed" in message, message
    assert "keys of type datetime are not supported" in message, message


SOURCE_TASKS = 3 * 2
FAILURE = f"raise@{2 * SOURCE_TASKS + 1}"
"""The failure: on the first hit of ``source.before_snapshot`` in checkpoint 3 (every source task hits
it once per checkpoint), so checkpoints 1 and 2 completed before it (one checkpoint in flight at a
time), while the slow sources are still reading."""


@pytest.mark.parametrize("backend", ["heap", "rocksdb"])
def test_the_tally_is_exactly_once_under_a_failure_on_heap_and_rocksdb(backend, tmp_path):
    failpoints = fs.Failpoints({"source.before_snapshot": FAILURE})
    result = fs.run(
        job_set(tmp_path / "out", 2, slow=True),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="30ms"),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "rocksdb"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=failpoints,
    )
    assert failpoints.fired("source.before_snapshot") == 1
    assert result.restarts == 1 and result.restored_from[-1] is not None and result.restored_from[-1] >= 1, result
    assert result.records < WORD_LINES + 2 * RECORDS, "the last attempt read the whole input: a restart from scratch"
    assert_matches_reference(tmp_path / "out")
