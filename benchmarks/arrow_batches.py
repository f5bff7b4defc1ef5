"""The vectorized path against its floor and against the per-record path (run by hand).

One job, three ways: records ``(key, price, qty)`` over ``--keys`` integer keys; the result is the
sum of ``price * qty`` per key.

(a) **the floor**: no engine, one loop over the same record batches of ``--batch-rows`` rows, each
    computing ``price * qty`` and grouped by key in Arrow (``group_by(...).aggregate``, one thread),
    its partial sums merged into a dict per key; and the same loop with NumPy (``np.bincount`` into
    a dense array, which only integer keys below ``--keys`` allow). The Arrow loop is the floor of a
    group-by over any key type; NumPy's is the floor of this job's dense integer keys.
(b) **flowstate, vectorized**: ``TableSource`` → ``map_batches`` (the product column) →
    ``key_by("key").sum("amount")``: the partial group-by per record batch, the keyed merge into value
    state (heap), an update batch per input batch into a sink that keeps them; exactly-once with
    1 s checkpoints into a temporary directory; at parallelism 1 on threads and, with ``--parallel``,
    at parallelism 2 on threads (each partial batch split by key between two keyed subtasks) and on
    two worker processes (record batches cross as Arrow IPC frames; the rows read from a Parquet
    file, since a ``TableSource`` would ship its table to every worker).
(c) **flowstate, per record**: a generator of the same tuples → ``map`` (the product) →
    ``key_by`` → ``reduce`` (the running sum, an update per record) into the same sink, same
    checkpoints, on ``--per-record`` records (it is slower; its rate is what is compared).

Each variant's times are those of the best of ``--repeat`` passes (a flowstate pass includes
starting and ending the job), the variants interleaved. Two times: wall clock, and the CPU time of
this process (every thread; n/a for the run on worker processes). The machine is shared, so wall
clock varies several-fold with the other work on it while CPU time does not: the ratios are of CPU
time. Every pass checks its result against a group-by of the whole table.

Usage: ``.venv/bin/python benchmarks/arrow_batches.py [--records N] [--per-record N] [--keys K]
[--batch-rows R] [--repeat K] [--parallel] [--write]``; ``--write`` puts the table into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import flowstate as fs  # noqa: E402
from docsection import write_section  # noqa: E402
from flowstate.arrow import ParquetSource, TableSource  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- arrow:begin -->", "<!-- arrow:end -->"
SECTION = f"""## The vectorized path: Arrow record batches

A keyed sum of `price * qty` over integer keys, as (a) a plain loop of Arrow and NumPy group-bys
over the record batches (the floor), (b) flowstate's `map_batches` and batched keyed aggregation
(`src/flowstate/arrow.py`, `src/flowstate/operators/arrow.py`) with exactly-once 1 s checkpoints
and (c) flowstate's per-record path (`map`, `key_by`, `reduce`). Measured by
`benchmarks/arrow_batches.py` (its docstring has the method); reproduce with
`python benchmarks/arrow_batches.py --parallel --write` (`pip install -e '.[bench]'`). The ratios
are of CPU time: on this shared machine the wall clock varies several-fold from pass to pass.
The goal was a vectorized path within 2× of the floor.

