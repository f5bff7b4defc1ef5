"""The vectorized path (``flowstate.arrow``): record batches through ``to_arrow``, ``map_batches``,
``key_by(column)`` and a keyed aggregation, across threads and processes, through crashes.

The end-to-end job: a rate-limited generator whose item *i* is record batch *i* (``ROWS`` rows of an
integer key and an integer value, a function of *i* only) → ``to_arrow()`` → ``map_batches`` (adds
``w = 2 * v``) → ``key_by("k").aggregate(sum of w, count of v)`` → ``to_records()`` → ``FileSink``.
Its committed output is an update stream: one row per key and input batch, ``(k, w_sum, v_count)``.
It is correct when, for every key of the input,

- no two committed rows of the key have the same count (a replayed batch counted twice in the output,
  or an update committed twice, repeats one), and
- the row with the largest count has the key's count and sum of the whole input (a batch
  computation over every row: lost or doubled input changes them).

Every crash test asserts that the job restarted and that its last attempt restored a checkpoint with
id ≥ 1 and read fewer record batches than the input (a restart from scratch also gives the right
output, and proves nothing). Values are integers, so sums are exact whatever the order of merges.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import flowstate as fs
from flowstate.state.keygroups import key_group_of, routing_table, subtask_for_key_group
from flowstate.storage.local import LocalCheckpointStorage

if os.environ.get("CI"):  # the test extra installs pyarrow: without it CI fails here, loudly
    import pyarrow as pa
    import pyarrow.compute as pc
else:
    pa = pytest.importorskip("pyarrow", reason="the vectorized path needs pyarrow (pip install 'flowstate[arrow]')")
    pc = pytest.importorskip("pyarrow.compute")

from flowstate.arrow import BatchAggregate, ColumnKey, MissingExtraError, ParquetSource, TableSource  # noqa: E402
from flowstate.transport.frames import ARROW, BATCH, FrameReader, decode_batch, encode_batch  # noqa: E402

from .jobs import FAST_RESTART, INTERVAL, assert_restored_from_a_checkpoint, committed_values  # noqa: E402

BATCHES = 240
"""Record batches of the generated input."""
ROWS = 40
KEYS = 37
RATE = 200.0
"""Record batches per second and reader: with two readers a run lasts about 0.6 s, several
checkpoint intervals."""


def record_batch(i: int) -> Any:
    """Item ``i`` of the input: rows ``i * ROWS ..`` with key ``n * 7 % KEYS`` and value ``n % 13``."""
    numbers = range(i * ROWS, (i + 1) * ROWS)
    return pa.record_batch({"k": pa.array([n * 7 % KEYS for n in numbers], pa.int64()),
                            "v": pa.array([n % 13 for n in numbers], pa.int64())})


def doubled(batch: Any) -> Any:
    return batch.append_column("w", pc.multiply(batch.column("v"), 2))


def reference() -> dict[int, tuple[int, int]]:
    """Key → (sum of w, count of v) over the whole input: the batch computation."""
    table = pa.Table.from_batches([record_batch(i) for i in range(BATCHES)])
    grouped = table.group_by("k").aggregate([("v", "sum"), ("v", "count")])
    return {k: (2 * s, c) for k, s, c in zip(*(grouped.column(n).to_pylist() for n in ("k", "v_sum", "v_count")))}


def slowly(batch: Any) -> Any:
    """Back-pressure: a keyed task that takes longer per batch than the sources need to send one."""
    time.sleep(0.01)
    return batch


def aggregation_job(output: Path, parallelism: int, *, rate: float | None = RATE, slow: bool = False) -> fs.Dataflow:
    flow = fs.Dataflow("arrow-sum", parallelism=parallelism)
    sums = (flow.source(fs.GeneratorSource(record_batch, BATCHES, splits=2, rate=rate, name="batches"), uid="batches")
                .to_arrow(uid="arrow")
                .map_batches(doubled, uid="doubled")
                .key_by("k").aggregate(("w", "sum"), ("v", "count"), uid="sums"))
    if slow:
        sums = sums.map_batches(slowly, uid="slowly")
    sums.to_records(uid="rows").sink(fs.FileSink(output), uid="out")
    return flow


def updates_problems(rows: list[dict[str, Any]], expected: dict[int, tuple[int, int]]) -> list[str]:
    """What is wrong with the committed update stream ``rows`` (see the module); empty when right."""
    problems = []
    by_key: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(row["k"], []).append(row)
    for key, (total, count) in expected.items():
        updates = by_key.pop(key, [])
        if not updates:
            problems.append(f"key {key}: no update committed")
            continue
        repeated = [c for c, n in Counter(u["v_count"] for u in updates).items() if n > 1]
        if repeated:
            problems.append(f"key {key}: counts {repeated} committed more than once")
        last = max(updates, key=lambda u: u["v_count"])
        if (last["w_sum"], last["v_count"]) != (total, count):
            problems.append(f"key {key}: last update {last}, the batch computation ({total}, {count})")
    problems.extend(f"key {key}: not in the input" for key in by_key)
    return problems


def assert_the_batch_result(output: Path) -> None:
    problems = updates_problems(committed_values(output), reference())
    assert not problems, problems[:5]


# ---- the oracle can fail ---------------------------------------------------------------------------

def test_the_oracle_refuses_a_replayed_update_a_lost_one_and_a_wrong_total():
    expected = {1: (10, 2), 2: (4, 1)}
    right = [{"k": 1, "w_sum": 6, "v_count": 1}, {"k": 2, "w_sum": 4, "v_count": 1}, {"k": 1, "w_sum": 10, "v_count": 2}]
    assert updates_problems(right, expected) == []
    assert updates_problems([*right, right[0]], expected)  # an update committed twice
    assert updates_problems(right[:2], expected)  # the last update of key 1 lost
    assert updates_problems(right[1:], expected) == []  # an earlier update alone may be missing from the sink
    assert updates_problems([*right, {"k": 1, "w_sum": 16, "v_count": 3}], expected)  # a batch counted twice
    assert updates_problems(right[:1] + right[2:], expected)  # key 2 missing


# ---- pieces ----------------------------------------------------------------------------------------

def test_a_keyed_aggregation_computes_each_function_from_its_partial_aggregates():
    agg = BatchAggregate.of("k", [("v", "mean"), ("v", "sum"), ("v", "count"), ("w", "max")])
    assert [p.name for p in agg.parts] == ["v_sum", "v_count", "w_max"]
    assert agg.plan() == [(0, 1), (0, -1), (1, -1), (2, -1)]
    assert agg.output_names() == ["v_mean", "v_sum", "v_count", "w_max"]


@pytest.mark.parametrize("targets", [2, 3])
@pytest.mark.parametrize("keys", [["a", "b", "c", None, "d", "a", "é", "b"] * 5, [f"key-{i}" for i in range(40)]],
                         ids=["repeated-keys", "a-key-per-row"])
def test_key_by_column_sends_each_row_where_the_per_record_path_sends_its_key(targets, keys):
    maxp = 128
    batch = pa.record_batch({"k": pa.array(keys), "n": pa.array(range(len(keys)))})

    buckets = ColumnKey("k").split_batch([batch], routing_table(maxp, targets), maxp, targets)

    got = {}
    for target, items in enumerate(buckets):
        for item in items:
            for row in item.to_pylist():
                got[row["n"]] = target
    assert got == {n: subtask_for_key_group(key_group_of(k, maxp), maxp, targets) for n, k in enumerate(keys)}


def test_a_key_that_is_not_a_key_fails_the_exchange_naming_it():
    batch = pa.record_batch({"k": pa.array([1.0, float("nan")])})
    with pytest.raises(TypeError, match="NaN is not a key"):
        ColumnKey("k").split_batch([batch], routing_table(128, 2), 128, 2)


def test_a_key_column_of_datetimes_fails_the_aggregation_naming_key_by_at_parallelism_1():
    import datetime

    stamps = pa.array([datetime.datetime(2026, 1, 1, h) for h in range(3)], pa.timestamp("s"))
    batch = pa.record_batch({"at": stamps, "v": pa.array([1, 2, 3])})
    with pytest.raises(fs.JobFailedError, match=r"operator 'key_by' failed on record datetime.datetime\(2026, 1, 1, 0, 0\)"
                                                r".*keys of type datetime are not supported"):
        run_collect(lambda f: f.source(TableSource(batch)).key_by("at").sum("v"))


def test_record_batches_cross_processes_as_one_arrow_ipc_frame():
    items = [record_batch(0), record_batch(1).slice(5, 10)]

    frame = encode_batch(3, 1, items)
    [(kind, gate, channel, payload)] = FrameReader(_reading(frame)).read()

    assert (kind, gate, channel) == (ARROW, 3, 1)
    assert [b.equals(a) for a, b in zip(items, decode_batch(kind, payload))] == [True, True]


def test_record_batches_of_different_schemas_are_pickled():
    items = [record_batch(0), doubled(record_batch(1))]
    frame = encode_batch(0, 0, items)
    [(kind, _, _, payload)] = FrameReader(_reading(frame)).read()
    assert kind == BATCH
    assert [b.equals(a) for a, b in zip(items, decode_batch(kind, payload))] == [True, True]


def _reading(data: bytes) -> Any:
    view = memoryview(data)
    state = {"at": 0}

    def recv_into(buffer: memoryview) -> int:
        n = min(len(buffer), len(view) - state["at"])
        buffer[:n] = view[state["at"]:state["at"] + n]
        state["at"] += n
        return n

    return recv_into


# ---- the optional extra ----------------------------------------------------------------------------

def test_the_core_install_never_imports_pyarrow(tmp_path):
    script = f"""
