"""Rows/s into PostgreSQL (run by hand, never by the tests).

The same rows — ``(key text, n bigint)``, ``--rows`` of them from a ``GeneratorSource`` keyed and
counted as in the reference job — go into a fresh table three ways, each a fresh process, rounds
interleaved, the median of ``--repeat``:

1. ``PostgresSink`` exactly-once, checkpoints every 1 s (one transaction per checkpoint: COPY of the
   rows and the commit marker together);
2. ``PostgresSink(delivery="at_least_once")`` (a COPY per batch as it arrives), checkpoints every 1 s;
3. a plain ``COPY`` of the same rows from one Python loop with psycopg: the physical limit here.

Ratios are taken within a round, so a machine whose speed drifts still compares like with like.
Prints Markdown; with ``--write`` it replaces the section between ``<!-- postgres:begin -->`` and
``<!-- postgres:end -->`` of ``docs/benchmarks.md``.

Usage: ``python benchmarks/postgres_sink.py [--rows 1000000] [--repeat 3] [--write]``; the server is
``FLOWSTATE_POSTGRES_DSN`` or the local one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from docsection import write_section  # noqa: E402

BEGIN, END = "<!-- postgres:begin -->", "<!-- postgres:end -->"
KEYS = 10_000

CHILD = r'''
import sys, time
import psycopg
import flowstate as fs
from flowstate.connectors.postgres import dsn_from_env

kind, table, rows, checkpoints = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
dsn = dsn_from_env()
KEYS = 10_000

class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("n", default=0)
    def process(self, key, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (key, n)

started = time.perf_counter()
if kind == "copy":
    counts = {}
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {table} (key, n) FROM STDIN") as copy:
            for i in range(rows):
                key = f"k{(i * 7919) % KEYS}"
                n = counts.get(key, 0) + 1
                counts[key] = n
                copy.write_row((key, n))
else:
    delivery = "exactly_once" if kind == "exactly_once" else "at_least_once"
    flow = fs.Dataflow("pg-bench")
    (flow.source(fs.GeneratorSource(lambda i: f"k{(i * 7919) % KEYS}", rows, splits=1))
         .key_by(lambda k: k)
         .process(Count())
         .sink(fs.PostgresSink(table, dsn, delivery=delivery)))
    fs.run(flow, checkpoint_dir=checkpoints, mode="exactly_once", interval="1s", control_endpoint=False)
print(time.perf_counter() - started)
'''


def run_one(kind: str, rows: int, dsn: str) -> float:
    import psycopg

    table = f"fs_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (key text NOT NULL, n bigint NOT NULL)")
    try:
        with tempfile.TemporaryDirectory() as checkpoints:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, kind, table, str(rows), checkpoints],
                capture_output=True, text=True, check=False,
            )
        if done.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{done.stderr[-2000:]}")
        with psycopg.connect(dsn) as conn:
            (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        if count != rows:
            raise SystemExit(f"{kind}: the table holds {count} rows, expected {rows}")
        return float(done.stdout.strip().splitlines()[-1])
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")
            conn.execute("DELETE FROM flowstate_sink_commits WHERE sink = %s", (f"postgres-sink:{table}",))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    from flowstate.connectors.postgres import dsn_from_env

    dsn = dsn_from_env()
    kinds = ("exactly_once", "at_least_once", "copy")
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for round_ in range(args.repeat):
        for kind in kinds:
            seconds[kind].append(run_one(kind, args.rows, dsn))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {seconds[k][-1]:.2f} s" for k in kinds), file=sys.stderr)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = {k: statistics.median(c / s for c, s in zip(seconds["copy"], seconds[k])) for k in kinds}
    labels = {
        "exactly_once": "`PostgresSink` exactly-once, 1 s checkpoints",
        "at_least_once": "`PostgresSink(delivery=\"at_least_once\")`, 1 s checkpoints",
        "copy": "plain `COPY` from one Python loop (the limit)",
    }
    lines = [
        f"{args.rows:,} rows `(key text, n bigint)` ({KEYS:,} keys, counted as in the reference job), "
        f"median of {args.repeat} fresh processes per way, rounds interleaved; Python "
        f"{platform.python_version()}, {os.cpu_count()} cores shared with other work running at the same time "
        f"(absolute figures are low and noisy; compare the ratios), PostgreSQL on 127.0.0.1. "
        f"Command: `python benchmarks/postgres_sink.py --rows {args.rows} --repeat {args.repeat} --write`.",
        "",
        "| way | seconds | rows/s | speed vs plain COPY (same round) |",
        "|---|---|---|---|",
        *(f"| {labels[k]} | {median[k]:.2f} | {args.rows / median[k]:,.0f} | {ratio[k]:.2f}× |" for k in kinds),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(
            HERE.parent / "docs" / "benchmarks.md", BEGIN, END, text,
            absent="## PostgreSQL sink\n\nThe engine's time includes the keyed count that produces the rows; "
                   "the plain COPY computes the same counts in its loop.\n\n" + BEGIN + "\n" + END + "\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