{BEGIN}
{END}
"""


def make_table(records: int, keys: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "key": rng.integers(0, keys, records, dtype=np.int64),
        "price": rng.random(records) * 100.0,
        "qty": rng.integers(1, 10, records, dtype=np.int64),
    })


def reference(table: pa.Table) -> dict[int, float]:
    amounts = pc.multiply(table["price"], table["qty"])
    grouped = pa.table({"key": table["key"], "amount": amounts}).group_by("key").aggregate([("amount", "sum")])
    return dict(zip(grouped["key"].to_pylist(), grouped["amount_sum"].to_pylist()))


def check(got: dict[Any, float], expected: dict[int, float], what: str) -> None:
    if got.keys() != expected.keys() or any(not math.isclose(got[k], v, rel_tol=1e-9) for k, v in expected.items()):
        raise SystemExit(f"{what}: the sums differ from the reference")


@dataclass(frozen=True)
class Times:
    wall: float
    cpu: float
    """CPU seconds of this process, every thread (NaN: the work ran in other processes)."""


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.times = Times(time.perf_counter() - self._wall, time.process_time() - self._cpu)


# ---- (a) the floor ----------------------------------------------------------------------------------

def floor_arrow(batches: list[pa.RecordBatch]) -> dict[int, float]:
    sums: dict[int, float] = {}
    get = sums.get
    for batch in batches:
        amount = pc.multiply(batch.column("price"), batch.column("qty"))
        table = pa.table({"key": batch.column("key"), "amount": amount})
        grouped = table.group_by("key", use_threads=False).aggregate([("amount", "sum")])
        for key, value in zip(grouped.column(0).to_pylist(), grouped.column(1).to_pylist()):
            sums[key] = get(key, 0.0) + value
    return sums


def floor_numpy(batches: list[pa.RecordBatch], keys: int) -> dict[int, float]:
    sums = np.zeros(keys)
    for batch in batches:
        key = batch.column("key").to_numpy()
        amount = batch.column("price").to_numpy() * batch.column("qty").to_numpy()
        sums += np.bincount(key, weights=amount, minlength=keys)
    present = np.zeros(keys, dtype=bool)
    for batch in batches:
        present[batch.column("key").to_numpy()] = True
    return {int(k): float(sums[k]) for k in np.flatnonzero(present)}


# ---- (b) and (c): flowstate -------------------------------------------------------------------------

def with_amount(batch: pa.RecordBatch) -> pa.RecordBatch:
    amount = pc.multiply(batch.column("price"), batch.column("qty"))
    return pa.RecordBatch.from_arrays([batch.column("key"), amount], names=["key", "amount"])


class LastSums:
    """A sink function keeping what it gets, and the last update of every key once the job ended
    (``sums()``, outside the timed run; picklable only as a thread sink)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def sums(self) -> dict[Any, float]:
        last: dict[Any, float] = {}
        for item in self.items:
            if isinstance(item, pa.RecordBatch):
                last.update(zip(item.column(0).to_pylist(), item.column(1).to_pylist()))
            else:
                last[item[0]] = item[1]
        return last


def run_vectorized(source: Any, parallelism: int, executor: str) -> tuple[Times, dict[Any, float] | None]:
    flow = fs.Dataflow("arrow-sum", parallelism=parallelism)
    last = LastSums()
    sink: Any = fs.CallbackSink(last.items.append) if executor == "threads" else fs.DiscardSink()
    (flow.source(source, uid="rows")
         .map_batches(with_amount, uid="amount")
         .key_by("key").sum("amount", uid="sum")
         .sink(sink, uid="sink"))
    with tempfile.TemporaryDirectory() as checkpoints:
        with Stopwatch() as watch:
            result = fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=checkpoints, interval="1s", mode="exactly_once"),
                execution=fs.ExecutionOptions(executor=executor),
            )
    assert result.failures == []
    # The CPU time of this process is the job's only when every task is one of its threads.
    times = watch.times if executor == "threads" else Times(watch.times.wall, math.nan)
    return times, (last.sums() if executor == "threads" else None)


