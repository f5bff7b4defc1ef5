"""The cost of state time-to-live on the hot path of a keyed process function (run by hand).

One keyed process operator (``value()`` then ``update(n + 1)`` per record, ``--records`` records over
10,000 keys in batches of 2,048), driven directly, with the heap and the RocksDB backend: without a
ttl, with a processing-time ttl and with an event-time ttl (timestamps from the record number, a
watermark after every batch). The ttl is longer than the run, so what is measured is the bookkeeping
of every access (the expiry stored with the value, the expiry index), not removals. Each cell is the
CPU time of the best of ``--repeat`` passes, the variants interleaved, so the ratios compare passes
made seconds apart on the same machine.

Usage: ``.venv/bin/python benchmarks/state_ttl.py [--records N] [--repeat K] [--write]``; ``--write``
puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import flowstate as fs  # noqa: E402
from docsection import write_section  # noqa: E402
from flowstate.failpoints import Failpoints  # noqa: E402
from flowstate.operators.base import OperatorEnv  # noqa: E402
from flowstate.operators.build import build_operator  # noqa: E402
from flowstate.state.memory import HeapKeyedStateBackend  # noqa: E402
from flowstate.state.rocksdb import RocksDBBackendFactory  # noqa: E402
from flowstate.time.watermarks import Watermark  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- ttl:begin -->", "<!-- ttl:end -->"
SECTION = f"""## State TTL: the cost of expiry bookkeeping

A state with a ttl stores `(value, expiry)` and keeps an in-memory expiry index per state
(`src/flowstate/state/ttl.py`). Measured by `benchmarks/state_ttl.py`; reproduce with
`python benchmarks/state_ttl.py --write`.

{BEGIN}
{END}
"""

TTL: dict[str, tuple[dict[str, Any], bool]] = {
    # variant: (the state's ttl arguments, whether the stream has timestamps and watermarks)
    "none": ({}, False),
    "processing": ({"ttl": "1d"}, False),
    "none, with timestamps": ({}, True),
    "event": ({"ttl": "1d", "ttl_time": "event"}, True),
}
BASELINE = {"none": "none", "processing": "none", "none, with timestamps": "none, with timestamps",
            "event": "none, with timestamps"}


class Count(fs.KeyedProcessFunction):
    def __init__(self, ttl: dict[str, Any]) -> None:
        self.ttl = ttl

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0, **self.ttl)

    def process(self, record: Any, ctx: fs.RuntimeContext) -> None:
        self.count.update(self.count.value() + 1)


class Node:
    """The part of a dataflow node that ``build_operator`` reads."""

    def __init__(self, fn: Any, timestamps: bool) -> None:
        self.kind, self.uid, self.name, self.fn = "keyed_process", "count", "count", fn
        self.extra = {"timestamp_fn": (lambda r: r[1]) if timestamps else None}


def one_pass(backend: str, ttl: str, records: int, work: Path) -> float:
    factory = HeapKeyedStateBackend if backend == "heap" else RocksDBBackendFactory(base_dir=str(work))
    env = OperatorEnv(0, 1, 128, True, Failpoints(), factory)
    kwargs, timestamps = TTL[ttl]
    op = build_operator(Node(Count(kwargs), timestamps), env, lambda r: r[0])
    op.open(None)
    batches = [[((b * 2048 + i) * 7919 % 10_000, float(b * 2048 + i)) for i in range(2048)]
               for b in range(records // 2048)]
    started = time.process_time()
    for batch in batches:
        op.process_batch(batch)
        if timestamps:
            op.on_watermark(Watermark(batch[-1][1]))
    seconds = time.process_time() - started
    op.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ttl-bench-"))
    best: dict[tuple[str, str], float] = {}
    try:
        for _ in range(args.repeat):
            for backend in ("heap", "rocksdb"):
                for ttl in TTL:
                    seconds = one_pass(backend, ttl, args.records, work)
                    best[(backend, ttl)] = min(seconds, best.get((backend, ttl), float("inf")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = args.records // 2048 * 2048
    lines = [f"{n:,} records over 10,000 keys, one keyed process operator driven directly, CPU seconds of the "
             f"best of {args.repeat} interleaved passes, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"(CPython {platform.python_version()}, 2 cores shared with other work).", "",
             "| backend | ttl | CPU seconds | records/s of CPU | against the same job without ttl |", "|---|---|---|---|---|"]
    for backend in ("heap", "rocksdb"):
        for ttl in TTL:
            seconds = best[(backend, ttl)]
            lines.append(f"| {backend} | {ttl} | {seconds:.3f} | {n / seconds:,.0f} | "
                         f"{best[(backend, BASELINE[ttl])] / seconds:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        write_section(DOC, BEGIN, END, table, absent=SECTION)


if __name__ == "__main__":
    main()