import sys
import flowstate as fs
flow = fs.Dataflow("plain")
(flow.source(fs.GeneratorSource(lambda i: i, 100)).map(lambda x: (x % 3, x)).key_by(lambda r: r[0])
     .reduce(lambda a, b: (a[0], a[1] + b[1])).sink(fs.FileSink({str(tmp_path / 'out')!r})))
fs.run(flow, checkpoint_dir={str(tmp_path / 'chk')!r}, interval="50ms")
assert "pyarrow" not in sys.modules, "pyarrow was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_without_pyarrow_map_batches_fails_with_one_line_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    flow = fs.Dataflow("no-arrow")
    stream = flow.source(fs.GeneratorSource(lambda i: i, 10))

    with pytest.raises(MissingExtraError) as raised:
        stream.map_batches(doubled)

    message = str(raised.value)
    assert "\n" not in message
    assert message == "map_batches needs pyarrow, which is not installed: pip install 'flowstate[arrow]'"
    assert isinstance(raised.value, ImportError)


# ---- operators on their own ------------------------------------------------------------------------

def run_collect(flow_of, **settings) -> list[Any]:
    out: list[Any] = []
    flow = fs.Dataflow("collect")
    flow_of(flow).sink(out.append)
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode="none"),
        recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
        **settings,
    )
    return out


