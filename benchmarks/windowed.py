"""Windowed variants of the reference job (../shared/bench/README.md), one JSON line per run.

``tumbling``: the lines of ``events_5m_10k.txt``; line ``n`` has the timestamp ``n / 100 000`` s
(so 5 M lines span 50 s of event time, 100,000 records per window); 1 s tumbling windows count the
records per key (``aggregate(count())``), into a sink that only counts. ``sliding``: the same with
1 s windows sliding by 500 ms (each record in two windows). ``session``: the same lines
with a 10 s pause in event time after every 500,000, session windows (gap 0.5 s) counting per key:
each key's session closes at every pause.

The lines are read into memory first and served by a ``GeneratorSource`` (record ``n`` is
``(timestamp, key)``), so that the timestamp follows the line number on a replay too; reading the
file is not part of the measured time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

import flowstate as fs


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def __call__(self, records: list[Any]) -> None:
        self.total += len(records)


def build(kind: str, lines: list[str], counter: Counter, parallelism: int) -> fs.Dataflow:
    if kind in ("tumbling", "sliding"):
        def record(n: int) -> tuple[float, str]:
            return (n * 1e-5, lines[n])
        window: Any = fs.TumblingWindows("1s") if kind == "tumbling" else fs.SlidingWindows("1s", "500ms")
    else:
        def record(n: int) -> tuple[float, str]:
            return (n * 1e-5 + 10.0 * (n // 500_000), lines[n])
        window = fs.SessionWindows(gap="500ms")
    flow = fs.Dataflow(f"windowed-{kind}", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(record, len(lines), name="lines"), parallelism=1)
         .assign_timestamps(lambda r: r[0])
         .key_by(lambda r: r[1])
         .window(window)
         .aggregate(fs.aggregates.count())
         .sink(fs.BatchCallbackSink(counter, name="count")))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--kind", default="tumbling", choices=["tumbling", "sliding", "session"])
    parser.add_argument("--mode", default="exactly_once")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--state-backend", default="heap")
    args = parser.parse_args()
    with open(args.input, encoding="utf-8") as f:
        lines = f.read().splitlines()
    counter = Counter()
    flow = build(args.kind, lines, counter, args.parallelism)
    chk = tempfile.mkdtemp(prefix="flowstate-bench-")
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        started = time.perf_counter()
        result = fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(
                mode=args.mode,
                checkpoint_dir=chk if args.mode != "none" else None,
                interval=args.interval,
            ),
            state=fs.StateOptions(backend=args.state_backend),
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(chk, ignore_errors=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime - before.ru_utime) + (usage.ru_stime - before.ru_stime)
    json.dump({"kind": args.kind, "mode": args.mode, "parallelism": args.parallelism, "records": result.records,
               "windows": counter.total, "seconds": seconds, "records_per_s": result.records / seconds,
               "cpu_ns_per_record": cpu / max(result.records, 1) * 1e9,
               "checkpoints": result.checkpoints_completed}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
