"""Overhead of checkpoints every second on the reference job, heap and RocksDB state (run by hand).

For each input file of the shared workload (``--inputs``) and each state backend (``--backends``:
``heap``, every checkpoint the whole state, the default; ``heap-incremental``, a chain of a base and
deltas (``heap_incremental``); ``rocksdb``, incremental), runs the reference job (``refjob.py``: keyed running count with
``value_state``, parallelism 1) with checkpoints off (mode ``none``) and with ``exactly_once``
checkpoints every 1 s, each run a fresh process, ``--repeat`` rounds run interleaved. Reports the median records/s and CPU
time per record, the overhead of checkpoints against ``none`` on the same backend, and from the
checkpoints' metadata the bytes each checkpoint wrote against the full size of the state it
references.

Run from the repository root: ``python benchmarks/checkpoint_overhead.py --repeat 3 --write``.
``heap-incremental`` with checkpoints off is the same job as ``heap`` off, so it is run once per round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import docsection

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"
SECTION = f"""## Checkpoint overhead end to end: heap and RocksDB state

The reference job with checkpoints every second against checkpoints off, for each state backend
(`benchmarks/checkpoint_overhead.py`), with the bytes each checkpoint wrote against the full size of
the state it references (incremental checkpoints: RocksDB's SST files, the heap's base and delta
files, uploaded once and referenced by later checkpoints; `heap`: the whole state every time).
Targets: checkpoints every 1 s cost at most 5 % of throughput; on the 1 M-key input, the heap keeps
at least 90 % of its throughput with checkpoints off. Reproduce with
`python benchmarks/checkpoint_overhead.py --repeat 3 --write`.

{BEGIN}
{END}
"""
BACKENDS = ("heap", "heap-incremental", "rocksdb")
FLAGS = {"heap": ["--state-backend", "heap"], "heap-incremental": ["--state-backend", "heap", "--heap-incremental"],
         "rocksdb": ["--state-backend", "rocksdb"]}
MODES = ("none", "exactly_once")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def off(backend: str) -> str:
    """The backend whose run with checkpoints off ``backend`` is compared with."""
    return "heap" if backend == "heap-incremental" else backend


def measure(inputs: list[Path], backends: list[str], repeat: int) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Every configuration once per round, so that drift of the shared machine hits all alike."""
    configs = [(path.name, backend, mode) for path in inputs for backend in backends for mode in MODES
               if mode != "none" or off(backend) == backend]
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {c: [] for c in configs}
    for i in range(repeat):
        for path in inputs:
            for name, backend, mode in [c for c in configs if c[0] == path.name]:
                out = subprocess.run(
                    [sys.executable, str(HERE / "refjob.py"), str(path), "--mode", mode, "--interval", "1s",
                     *FLAGS[backend], "--checkpoint-stats"],
                    check=True, capture_output=True, text=True,
                ).stdout
                run = json.loads(out)
                runs[(path.name, backend, mode)].append(run)
                print(f"  round {i + 1}: {path.name} {backend:>7} {mode:>12}: {run['records_per_s']:,.0f} rec/s, "
                      f"{run['cpu_ns_per_record']:.0f} ns CPU/record, {run['checkpoints']} checkpoints",
                      file=sys.stderr)
    return runs