def run_per_record(table: pa.Table, records: int) -> tuple[Times, dict[Any, float]]:
    rows = list(zip(*(table.slice(0, records).column(c).to_pylist() for c in ("key", "price", "qty"))))
    flow = fs.Dataflow("record-sum", parallelism=1)
    last = LastSums()
    (flow.source(fs.GeneratorSource(rows.__getitem__, len(rows)), uid="rows")
         .map(lambda r: (r[0], r[1] * r[2]), uid="amount")
         .key_by(lambda r: r[0])
         .reduce(lambda a, b: (a[0], a[1] + b[1]), uid="sum")
         .sink(fs.CallbackSink(last.items.append), uid="sink"))
    with tempfile.TemporaryDirectory() as checkpoints:
        with Stopwatch() as watch:
            result = fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=checkpoints, interval="1s", mode="exactly_once"),
                execution=fs.ExecutionOptions(executor="threads"),
            )
    assert result.failures == []
    return watch.times, last.sums()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=8_000_000)
    parser.add_argument("--per-record", type=int, default=500_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parallel", action="store_true", help="also run (b) at parallelism 2, on threads and on "
                        "worker processes")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    table = make_table(args.records, args.keys)
    batches = table.to_batches(max_chunksize=args.batch_rows)
    expected = reference(table)
    expected_few = reference(table.slice(0, args.per_record))
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    directory = tempfile.TemporaryDirectory()
    parquet = f"{directory.name}/rows.parquet"
    if args.parallel:
        pq.write_table(table, parquet, row_group_size=8 * args.batch_rows)

    def keep(name: str, times: Times) -> None:
        wall[name] = min(wall.get(name, math.inf), times.wall)
        if not math.isnan(times.cpu):
            cpu[name] = min(cpu.get(name, math.inf), times.cpu)

    for _ in range(args.repeat):
        with Stopwatch() as watch:
            got = floor_arrow(batches)
        keep("arrow", watch.times)
        check(got, expected, "the Arrow floor")
        with Stopwatch() as watch:
            got = floor_numpy(batches, args.keys)
        keep("numpy", watch.times)
        check(got, expected, "the NumPy floor")
        times, got_sums = run_vectorized(TableSource(table, batch_rows=args.batch_rows), 1, "threads")
        keep("vectorized", times)
        assert got_sums is not None
        check(got_sums, expected, "flowstate map_batches")
        if args.parallel:
            times, got_sums = run_vectorized(TableSource(table, splits=2, batch_rows=args.batch_rows), 2, "threads")
            keep("vectorized-2", times)
            assert got_sums is not None
            check(got_sums, expected, "flowstate map_batches at parallelism 2")
            keep("processes", run_vectorized(ParquetSource(parquet, batch_rows=args.batch_rows), 2, "processes")[0])
        times, got_sums = run_per_record(table, args.per_record)
        keep("per-record", times)
        check(got_sums, expected_few, "flowstate per record")

    directory.cleanup()

    def records(name: str) -> int:
        return args.per_record if name == "per-record" else args.records

    rows = [
        ("(a) floor: Arrow group-by per batch, partial sums merged in a dict", "arrow"),
        ("(a) floor: NumPy `bincount` per batch into a dense array", "numpy"),
        ("(b) flowstate `map_batches` + `key_by(column).sum`, exactly-once 1 s checkpoints, parallelism 1", "vectorized"),
    ]
    if args.parallel:
        rows.append(("(b) the same, parallelism 2 (threads: two keyed subtasks, each record batch split by key)",
                     "vectorized-2"))
        rows.append(("(b) the same, parallelism 2 on two worker processes (Arrow IPC between them), reading the "
                     "rows from a Parquet file; the time includes starting the workers", "processes"))
    rows.append(("(c) flowstate per record: `map`, `key_by`, `reduce`, exactly-once 1 s checkpoints", "per-record"))
    lines = [
        f"{args.records:,} records ({args.per_record:,} for the per-record path), {args.keys:,} integer keys, "
        f"record batches of {args.batch_rows:,} rows; best of {args.repeat} passes; pyarrow {pa.__version__}, "
        f"NumPy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        "a 2-core machine shared with other work.",
        "",
        "| variant | records/s (wall) | records per CPU-second | CPU per record ÷ the Arrow floor's | "
        "÷ the NumPy floor's |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, name in rows:
        per_cpu = records(name) / cpu[name] if name in cpu else math.nan
        shown_cpu = f"{per_cpu:,.0f}" if name in cpu else "n/a (other processes)"
        versus = [f"{(records('arrow') / cpu['arrow']) / per_cpu:.2f}×" if name in cpu else "n/a",
                  f"{(records('numpy') / cpu['numpy']) / per_cpu:.2f}×" if name in cpu else "n/a"]
        lines.append(f"| {label} | {records(name) / wall[name]:,.0f} | {shown_cpu} | {versus[0]} | {versus[1]} |")
    lines.append("")
    lines.append(
        f"In CPU time the vectorized path cost {cpu['vectorized'] / records('vectorized') * 1e9:.1f} ns a record, "
        f"the Arrow floor {cpu['arrow'] / records('arrow') * 1e9:.1f} ns and the per-record path "
        f"{cpu['per-record'] / records('per-record') * 1e9:.0f} ns: the vectorized path ran "
        f"{(cpu['per-record'] / records('per-record')) / (cpu['vectorized'] / records('vectorized')):.0f}× "
        "cheaper than the per-record path. Wall-clock rates on this shared machine vary several-fold from pass to "
        "pass with the other work on it; CPU time does not, so the ratios are of CPU time.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(DOC, BEGIN, END, text, absent=SECTION)


if __name__ == "__main__":
    main()
