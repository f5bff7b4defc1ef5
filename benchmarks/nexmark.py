"""Nexmark on flowstate and on Bytewax: events/s per query, both with exactly-once snapshots every 1 s.

    pip install bytewax==0.21.1            # into the same environment; not a dependency of flowstate
    python benchmarks/nexmark.py --events 200000 --repeat 3 --write

The events (``flowstate.nexmark``, 10,000 events per second of event time) are generated once into
``bench-data/`` and loaded by every run, so both systems read the same events from memory and the
generator's cost is not part of either figure (it is measured on its own). Each figure is a fresh
process (``--worker``) timing the run of one query from the start of the job to its end (the final
checkpoint included), interpreter start-up and loading the events excluded; the median of ``--repeat``
runs, interleaved so that drift of a shared machine hits every configuration alike.

flowstate: the queries of ``flowstate.nexmark.queries`` from a ``GeneratorSource`` over the events,
parallelism 1 (threads), ``exactly_once`` with checkpoints every 1 s, into a sink that only counts.

Bytewax: the same queries written with its operators (``benchmarks/nexmark_bytewax.py``), one
worker, recovery on (``init_db_dir``, snapshots every 1 s, backup interval 0, as in
``../shared/bench/README.md``), from a ``TestingSource`` over the same events in batches of 1,000,
into a sink that only counts. Before the timed rounds, one untimed run of each configuration sums a
CRC-32 of every row it emits: the table says whether both systems emitted the same rows.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "bench-data"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- nexmark:begin -->", "<!-- nexmark:end -->"
QUERIES = ("q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8")
RATE = 10_000


def events_file(count: int) -> Path:
    path = DATA / f"nexmark-{count}.pickle"
    if not path.exists():
        from flowstate.nexmark import NexmarkConfig, NexmarkGenerator

        print(f"generating {count:,} Nexmark events into {path} …", file=sys.stderr)
        DATA.mkdir(exist_ok=True)
        events = NexmarkGenerator(NexmarkConfig(rate=RATE)).events(0, count)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.rename(path)
    return path


def generator_speed(count: int) -> float:
    from flowstate.nexmark import NexmarkConfig, NexmarkGenerator

    gen = NexmarkGenerator(NexmarkConfig(rate=RATE))
    started = time.perf_counter()
    gen.events(0, count)
    return count / (time.perf_counter() - started)


class Counter:
    """The sink of both systems: counts rows; with ``verify``, also sums a CRC-32 of each row's repr
    (an order-independent digest of the output, compared between the systems in an untimed round)."""

    def __init__(self, verify: bool = False) -> None:
        self.total = 0
        self.digest = 0
        self.verify = verify

    def __call__(self, records: list[Any]) -> None:
        self.total += len(records)
        if self.verify:
            self.digest = (self.digest + sum(zlib.crc32(repr(tuple(r)).encode()) for r in records)) % (1 << 64)


def run_flowstate(query: str, events: list[Any], counter: Counter) -> dict[str, Any]:
    import flowstate as fs
    from flowstate.nexmark.queries import QUERIES as BUILDERS, events as timed

    flow = fs.Dataflow(f"nexmark-{query}")
    BUILDERS[query](timed(flow, fs.GeneratorSource(events.__getitem__, len(events), name="nexmark"))).sink(
        fs.BatchCallbackSink(counter, name="count"))
    chk = tempfile.mkdtemp(prefix="flowstate-nexmark-")
    try:
        started = time.perf_counter()
        result = fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=chk, interval="1s"),
            execution=fs.ExecutionOptions(executor="threads"),
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(chk, ignore_errors=True)
    return {"seconds": seconds, "rows": counter.total, "digest": counter.digest,
            "checkpoints": result.checkpoints_completed}


def run_bytewax(query: str, events: list[Any], counter: Counter) -> dict[str, Any]:
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main

    sys.path.insert(0, str(HERE))
    from nexmark_bytewax import build

    flow = build(query, events, counter)
    db = Path(tempfile.mkdtemp(prefix="bytewax-nexmark-"))
    try:
        init_db_dir(db, 1)
        started = time.perf_counter()
        run_main(flow, epoch_interval=timedelta(seconds=1),
                 recovery_config=RecoveryConfig(str(db), backup_interval=timedelta(0)))
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(db, ignore_errors=True)
    return {"seconds": seconds, "rows": counter.total, "digest": counter.digest, "checkpoints": None}


def worker(system: str, query: str, path: Path, verify: bool) -> None:
    events = pickle.loads(path.read_bytes())
    out = (run_flowstate if system == "flowstate" else run_bytewax)(query, events, Counter(verify))
    out.update(system=system, query=query, events=len(events), events_per_s=len(events) / out["seconds"])
    json.dump(out, sys.stdout)
    print()


def bytewax_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("bytewax")
    except Exception:  # noqa: BLE001 - not installed
        return None


def one_run(system: str, query: str, path: Path, verify: bool = False) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", system, "--query", query, "--path", str(path)]
                          + (["--verify"] if verify else []), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{system} {query} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verify(path: Path, systems: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """One untimed run of each configuration, with the digest of its rows."""
    digests = {}
    for system, query in systems:
        r = one_run(system, query, path, verify=True)
        digests[(system, query)] = r["digest"]
        print(f"  check: {system:>9} {query}: {r['rows']:,} rows, digest {r['digest']:x}", file=sys.stderr)
    return digests


def measure(path: Path, repeat: int, systems: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in systems}
    for i in range(repeat):
        for system, query in systems:
            r = one_run(system, query, path)
            runs[(system, query)].append(r)
            print(f"  round {i + 1}: {system:>9} {query}: {r['events_per_s']:>10,.0f} events/s, {r['rows']:,} rows",
                  file=sys.stderr)
    return runs


def report(runs: dict[tuple[str, str], list[dict[str, Any]]], digests: dict[tuple[str, str], int], events: int,
           repeat: int, gen_speed: float, command: str) -> str:
    from nexmark_bytewax import WRITTEN

    def median(system: str, query: str) -> tuple[float, int] | None:
        rs = runs.get((system, query))
        if not rs:
            return None
        return statistics.median(r["events_per_s"] for r in rs), rs[0]["rows"]

    lines = [
        f"Machine: {platform.machine()}, CPython {platform.python_version()}, 2 cores shared with other work. "
        f"Bytewax {bytewax_version() or 'not installed'}. Command: `{command}`.",
        "",
        f"{events:,} events (10,000 per second of event time: {events / RATE:g} s, "
        f"{-(-events // (RATE * 10))} tumbling windows of 10 s), "
        f"median of {repeat} fresh processes per cell, run interleaved; both systems with exactly-once "
        "snapshots every 1 s, one worker, the events read from memory, a sink that only counts. "
        f"The generator alone makes {gen_speed:,.0f} events/s (not part of the figures).",
        "",
        "| query | flowstate events/s | Bytewax events/s | flowstate / Bytewax | rows (flowstate / Bytewax) | same rows |",
        "|---|---|---|---|---|---|",
    ]
    for query in QUERIES:
        f = median("flowstate", query)
        b = median("bytewax", query)
        fs_cell = f"{f[0]:,.0f}" if f else "—"
        same = "—"
        if b:
            bw_cell, ratio, rows = f"{b[0]:,.0f}", f"{f[0] / b[0]:.1f}×" if f else "—", f"{f[1]:,} / {b[1]:,}" if f else "—"
            if ("flowstate", query) in digests and ("bytewax", query) in digests:
                same = "yes" if digests[("flowstate", query)] == digests[("bytewax", query)] else "**no**"
        else:
            bw_cell, ratio, rows = "not written", "—", f"{f[1]:,} / —" if f else "—"
        lines.append(f"| {query} | {fs_cell} | {bw_cell} | {ratio} | {rows} | {same} |")
    missing = [q for q in QUERIES if q not in WRITTEN]
    lines += ["", "Not written for Bytewax: " + (", ".join(missing) or "none") + ". " + WRITTEN_NOTE, ""]
    return "\n".join(lines)


WRITTEN_NOTE = (
    "q4 and q6 need an auction closed when event time passes its own expiry: flowstate does it with a "
    "per-key event-time timer (`ClosedAuctions`); Bytewax's stateful operators have no event-time "
    "timers (their `notify_at` is system time) and its windowers assign fixed windows, so closing an "
    "auction at its own expiry would need a custom windower. PyFlink is not run: its Table API would "
    "need these events fed from Python (a Python source, per-record cost of the Python/JVM bridge) or "
    "Flink's own Nexmark generator, which is not on PyPI."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument("--no-bytewax", action="store_true")
    parser.add_argument("--write", action="store_true", help=f"replace the Nexmark section of {DOC.name}")
    parser.add_argument("--worker", choices=["flowstate", "bytewax"], help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.query, Path(args.path), args.verify)
        return
    sys.path.insert(0, str(HERE))
    from nexmark_bytewax import WRITTEN

    queries = [q for q in args.queries.split(",") if q]
    path = events_file(args.events)
    gen_speed = generator_speed(20_000)
    systems = [("flowstate", q) for q in queries]
    if not args.no_bytewax and bytewax_version():
        systems += [("bytewax", q) for q in queries if q in WRITTEN]
    systems.sort(key=lambda s: (QUERIES.index(s[1]), s[0]))
    digests = verify(path, systems)
    runs = measure(path, args.repeat, systems)
    command = " ".join(["python benchmarks/nexmark.py"] + sys.argv[1:])
    text = report(runs, digests, args.events, args.repeat, gen_speed, command)
    print(text)
    if args.write:
        from docsection import write_section

        write_section(DOC, BEGIN, END, text, absent=f"## Nexmark\n\n{BEGIN}\n{END}\n")


if __name__ == "__main__":
    main()