def test_to_arrow_turns_each_batch_of_dicts_or_tuples_into_one_record_batch_and_to_records_back():
    records = [{"k": i % 3, "name": f"n{i}"} for i in range(10)]
    back = run_collect(lambda f: f.source(fs.GeneratorSource(records.__getitem__, 10)).to_arrow().to_records(),
                       execution=fs.ExecutionOptions(batch_size=4))
    assert back == records

    schema = pa.schema([("k", pa.int32()), ("name", pa.string())])
    tuples = [(r["k"], r["name"]) for r in records]
    items = run_collect(lambda f: f.source(fs.GeneratorSource(tuples.__getitem__, 10)).to_arrow(schema),
                        execution=fs.ExecutionOptions(batch_size=4))
    assert [item.num_rows for item in items] == [4, 4, 2]
    assert all(item.schema == schema for item in items)


def test_a_map_batches_function_that_returns_no_record_batch_fails_naming_the_operator():
    with pytest.raises(fs.JobFailedError, match=r"operator 'columns' failed on record <record batch of 40 rows \(k: int64, v: int64\)>: "
                       r"TypeError: the map_batches function returned list"):
        run_collect(lambda f: f.source(TableSource(record_batch(0))).map_batches(lambda b: b.to_pylist(),
                                                                                  name="columns"))


