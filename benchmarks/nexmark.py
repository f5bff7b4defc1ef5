"""Nexmark on flowstate, Bytewax and PyFlink: events/s per query, all with exactly-once snapshots every 1 s.

    pip install bytewax==0.21.1 apache-flink   # into the same environment; not dependencies of flowstate
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

PyFlink (``pip install apache-flink``): the queries as Flink SQL (``benchmarks/nexmark_pyflink.py``)
over the same events written once to a CSV file, streaming mode, parallelism 1, EXACTLY_ONCE
checkpoints every 1 s, into a ``filesystem`` sink of JSON lines whose rows are counted (and digested,
in the untimed round) after the job. Its figure is from the job's submission to its end (starting the
JVM and the table environment before it is left out and reported on its own), which includes a fixed
cost per job measured by q0 over no events; ``--pyflink-events`` adds runs over a larger event set
(generated into its own CSV file) where that cost weighs less.
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


def csv_file(count: int, events: list[Any] | None = None) -> Path:
    """The events of ``events_file(count)`` (or of the generator) as the CSV file PyFlink reads."""
    from nexmark_pyflink import write_events

    path = DATA / f"nexmark-{count}.csv"
    if not path.exists():
        from flowstate.nexmark import NexmarkConfig, NexmarkGenerator

        print(f"writing {count:,} Nexmark events into {path} …", file=sys.stderr)
        DATA.mkdir(exist_ok=True)
        gen = NexmarkGenerator(NexmarkConfig(rate=RATE))
        write_events(events if events is not None else (gen.event(i) for i in range(count)), path)
    return path


def worker(system: str, query: str, path: Path, verify: bool) -> None:
    if system == "pyflink":
        from nexmark_pyflink import run

        with path.open() as f:
            count = sum(1 for _ in f)
        out = run(query, path.resolve(), verify)
    else:
        events = pickle.loads(path.read_bytes())
        count = len(events)
        out = (run_flowstate if system == "flowstate" else run_bytewax)(query, events, Counter(verify))
    out.update(system=system, query=query, events=count, events_per_s=count / out["seconds"] if count else 0.0)
    json.dump(out, sys.stdout)
    print()


def installed(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - not installed
        return None


def bytewax_version() -> str | None:
    return installed("bytewax")


def one_run(system: str, query: str, path: Path, verify: bool = False) -> dict[str, Any]:
    """``system`` is a label of ``PATHS``: the worker's system is the part before the first ``-``."""
    proc = subprocess.run([sys.executable, __file__, "--worker", system.split("-")[0], "--query", query,
                           "--path", str(path)] + (["--verify"] if verify else []), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{system} {query} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


PATHS: dict[str, Path] = {}
"""The events each label reads: ``flowstate`` and ``bytewax`` the pickle, ``pyflink`` the same events as
CSV, ``pyflink-large`` the larger CSV, ``pyflink-empty`` an empty CSV (the fixed cost of a job)."""


def verify(systems: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """One untimed run of each configuration, with the digest of its rows."""
    digests = {}
    for system, query in systems:
        r = one_run(system, query, PATHS[system], verify=True)
        digests[(system, query)] = r["digest"]
        print(f"  check: {system:>9} {query}: {r['rows']:,} rows, digest {r['digest']:x}", file=sys.stderr)
    return digests


def measure(repeat: int, systems: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in systems}
    for i in range(repeat):
        for system, query in systems:
            r = one_run(system, query, PATHS[system])
            runs[(system, query)].append(r)
            cpu = f", JVM CPU {r['cpu']:.1f} s" if "cpu" in r else ""
            print(f"  round {i + 1}: {system:>9} {query}: {r['events_per_s']:>10,.0f} events/s, {r['seconds']:.2f} s{cpu}, "
                  f"{r['rows']:,} rows", file=sys.stderr)
    return runs


def report(runs: dict[tuple[str, str], list[dict[str, Any]]], digests: dict[tuple[str, str], int], events: int,
           repeat: int, gen_speed: float, command: str, large: int) -> str:
    from nexmark_bytewax import WRITTEN

    def median(system: str, query: str, key: str = "events_per_s") -> tuple[float, int] | None:
        rs = runs.get((system, query))
        if not rs:
            return None
        return statistics.median(r[key] for r in rs), rs[0]["rows"]

    def same(system: str, query: str) -> str:
        if ("flowstate", query) in digests and (system, query) in digests:
            return "yes" if digests[("flowstate", query)] == digests[(system, query)] else "**no**"
        return "—"

    flink = any(s == "pyflink" for s, _ in runs)
    lines = [
        f"Machine: {platform.machine()}, CPython {platform.python_version()}, 2 cores shared with other work. "
        f"Bytewax {bytewax_version() or 'not installed'}, PyFlink {installed('apache-flink') or 'not installed'}"
        f"{' (Java ' + platform_java() + ')' if flink else ''}. Command: `{command}`.",
        "",
        f"{events:,} events (10,000 per second of event time: {events / RATE:g} s, "
        f"{-(-events // (RATE * 10))} tumbling windows of 10 s), "
        f"median of {repeat} fresh processes per cell, run interleaved; every system with exactly-once "
        "snapshots every 1 s, one worker, a sink that counts; flowstate and Bytewax read the events from "
        "memory, PyFlink from a CSV file. "
        f"The generator alone makes {gen_speed:,.0f} events/s (not part of the figures).",
        "",
        "| query | flowstate events/s | Bytewax events/s | PyFlink events/s | flowstate / Bytewax | flowstate / PyFlink "
        "| rows (flowstate / Bytewax / PyFlink) | same rows as flowstate (Bytewax / PyFlink) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for query in QUERIES:
        f, b, k = median("flowstate", query), median("bytewax", query), median("pyflink", query)
        cells = [f"{f[0]:,.0f}" if f else "—"]
        cells.append(f"{b[0]:,.0f}" if b else "not written" if query not in WRITTEN else "—")
        cells.append(f"{k[0]:,.0f}" if k else "not run" if flink else "—")
        cells.append(f"{f[0] / b[0]:.1f}×" if f and b else "—")
        cells.append(f"{f[0] / k[0]:.1f}×" if f and k else "—")
        cells.append(" / ".join(f"{x[1]:,}" if x else "—" for x in (f, b, k)))
        cells.append(f"{same('bytewax', query) if b else '—'} / {same('pyflink', query) if k else '—'}")
        lines.append(f"| {query} | " + " | ".join(cells) + " |")
    missing = [q for q in QUERIES if q not in WRITTEN]
    lines += ["", "Not written for Bytewax: " + (", ".join(missing) or "none") + ". " + WRITTEN_NOTE, ""]
    if flink:
        lines += pyflink_report(runs, events, large)
    else:
        lines += ["PyFlink is not installed (`pip install apache-flink`): its column is left out.", ""]
    return "\n".join(lines)


def platform_java() -> str:
    proc = subprocess.run(["java", "-version"], capture_output=True, text=True)
    first = (proc.stderr or proc.stdout).splitlines()
    return first[0].split('"')[1] if first and '"' in first[0] else "unknown"


def pyflink_report(runs: dict[tuple[str, str], list[dict[str, Any]]], events: int, large: int) -> list[str]:
    from nexmark_pyflink import SAME_ROWS
    from nexmark_pyflink import WRITTEN as FLINK_WRITTEN

    def med(system: str, query: str, key: str) -> float | None:
        rs = runs.get((system, query))
        return statistics.median(r[key] for r in rs) if rs else None

    empty = med("pyflink-empty", "q0", "seconds")
    startup = statistics.median(r["startup"] for (s, _), rs in runs.items() if s.startswith("pyflink") for r in rs)
    lines = [
        f"PyFlink's figures run from the job's submission to its end. Before it, starting the JVM and the table "
        f"environment takes {startup:.1f} s (median over all its runs, not counted); a job over no events (q0 over "
        f"an empty file) takes {empty:.1f} s from submission to end, the fixed cost in each of its figures: "
        f"starting the local cluster, planning and compiling the query, the final checkpoint that commits the "
        f"sink's files." if empty is not None else "",
        "",
    ]
    if large:
        lines += [
            f"PyFlink over {large:,} events (the same generator, its own CSV file), median of the same number of "
            "runs; the last column leaves out the empty job's time:",
            "",
            f"| query | seconds, {events:,} events | seconds, {large:,} events | events/s, {large:,} events "
            f"| events/s beyond the empty job, {large:,} events | rows, {large:,} events |",
            "|---|---|---|---|---|---|",
        ]
        for query in QUERIES:
            small, big = med("pyflink", query, "seconds"), med("pyflink-large", query, "seconds")
            if big is None:
                continue
            rows = runs[("pyflink-large", query)][0]["rows"]
            beyond = f"{large / (big - empty):,.0f}" if empty is not None and big > empty else "—"
            lines.append(f"| {query} | {small:.1f} | {big:.1f} | {large / big:,.0f} | {beyond} | {rows:,} |"
                         if small is not None else f"| {query} | — | {big:.1f} | {large / big:,.0f} | {beyond} | {rows:,} |")
        lines.append("")
    other = [q for q in FLINK_WRITTEN if q not in SAME_ROWS]
    lines += [FLINK_NOTE.format(other=", ".join(other) or "none"), ""]
    return lines


WRITTEN_NOTE = (
    "q4 and q6 need an auction closed when event time passes its own expiry: flowstate does it with a "
    "per-key event-time timer (`ClosedAuctions`); Bytewax's stateful operators have no event-time "
    "timers (their `notify_at` is system time) and its windowers assign fixed windows, so closing an "
    "auction at its own expiry would need a custom windower."
)

FLINK_NOTE = (
    "PyFlink's queries follow the Nexmark repository's Flink SQL (`benchmarks/nexmark_pyflink.py`), written to "
    "emit flowstate's rows; rows differ on {other}, by design. Flink's q4 is the Nexmark SQL (a regular join "
    "of auctions and bids, `MAX` per auction, `AVG` per category): its output is a changelog of running "
    "averages, one change per bid that raises an auction's maximum (`+I`/`-U`/`+U` rows, whose number varies "
    "a little from run to run with the interleaving of the join's two inputs), not flowstate's one row per "
    "auction closed by event time. q6 is not run: the planner refuses its Nexmark SQL, an `OVER` window over "
    "the highest bid per auction: after the regular join no time attribute is left to order it by "
    "(\"Non-time attribute sort is not supported for bounded OVER window\"), and with an interval join that "
    "keeps one, the highest bid per auction (`ROW_NUMBER` top 1) is an updating stream that an `OVER` window "
    "cannot consume (the Nexmark repository leaves q6 unsupported for that reason)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument("--no-bytewax", action="store_true")
    parser.add_argument("--no-pyflink", action="store_true")
    parser.add_argument("--pyflink-events", type=int, default=1_000_000,
                        help="also run PyFlink over this many events (0: not)")
    parser.add_argument("--write", action="store_true", help=f"replace the Nexmark section of {DOC.name}")
    parser.add_argument("--worker", choices=["flowstate", "bytewax", "pyflink"], help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.worker:
        worker(args.worker, args.query, Path(args.path), args.verify)
        return
    from nexmark_bytewax import WRITTEN

    queries = [q for q in args.queries.split(",") if q]
    path = events_file(args.events)
    PATHS.update(flowstate=path, bytewax=path)
    gen_speed = generator_speed(20_000)
    systems = [("flowstate", q) for q in queries]
    if not args.no_bytewax and bytewax_version():
        systems += [("bytewax", q) for q in queries if q in WRITTEN]
    flink = not args.no_pyflink and installed("apache-flink") is not None
    if flink:
        from nexmark_pyflink import WRITTEN as FLINK_WRITTEN

        PATHS.update(pyflink=csv_file(args.events, pickle.loads(path.read_bytes())), **{"pyflink-empty": csv_file(0, [])})
        systems += [("pyflink", q) for q in queries if q in FLINK_WRITTEN]
    systems.sort(key=lambda s: (QUERIES.index(s[1]), s[0]))
    digests = verify(systems)
    timed = list(systems)
    if flink:
        timed.append(("pyflink-empty", "q0"))
        if args.pyflink_events:
            PATHS["pyflink-large"] = csv_file(args.pyflink_events)
            timed += [("pyflink-large", q) for q in queries if q in FLINK_WRITTEN]
    runs = measure(args.repeat, timed)
    command = " ".join(["python benchmarks/nexmark.py"] + sys.argv[1:])
    text = report(runs, digests, args.events, args.repeat, gen_speed, command, args.pyflink_events if flink else 0)
    print(text)
    if args.write:
        from docsection import write_section

        write_section(DOC, BEGIN, END, text, absent=f"## Nexmark\n\n{BEGIN}\n{END}\n")


if __name__ == "__main__":
    main()
