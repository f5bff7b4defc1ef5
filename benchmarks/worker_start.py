"""Start-up cost of the worker processes of the ``processes`` executor (run by hand, never by the
tests).

A small job (a generator of 200 numbers → key_by → a keyed count → a file sink, parallelism 2) runs
on 2 worker processes, ``--runs`` times in this process. Measured per run: *start*, from the moment
the executor starts the workers until every worker has built its tasks (``WorkerPool.build``:
the workers started, connected to the coordinator and to each other, the plan received and the
tasks built), and *run*, the whole ``fs.run`` of the bounded job (start, the records, the final
checkpoint and its commit, the workers stopped). Prints the median and the range of each.

``--start fresh`` starts every worker as a fresh interpreter (the fallback of the executor when its
fork server cannot run) instead of forking it from the run's fork server, for a comparison in the
same code. ``--restart`` kills a worker at the first commit of each run, so each run has a second
attempt: its start (*restart*) forks from a server already running, the first attempt's (*first*)
includes starting the server.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import flowstate as fs
from flowstate.executors import forkserver, processes


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, value: int, ctx: fs.RuntimeContext):
        n = self.count.value() + 1
        self.count.update(n)
        yield (value % 10, n)


def job(out: Path) -> fs.Dataflow:
    flow = fs.Dataflow("worker-start", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: i, 200, splits=2), uid="numbers")
         .key_by(lambda i: i % 10)
         .process(Count(), uid="count")
         .sink(fs.FileSink(out), uid="out"))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--start", choices=("forkserver", "fresh"), default="forkserver")
    parser.add_argument("--restart", action="store_true", help="kill a worker at each run's first commit")
    args = parser.parse_args()
    if args.start == "fresh":
        forkserver.ForkServerHandle.get = lambda self: None  # type: ignore[method-assign]
    starts: list[float] = []
    build = processes.WorkerPool.build

    def timed_build(self, plan, reports):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        try:
            return build(self, plan, reports)
        finally:
            starts.append(time.perf_counter() - began)

    processes.WorkerPool.build = timed_build  # type: ignore[method-assign]
    runs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            began = time.perf_counter()
            result = fs.run(
                job(Path(tmp) / f"out-{k}"),
                checkpoints=fs.CheckpointOptions(checkpoint_dir=Path(tmp) / f"chk-{k}"),
                recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(1, 0.0)) if args.restart else None,
                execution=fs.ExecutionOptions(executor="processes", workers=2),
                failpoints=fs.Failpoints({"sink.before_commit": "kill@1"}) if args.restart else None,
            )
            runs.append(time.perf_counter() - began)
            assert result.workers == 2 and result.checkpoints_completed >= 1
            assert result.restarts == (1 if args.restart else 0), result.failures
    step = 2 if args.restart else 1
    figures = [("start", starts[::step])] + ([("restart", starts[1::step])] if args.restart else [])
    for name, values in (*figures, ("run", runs)):
        print(f"{name}: median {1000 * statistics.median(values):.0f} ms "
              f"(min {1000 * min(values):.0f}, max {1000 * max(values):.0f}; {len(values)} runs)")


if __name__ == "__main__":
    main()
