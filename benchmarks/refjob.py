"""The shared reference job (../shared/bench/README.md): a keyed running count.

Read the file line by line, key by the line, keep a count per key in keyed state, emit (key, count)
for every record into a sink that only counts. Run as a script it prints one JSON line of results;
``run.py`` starts it once per measurement so that each figure is a whole, fresh process.

Every operator runs at ``--parallelism``, the source too: ``FileSource`` cuts the file into byte
ranges, so at parallelism 2 two source subtasks read it. The counting sink is a real sink (not a
callback of this process), so that a job at parallelism > 1 runs on the processes executor, one
worker per core; each writer leaves its count in a file that this process adds up.

``--thread-cpu`` adds where the CPU time went, per record: every thread of the job (in this process
and in every worker) appends its own CPU time to a log when it ends (a ``sitecustomize`` module that
wraps ``threading.Thread.run``, put on the ``PYTHONPATH`` that the fork server and the workers
inherit), summed by role (source tasks, keyed tasks, the threads reading connections, snapshot
writers); ``outside threads`` is the rest of the process tree (main threads, start-up, the fork
server, the coordinator).
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


_THREAD_LOG_SITE = r"""
import os, threading, time
_log = os.environ["FLOWSTATE_BENCH_THREAD_LOG"]
_run = threading.Thread.run
def run(self):
    try:
        _run(self)
    finally:
        with open(_log, "a") as f:
            f.write(f"{os.getpid()}\t{self.name}\t{time.thread_time()!r}\n")
threading.Thread.run = run
"""

ROLES = (("source", "-source#"), ("keyed task", "keyed_process#"), ("other task", "task "),
         ("connection reader", "channels from worker"), ("snapshot writer", "snapshot_"))


def log_thread_cpu(directory: str) -> str:
    """Make every thread started from now on, here and in processes started from here, log its CPU
    time when it ends (see the module docstring); returns the log's path."""
    log = os.path.join(directory, "threads.log")
    Path(directory, "sitecustomize.py").write_text(_THREAD_LOG_SITE)
    os.environ["FLOWSTATE_BENCH_THREAD_LOG"] = log
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [directory, os.environ.get("PYTHONPATH")]))
    namespace: dict[str, Any] = {}
    exec(_THREAD_LOG_SITE, namespace)  # this process is running already: wrap its threads too
    return log


def thread_cpu(log: str, records: int, total_cpu: float) -> dict[str, float]:
    """ns of CPU per record by role of thread, and outside threads."""
    by_role: dict[str, float] = {}
    for line in Path(log).read_text().splitlines():
        _, name, seconds = line.split("\t")
        role = next((r for r, marker in ROLES if marker in name), "other thread")
        by_role[role] = by_role.get(role, 0.0) + float(seconds)
    by_role["outside threads"] = total_cpu - sum(by_role.values())
    return {role: seconds / max(records, 1) * 1e9 for role, seconds in sorted(by_role.items())}


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
    parser.add_argument("--heap-incremental", action="store_true",
                        help="heap: incremental snapshots (a base and deltas of the keys changed)")
    parser.add_argument("--full-checkpoints", action="store_true", help="no incremental checkpoints: every checkpoint writes the whole state (heap) or copies every SST file (rocksdb)")
    parser.add_argument("--checkpoint-stats", action="store_true",
                        help="keep every checkpoint (retained=1000) and report each one's bytes written, full "
                             "size and sync/async parts from its metadata")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per core, at most the parallelism)")
    parser.add_argument("--executor", help="threads or processes (default: processes at parallelism > 1)")
    parser.add_argument("--thread-cpu", action="store_true",
                        help="report the CPU time per record of each role of thread (module docstring)")
    args = parser.parse_args()
    logs = tempfile.mkdtemp(prefix="flowstate-bench-threads-") if args.thread_cpu else None
    thread_log = log_thread_cpu(logs) if logs else None
    counts = tempfile.mkdtemp(prefix="flowstate-bench-counts-")
    counting = CountingSink(counts)
    sink = counting if args.sink == "count" else fs.FileSink(os.path.join(counts, "out"))
    flow = build(args.input, args.parallelism, sink)
    chk = tempfile.mkdtemp(prefix="flowstate-bench-")
    try:
        started = time.perf_counter()
        result = fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(
                mode=args.mode,
                checkpoint_dir=chk if args.mode != "none" else None,
                interval=args.interval,
                retained=1000 if args.checkpoint_stats else 1,
            ),
            state=fs.StateOptions(backend=args.state_backend, incremental=not args.full_checkpoints,
                                  heap_incremental=args.heap_incremental),
            execution=fs.ExecutionOptions(executor=args.executor, workers=args.workers),
        )
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
    threads = thread_cpu(thread_log, result.records, cpu) if thread_log else {}
    if logs:
        shutil.rmtree(logs, ignore_errors=True)
    json.dump({"records": result.records, "out": out, "seconds": seconds, "executor": result.executor,
               "workers": result.workers,
               "cpu_ns_per_record": cpu / max(result.records, 1) * 1e9,
               "records_per_s": result.records / seconds, "checkpoints": result.checkpoints_completed,
               "peak_rss_mib": peak_kib / 1024, "checkpoint_stats": stats,
               **({"thread_cpu_ns_per_record": threads} if threads else {})}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
