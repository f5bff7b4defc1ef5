"""The cost of isolating snapshots from changes made in place to state values (run by hand).

Runs the reference job (a keyed running count, ``refjob.py``) and a dict-valued variant of it
(``acc = state.value() or {"n": 0}; acc["n"] += 1; state.update(acc)``, the idiom of issue 10), with
the heap and the RocksDB backend, under the code **before** the change (a git revision, extracted with
``git archive``) and **after** it (this checkout), interleaved in one run: every figure is a whole
fresh process, and the ratios compare runs made minutes apart on the same machine. A third variant
measures, on the heap after the change, what the other possible rule ("only ``update()`` stores")
would cost: a deep copy of the value on every read and every write.

Input: ``--records`` lines drawn uniformly (seed 42) from 10,000 keys, like the shared
``events_5m_10k.txt`` but shorter. Exactly-once checkpoints every ``--interval`` (short, so that the
copy-on-write of the heap runs after many snapshots), parallelism 1.

Usage: ``.venv/bin/python benchmarks/state_isolation.py [--before REV] [--records N] [--repeat K]
[--write]``; ``--write`` puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- isolation:begin -->", "<!-- isolation:end -->"
SECTION = f"""## Isolated state snapshots: the cost of copy-on-write and of the RocksDB object cache

A checkpoint must be the state at its barrier whatever the job does with the objects state reads
return (issue 10). The heap copies an entry on its first access after a snapshot froze it, and only
when the value is mutable; RocksDB keeps the objects of the rows touched since the last snapshot and
encodes them at the barrier. Measured by `benchmarks/state_isolation.py`, before and after the change,
interleaved in one run. Reproduce with `python benchmarks/state_isolation.py --write`.

