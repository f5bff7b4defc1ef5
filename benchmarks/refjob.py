"""The shared reference job (../shared/bench/README.md): a keyed running count.

Read the file line by line, key by the line, keep a count per key in keyed state, emit (key, count)
for every record into a sink that only counts. Run as a script it prints one JSON line of results;
``run.py`` starts it once per measurement so that each figure is a whole, fresh process.
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
    """The sink of the reference job: counts the records it receives, writes nothing."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, records: list[Any]) -> None:
        self.total += len(records)


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, key: str, ctx: fs.RuntimeContext):  # type: ignore[no-untyped-def]
        n = self.count.value() + 1
        self.count.update(n)
        yield (key, n)


def build(path: str, parallelism: int, counter: Counter) -> fs.Dataflow:
    flow = fs.Dataflow("reference-count", parallelism=parallelism)
    (flow.source(fs.FileSource(path), parallelism=1)
         .key_by(lambda key: key)
         .process(Count())
         .sink(fs.BatchCallbackSink(counter, name="count")))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--mode", default="exactly_once")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--interval", default="1s")
    args = parser.parse_args()
    counter = Counter()
    flow = build(args.input, args.parallelism, counter)
    chk = tempfile.mkdtemp(prefix="flowstate-bench-")
    try:
        started = time.perf_counter()
        result = fs.run(flow, mode=args.mode, checkpoint_dir=chk if args.mode != "none" else None,
                        interval=args.interval)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(chk, ignore_errors=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss
    json.dump({"records": result.records, "out": counter.total, "seconds": seconds,
               "cpu_ns_per_record": (usage.ru_utime + usage.ru_stime) / max(result.records, 1) * 1e9,
               "records_per_s": result.records / seconds, "checkpoints": result.checkpoints_completed,
               "peak_rss_mib": peak_kib / 1024}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