def markdown(runs: dict[tuple[str, str, str], list[dict[str, Any]]], repeat: int) -> str:
    lines = [
        (f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[1]:.1f} over the last 5 minutes of the run "
        f"(wall-time figures move by ±30 % on a busy machine, CPU per record less); "
        f"{datetime.date.today().isoformat()}. "
        f"Command: `python benchmarks/checkpoint_overhead.py {' '.join(sys.argv[1:])}`."),
        "",
        "### Throughput: checkpoints every 1 s against checkpoints off",
        "",
        (f"Median of {repeat} fresh processes per row, run interleaved; parallelism 1; `exactly_once` checkpoints "
        "every 1 s; `heap` every checkpoint the whole state (the default), `heap-incremental` a base and deltas, "
        "`rocksdb` incremental; "
        "zstd compression of state files; every checkpoint kept (retained=1000) so that its metadata can be read "
        "after the run. Overhead is against `none` on the same input and backend (`heap` for `heap-incremental`), and "
        "so is the ratio of throughputs; CPU per record is the process's user + system CPU time divided by the "
        "records."),
        "",
        ("| input | backend | checkpoints | records/s (median) | min – max | checkpoints taken | wall overhead | "
        "throughput / off | CPU per record | CPU overhead | peak RSS |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, backend, mode), rs in runs.items():
        rate = statistics.median(r["records_per_s"] for r in rs)
        cpu = statistics.median(r["cpu_ns_per_record"] for r in rs)
        base = runs[(name, off(backend), "none")]
        base_rate = statistics.median(r["records_per_s"] for r in base)
        base_cpu = statistics.median(r["cpu_ns_per_record"] for r in base)
        off_ = mode == "none"
        lines.append(
            f"| `{name}` | {backend} | {'off' if off_ else 'every 1 s'} | {rate:,.0f} | "
            f"{min(r['records_per_s'] for r in rs):,.0f} – {max(r['records_per_s'] for r in rs):,.0f} | "
            f"{statistics.median(r['checkpoints'] for r in rs):.0f} | {'—' if off_ else f'{1 - rate / base_rate:+.1%}'} | "
            f"{'—' if off_ else f'{rate / base_rate:.0%}'} | "
            f"{cpu:,.0f} ns | {'—' if off_ else f'{cpu / base_cpu - 1:+.1%}'} | "
            f"{max(r['peak_rss_mib'] for r in rs):.0f} MiB |")
    lines += [
        "",
        "### Bytes written per checkpoint against the full size of the state",
        "",
        ("Over every checkpoint of every run with checkpoints (the final one included). Written = the task's "
        "state file plus the shared files it uploaded for that checkpoint; full size = the state file plus every "
        "file the checkpoint references. Sync / async = the synchronous part on the task thread and the "
        "asynchronous part (serialise, compress, upload, fsync), from the checkpoint's metadata."),
        "",
        ("| input | backend | checkpoints | written p50 | full size p50 | written / full (all checkpoints) | "
        "sync part p50 / max | async part p50 / max |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, backend, mode), rs in runs.items():
        if mode == "none":
            continue
        stats = [c for r in rs for c in r["checkpoint_stats"]]
        if not stats:
            continue
        written = [c["bytes_written"] for c in stats]
        full = [c["full_size"] for c in stats]
        sync = [c["sync_ms"] for c in stats]
        asyn = [c["async_ms"] for c in stats]
        lines.append(
            f"| `{name}` | {backend} | {len(stats)} | {fmt_bytes(statistics.median(written))} | "
            f"{fmt_bytes(statistics.median(full))} | {sum(written) / sum(full):.0%} | "
            f"{statistics.median(sync):.2f} ms / {max(sync):.2f} ms | "
            f"{statistics.median(asyn):.0f} ms / {max(asyn):.0f} ms |")
    for (name, backend, mode), rs in runs.items():
        if backend == "heap" or mode == "none" or not rs[0]["checkpoint_stats"]:
            continue
        lines += ["", f"Checkpoints of the first `{backend}` run on `{name}` (written / full size, sync part):", ""]
        lines.append("; ".join(
            f"{c['id']}{' (final)' if c['final'] else ''}: {fmt_bytes(c['bytes_written'])} / "
            f"{fmt_bytes(c['full_size'])}, {c['sync_ms']:.0f} ms" for c in rs[0]["checkpoint_stats"]) + ".")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    docsection.write_section(DOC, BEGIN, END, text, absent=SECTION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--inputs", default="events_5m_10k.txt,events_6m_1m.txt",
                        help="files of the shared workload under bench-data/ (generated by benchmarks/run.py)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"any of {', '.join(BACKENDS)}")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from run import DATA, ensure_data

    ensure_data()
    inputs = [DATA / name for name in args.inputs.split(",")]
    backends = args.backends.split(",")
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}: use {', '.join(BACKENDS)}")
    text = markdown(measure(inputs, backends, args.repeat), args.repeat)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