def test_map_batches_on_python_records_says_to_call_to_arrow_first():
    with pytest.raises(fs.JobFailedError, match=r"call to_arrow\(\) on a stream of Python records first"):
        run_collect(lambda f: f.source(fs.GeneratorSource(lambda i: i, 3)).map_batches(doubled))


def test_aggregate_refuses_an_unknown_function_when_the_graph_is_written():
    flow = fs.Dataflow("bad")
    keyed = flow.source(TableSource(record_batch(0))).key_by("k")
    with pytest.raises(fs.GraphError, match="median"):
        keyed.aggregate(("v", "median"))


def test_a_parquet_source_reads_every_row_group_and_the_aggregation_matches_arrow(tmp_path):
    import pyarrow.parquet as pq

    table = pa.Table.from_batches([record_batch(i) for i in range(20)])
    pq.write_table(table.slice(0, 500), tmp_path / "a.parquet", row_group_size=128)
    pq.write_table(table.slice(500), tmp_path / "b.parquet", row_group_size=100)
    source = ParquetSource(str(tmp_path / "*.parquet"), batch_rows=50)
    assert len(source.splits()) == 4 + 3

    out = run_collect(lambda f: f.source(source).key_by("k").aggregate(("v", "sum"), ("v", "mean"), ("v", "min"))
                      .to_records(), execution=fs.ExecutionOptions(parallelism=2))

    last: dict[int, dict[str, Any]] = {}
    for row in out:
        last[row["k"]] = row  # each key's updates come from one subtask, in order
    grouped = table.group_by("k").aggregate([("v", "sum"), ("v", "mean"), ("v", "min")])
    assert last == {row["k"]: row for row in grouped.to_pylist()}


def test_a_row_range_reader_resumes_at_the_row_its_snapshot_names():
    table = pa.Table.from_batches([record_batch(i) for i in range(3)])
    source = TableSource(table, splits=2, batch_rows=25)
    reader = source.build_reader(["rows-0", "rows-1"], None)
    first = reader.poll(10)
    snapshot = reader.snapshot()
    assert snapshot == {"rows-0": 25, "rows-1": 0}

    rest = []
    resumed = source.build_reader(["rows-0", "rows-1"], pickle.loads(pickle.dumps(snapshot)))
    while (got := resumed.poll(10)) is not None:
        rest.extend(got)
    assert pa.Table.from_batches(first + rest).equals(table)


# ---- end to end: exactly-once through crashes -----------------------------------------------------

CASES = [
    pytest.param(1, "heap", "threads", "exactly_once", id="p1-heap-threads"),
    pytest.param(2, "heap", "threads", "exactly_once", id="p2-heap-threads"),
    pytest.param(2, "heap", "processes", "exactly_once", id="p2-heap-processes"),
    pytest.param(1, "rocksdb", "threads", "exactly_once", id="p1-rocksdb-threads"),
    pytest.param(2, "rocksdb", "processes", "exactly_once", id="p2-rocksdb-processes"),
    # In-flight record batches are channel state: they are in the checkpoint and replayed.
    pytest.param(2, "heap", "threads", "unaligned", id="p2-heap-threads-unaligned"),
    pytest.param(2, "heap", "processes", "unaligned", id="p2-heap-processes-unaligned"),
]