{BEGIN}
{END}
"""

VARIANTS = {
    "int": "reference job: `n = count.value() + 1; count.update(n)`",
    "dict": "dict-valued: `acc = s.value() or {\"n\": 0}; acc[\"n\"] += 1; s.update(acc)`",
    "dict-copied": "dict-valued, copying on every read and write (the cost of an \"only update() stores\" rule)",
}


def _copy(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def child(variant: str, backend: str, path: str, interval: str) -> None:
    """One measurement, in a fresh process whose ``flowstate`` is the one on ``PYTHONPATH``."""
    import flowstate as fs

    class Int(fs.KeyedProcessFunction):
        def open(self, ctx: Any) -> None:
            self.count = ctx.value_state("count", default=0)

        def process(self, key: str, ctx: Any):  # type: ignore[no-untyped-def]
            n = self.count.value() + 1
            self.count.update(n)
            yield (key, n)

    class Dict(fs.KeyedProcessFunction):
        def open(self, ctx: Any) -> None:
            self.acc = ctx.value_state("acc")

        def process(self, key: str, ctx: Any):  # type: ignore[no-untyped-def]
            acc = self.acc.value() or {"n": 0}
            acc["n"] += 1
            self.acc.update(acc)
            yield (key, acc["n"])

    class DictCopied(fs.KeyedProcessFunction):
        def open(self, ctx: Any) -> None:
            self.acc = ctx.value_state("acc")

        def process(self, key: str, ctx: Any):  # type: ignore[no-untyped-def]
            acc = _copy(self.acc.value() or {"n": 0})
            acc["n"] += 1
            self.acc.update(_copy(acc))
            yield (key, acc["n"])

    total = [0]

    def sink(records: list[Any]) -> None:
        total[0] += len(records)

    fn = {"int": Int, "dict": Dict, "dict-copied": DictCopied}[variant]()
    flow = fs.Dataflow("isolation", parallelism=1)
    (flow.source(fs.FileSource(path), parallelism=1)
         .key_by(lambda key: key)
         .process(fn)
         .sink(fs.BatchCallbackSink(sink, name="count")))
    chk = tempfile.mkdtemp(prefix="flowstate-bench-")
    try:
        cpu = _cpu()
        started = time.perf_counter()
        result = fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=chk, interval=interval),
            state=fs.StateOptions(backend=backend),
        )
        seconds = time.perf_counter() - started
        cpu = _cpu() - cpu
    finally:
        shutil.rmtree(chk, ignore_errors=True)
    json.dump({"records": result.records, "out": total[0], "seconds": seconds,
               "cpu_s": cpu, "checkpoints": result.checkpoints_completed}, sys.stdout)
    print()


def micro(value_kind: str) -> None:
    """The heap backend's hot path alone, in a fresh process: ``value()`` then ``update()`` of one
    value state, 1 M records over 10 k keys, with no snapshot pending (flat) and right after a
    snapshot froze every key (each key's first access after it goes through the copy-on-write
    path). CPU seconds of the best of 7 passes, which the load of a shared machine disturbs least."""
    from flowstate.state.memory import HeapKeyedStateBackend

    backend = HeapKeyedStateBackend(128, range(128))
    state = backend.value_state("acc")
    keys = [f"key-{i % 10_000:05d}" for i in range(1_000_000)]
    context = backend.keys

    def bump_int() -> None:
        for k in keys:
            context.current_key = k
            state.update((state.value() or 0) + 1)

    def bump_dict() -> None:
        for k in keys:
            context.current_key = k
            acc = state.value() or {"n": 0}
            acc["n"] += 1
            state.update(acc)

    bump = bump_int if value_kind == "int" else bump_dict
    best = {}
    for layered in (False, True):
        times = []
        for _ in range(7):
            snapshot = backend.snapshot() if layered else None
            started = time.process_time()
            bump()
            times.append(time.process_time() - started)
            if snapshot is not None:
                snapshot.release()
                backend.maybe_fold()
        best["after_snapshot" if layered else "flat"] = min(times)
    json.dump(best, sys.stdout)
    print()


def _cpu() -> float:
    """CPU seconds of this process so far, every thread included (the snapshot pool's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_input(path: Path, records: int) -> None:
    rng = random.Random(42)
    words = [f"key-{i:05d}" for i in range(10_000)]
    with open(path, "w") as out:
        for start in range(0, records, 100_000):
            out.write("\n".join(rng.choice(words) for _ in range(min(100_000, records - start))) + "\n")


def extract(revision: str, target: Path) -> str:
    """The ``src`` of ``revision``, extracted into ``target``; its commit id."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", revision, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return commit


def measure(src: Path, variant: str, backend: str, path: Path, interval: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--child", variant, backend, str(path), interval],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default=None, help="git revision before the change (default: merge-base with main)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", default="200ms")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "BACKEND", "INPUT", "INTERVAL"), help=argparse.SUPPRESS)
    parser.add_argument("--micro", choices=("int", "dict"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.micro:
        micro(args.micro)
        return
    before = args.before or subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, check=True,
                                           capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="flowstate-isolation-"))
    try:
        (work / "before").mkdir()
        before_commit = extract(before, work / "before")
        after_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout.strip()
        trees = {"before": work / "before" / "src", "after": ROOT / "src"}
        path = work / "events.txt"
        write_input(path, args.records)
        cases = [(variant, backend, tree) for variant in ("int", "dict") for backend in ("heap", "rocksdb")
                 for tree in ("before", "after")] + [("dict-copied", "heap", "after")]
        runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {case: [] for case in cases}
        micros: dict[tuple[str, str], list[dict[str, float]]] = {
            (kind, tree): [] for kind in ("int", "dict") for tree in ("before", "after")}
        for round_ in range(args.repeat):
            for case in cases:
                variant, backend, tree = case
                runs[case].append(measure(trees[tree], variant, backend, path, args.interval))
                print(f"round {round_ + 1}: {case}: {runs[case][-1]['seconds']:.2f} s", file=sys.stderr)
            for kind, tree in micros:
                micros[kind, tree].append(measure_micro(trees[tree], kind))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(runs, micros, args, before_commit, after_commit)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import docsection

        docsection.write_section(DOC, BEGIN, END, text, absent=SECTION)


def measure_micro(src: Path, kind: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--micro", kind], env=env, check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def report(runs: dict[tuple[str, str, str], list[dict[str, Any]]], micros: dict[tuple[str, str], list[dict[str, float]]],
           args: argparse.Namespace, before: str, after: str) -> str:
    def median(case: tuple[str, str, str], field: str) -> float:
        return statistics.median(run[field] for run in runs[case])

    def rate(case: tuple[str, str, str]) -> float:
        return statistics.median(run["records"] / run["seconds"] for run in runs[case])

    lines = [
        f"{args.records:,} records over 10,000 keys, exactly-once checkpoints every {args.interval}, parallelism 1, "
        f"medians of {args.repeat} whole processes per cell, before = `{before}`, after = `{after}`, "
        f"interleaved in one run on {datetime_now()} ({platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores shared with other work).",
        "",
        "| job | backend | before: records/s | after: records/s | after / before (throughput) | "
        "CPU per record after / before |",
        "|---|---|---|---|---|---|",
    ]
    for variant in ("int", "dict"):
        for backend in ("heap", "rocksdb"):
            b, a = (variant, backend, "before"), (variant, backend, "after")
            cpu_b = median(b, "cpu_s") / median(b, "records")
            cpu_a = median(a, "cpu_s") / median(a, "records")
            lines.append(f"| {VARIANTS[variant]} | {backend} | {rate(b):,.0f} | {rate(a):,.0f} | "
                         f"{rate(a) / rate(b):.2f} | {cpu_a / cpu_b:.2f} |")
    copied, plain = ("dict-copied", "heap", "after"), ("dict", "heap", "after")
    lines += [
        "",
        f"The other rule, measured: {VARIANTS['dict-copied']}, heap: {rate(copied):,.0f} records/s, "
        f"{rate(copied) / rate(plain):.2f} × the dict-valued job under the rule chosen.",
        "",
        "The heap backend's hot path alone (`value()` then `update()`, 1 M records over 10 k keys; CPU "
        "seconds, best of 7 passes in each of the fresh processes, best over the rounds): with no snapshot pending, "
        "and right after a snapshot froze every key (copy-on-write on each key's first access).",
        "",
        "| value | no snapshot: before | after | after / before | after a snapshot: before | after | after / before |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("int", "dict"):
        b = {part: min(m[part] for m in micros[kind, "before"]) for part in ("flat", "after_snapshot")}
        a = {part: min(m[part] for m in micros[kind, "after"]) for part in ("flat", "after_snapshot")}
        lines.append(f"| {kind} | {b['flat']:.3f} s | {a['flat']:.3f} s | {a['flat'] / b['flat']:.2f} | "
                     f"{b['after_snapshot']:.3f} s | {a['after_snapshot']:.3f} s | "
                     f"{a['after_snapshot'] / b['after_snapshot']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def datetime_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    main()
