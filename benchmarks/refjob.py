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


class CountingSink:
    """Counts the records it receives; nothing is written."""

    name = "count"
    transactional = False

    def __init__(self) -> None:
        self.total = 0

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any) -> CountingWriter:
        return CountingWriter(self)


class CountingWriter:
    def __init__(self, sink: CountingSink) -> None:
        self.sink = sink

    def write_batch(self, records: list[Any]) -> None:
        self.sink.total += len(records)

    def pre_commit(self, checkpoint_id: int) -> None:
        pass

    def snapshot(self) -> None:
        return None

    def commit(self, checkpoint_id: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, key: str, ctx: fs.RuntimeContext):  # type: ignore[no-untyped-def]
        n = self.count.value() + 1
        self.count.update(n)
        yield (key, n)


def build(path: str, parallelism: int, sink: CountingSink) -> fs.Dataflow:
    flow = fs.Dataflow("reference-count", parallelism=parallelism)
    (flow.source(fs.FileSource(path), parallelism=1)
         .key_by(lambda key: key)
         .process(Count())
         .sink(sink))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--mode", default="exactly_once")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--interval", default="1s")
    args = parser.parse_args()
    sink = CountingSink()
    flow = build(args.input, args.parallelism, sink)
    chk = tempfile.mkdtemp(prefix="flowstate-bench-")
    try:
        started = time.perf_counter()
        result = fs.run(flow, mode=args.mode, checkpoint_dir=chk if args.mode != "none" else None,
                        interval=args.interval)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(chk, ignore_errors=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({"records": result.records, "out": sink.total, "seconds": seconds,
               "records_per_s": result.records / seconds, "checkpoints": result.checkpoints_completed,
               "peak_rss_mib": peak_kib / 1024}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