def backend_settings(backend: str, tmp_path: Path) -> dict[str, Any]:
    return {"state": fs.StateOptions(backend="rocksdb", directory=tmp_path / "rocksdb")} if backend == "rocksdb" else {}


@pytest.mark.parametrize(("parallelism", "backend", "executor", "mode"), CASES)
def test_a_crash_mid_input_restores_a_checkpoint_and_the_output_is_the_batch_result(
    parallelism, backend, executor, mode, dirs, tmp_path,
):
    # batch_size=1: one record batch per poll, so the failpoint's hits follow the input. Each record
    # batch is one hit of its source task and one of each keyed task it reaches (two at most).
    failpoints = fs.Failpoints({"operator.process": f"raise@{BATCHES + 1}"})

    result = fs.run(
        aggregation_job(dirs.output, parallelism),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, mode=mode),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(executor=executor, batch_size=1),
        failpoints=failpoints,
        **backend_settings(backend, tmp_path),
    )

    assert failpoints.fired("operator.process") == 1
    assert_restored_from_a_checkpoint(result, BATCHES)
    assert_the_batch_result(dirs.output)


def test_a_worker_killed_with_sigkill_is_replaced_and_the_output_is_the_batch_result(dirs):
    # Under the processes executor the hit that fires is in a worker process, which kills itself.
    failpoints = fs.Failpoints({"operator.process": f"kill@{BATCHES + 1}"})

    result = fs.run(
        aggregation_job(dirs.output, 2),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(executor="processes", batch_size=1),
        failpoints=failpoints,
    )

    assert any("SIGKILL" in failure for failure in result.failures), result.failures
    assert_restored_from_a_checkpoint(result, BATCHES)
    assert_the_batch_result(dirs.output)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
@pytest.mark.parametrize("backend", ["heap", "rocksdb"])
def test_accumulators_restored_at_another_parallelism_give_the_batch_result(before, after, backend, dirs, tmp_path):
    with pytest.raises(fs.JobFailedError, match="InjectedFailure"):
        fs.run(
            aggregation_job(dirs.output, before),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="threads"),
            failpoints=fs.Failpoints({"coordinator.metadata_before_notify": "raise@3"}),
            **backend_settings(backend, tmp_path),
        )

    result = fs.run(
        aggregation_job(dirs.output, after, rate=None),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(executor="threads"),
        **backend_settings(backend, tmp_path),
    )

    assert result.restored_from == [3]
    assert result.records < BATCHES and result.records_total == BATCHES, result
    assert_the_batch_result(dirs.output)


def test_in_flight_record_batches_of_an_unaligned_checkpoint_are_split_by_key_at_another_parallelism(dirs):
    with pytest.raises(fs.JobFailedError, match="InjectedFailure"):
        fs.run(
            aggregation_job(dirs.output, 2, slow=True),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, mode="unaligned"),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="threads", batch_size=1),
            failpoints=fs.Failpoints({"coordinator.metadata_before_notify": "raise@3"}),
        )
    [restored] = [info.metadata for info in LocalCheckpointStorage(dirs.checkpoints).list_checkpoints()
                  if info.status == "completed"][-1:]
    assert restored.checkpoint_id == 3
    assert sum(task.channel_state_bytes for task in restored.tasks) > 0, "checkpoint 3 holds no in-flight batches"

    result = fs.run(
        aggregation_job(dirs.output, 3, rate=None),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, mode="unaligned"),
        execution=fs.ExecutionOptions(executor="threads"),
    )

    assert result.restored_from == [3]
    assert result.records < BATCHES and result.records_total == BATCHES, result
    assert_the_batch_result(dirs.output)


def test_committed_rows_are_json_of_the_update_stream(dirs):
    fs.run(
        aggregation_job(dirs.output, 1, rate=None),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )
    first = json.loads(next(p for p in sorted(dirs.output.iterdir()) if not p.name.startswith(".")).open().readline())
    assert set(first) == {"k", "w_sum", "v_count"}
    assert_the_batch_result(dirs.output)
