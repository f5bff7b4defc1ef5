"""The shared reference job (../shared/bench/README.md): a keyed running count.

Read the file line by line, key by the line, keep a count per key in keyed state, emit (key, count)
for every record into a sink that only counts. Run as a script it prints one JSON line of results;
``run.py`` starts it once per measurement so that each figure is a whole, fresh process.

Every operator runs at ``--parallelism``, the source too: ``FileSource`` cuts the file into byte
ranges, so at parallelism 2 two source subtasks read it. The counting sink is a real sink (not a
callback of this process), so that a job at parallelism > 1 runs on the processes executor, one
worker per core; each writer leaves its count in a file that this process adds up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flowstate as fs


class CountingSink:
    """The sink of the reference job: counts the records it receives, writes nothing but its count,
    into ``directory`` when it is closed (a worker process's writer cannot hand it back otherwise)."""

    name = "count"
    transactional = False

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> CountingWriter:
        return CountingWriter(self.directory, subtask)

    def total(self) -> int:
        return sum(int(Path(self.directory, name).read_text()) for name in os.listdir(self.directory))


class CountingWriter:
    def __init__(self, directory: str, subtask: int) -> None:
        self.directory = directory
        self.subtask = subtask
        self.records = 0

    def write_batch(self, records: list[Any]) -> None:
        self.records += len(records)

    def pre_commit(self, checkpoint_id: int) -> None:
        pass

    def snapshot(self) -> None:
        return None

    def commit(self, checkpoint_id: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        Path(self.directory, f"{self.subtask}-{os.getpid()}").write_text(str(self.records))


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, key: str, ctx: fs.RuntimeContext):  # type: ignore[no-untyped-def]
        n = self.count.value() + 1
        self.count.update(n)
        yield (key, n)


def build(path: str, parallelism: int, sink: Any) -> fs.Dataflow:
    flow = fs.Dataflow("reference-count", parallelism=parallelism)
    (flow.source(fs.FileSource(path))
         .key_by(lambda key: key)
         .process(Count())
         .sink(sink))
    return flow


def checkpoint_stats(location: str) -> list[dict[str, Any]]:
    """Per completed checkpoint, oldest first: what its metadata records."""
    from flowstate.storage.factory import open_storage

    storage = open_storage(location)
    rows = []
    for cid in storage.checkpoint_ids():
        md = storage.load_metadata(cid)
        rows.append({"id": int(cid), "final": md.final, "bytes_written": md.bytes_written,
                     "full_size": md.full_size, "sync_ms": md.max_sync_seconds * 1e3,
                     "async_ms": md.max_async_seconds * 1e3, "duration_ms": md.duration * 1e3})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--mode", default="exactly_once")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--state-backend", default="heap", help="heap or rocksdb")
    parser.add_argument("--sink", choices=("count", "file"), default="count",
                        help="count: a sink that only counts; file: FileSink (JSON Lines, two-phase commit) into a "
                             "temporary directory")
    parser.add_argument("--full-checkpoints", action="store_true", help="no incremental checkpoints: every checkpoint writes the whole state (heap) or copies every SST file (rocksdb)")
    parser.add_argument("--checkpoint-stats", action="store_true",
                        help="keep every checkpoint (retained=1000) and report each one's bytes written, full "
                             "size and sync/async parts from its metadata")
    args = parser.parse_args()
    counts = tempfile.mkdtemp(prefix="flowstate-bench-counts-")
    counting = CountingSink(counts)
    sink = counting if args.sink == "count" else fs.FileSink(os.path.join(counts, "out"))
    flow = build(args.input, args.parallelism, sink)
    chk = tempfile.mkdtemp(prefix="flowstate-bench-")
    try:
        started = time.perf_counter()
        result = fs.run(flow, mode=args.mode, checkpoint_dir=chk if args.mode != "none" else None,
                        interval=args.interval, state_backend=args.state_backend,
                        incremental=not args.full_checkpoints, retained=1000 if args.checkpoint_stats else 1)
        seconds = time.perf_counter() - started
        stats = checkpoint_stats(chk) if args.checkpoint_stats and args.mode != "none" else []
        out = counting.total() if args.sink == "count" else sum(
            1 for name in os.listdir(os.path.join(counts, "out")) if not name.startswith(".")
            for _ in open(os.path.join(counts, "out", name), "rb"))
    finally:
        shutil.rmtree(chk, ignore_errors=True)
        shutil.rmtree(counts, ignore_errors=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    peak_kib = max(usage.ru_maxrss, children.ru_maxrss)
    json.dump({"records": result.records, "out": out, "seconds": seconds, "executor": result.executor,
               "workers": result.workers,
               "cpu_ns_per_record": cpu / max(result.records, 1) * 1e9,
               "records_per_s": result.records / seconds, "checkpoints": result.checkpoints_completed,
               "peak_rss_mib": peak_kib / 1024, "checkpoint_stats": stats}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
