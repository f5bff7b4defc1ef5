"""Benchmarks of the keyed state backends (run by hand, never by the test suite).

Measures, for the heap and the RocksDB backend, with one value state of N keys (``--sizes``):

1. the synchronous part of a snapshot (on the task thread) right after loading N keys; the
   asynchronous part (``materialize``, plus pickling ``data`` as the task runtime does) while 1 % of
   the keys changed in between; the heap's fold of those changes; then the next snapshot after another
   1 % changed (the steady state of periodic checkpoints);
2. the restore of the snapshot into a fresh backend at the same parallelism (heap: unpickle and
   load; RocksDB: link the stored SST files and open the database), and at another parallelism
   (``--rescale-keys``: 1 → 2 and 2 → 1);
3. for RocksDB, the bytes of an incremental snapshot (its SST files not in the base snapshot) when
   1 %, 10 %, 50 % and 100 % of the keys changed, against the pickled size of the changed entries;
4. the hot path: value()/update() of a value state, 1 M records over 10 k keys;
5. the synchronous part of repeated snapshots at each size (``--sync-sizes``): ``--sync-rounds``
   rounds of writing ``--sync-changed`` keys then taking a snapshot (timed) and materializing it;
   the median and the maximum. Run it with ``PYTHONPATH`` pointing at another checkout's ``src`` to
   compare two versions of a backend.

Prints Markdown tables. Run from the repository root with flowstate installed (``make bench`` sets up
``.venv``): ``.venv/bin/python benchmarks/state_backends.py --sizes 10000,100000,1000000``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docsection

from flowstate.state.backend import RestoredState
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.memory import HeapKeyedStateBackend
from flowstate.state.rocksdb import RocksDBKeyedStateBackend

MAXP = 128
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- backends:begin -->", "<!-- backends:end -->"
SECTION = f"""## State backends: snapshots, incremental checkpoints and restore

Measured on the backends alone, without a job (`benchmarks/state_backends.py`): one value state of N
keys, the synchronous part of a snapshot (on the task thread) and its asynchronous part, the bytes of an
incremental RocksDB snapshot against the fraction of keys changed, and the restore. Targets: a sync part
under 1 ms that stays flat from 10 k to 10 M keys; incremental bytes within 2× of the changed keys' bytes;
a restore of 1 M keys within 2 s. Reproduce with `python benchmarks/state_backends.py --sizes
10000,100000,1000000,10000000 --write`.

{BEGIN}
{END}
"""


def key(i: int) -> str:
    return f"key-{i:08d}"


def build(kind: str, base: Path, groups: range = range(MAXP)) -> Any:
    if kind == "heap":
        return HeapKeyedStateBackend(MAXP, groups)
    return RocksDBKeyedStateBackend(MAXP, groups, base_dir=base)


def load(backend: Any, n: int, first: int = 0, step: int = 1, value: Callable[[int], Any] = lambda i: i,
         groups: range | None = None) -> None:
    count = backend.value_state("count")
    keys = backend.keys
    for i in range(first, n, step):
        k = key(i)
        if groups is None or key_group_of(k, MAXP) in groups:
            keys.current_key = k
            count.update(value(i))


def stored_snapshot(backend: Any, store: Path) -> RestoredState:
    snapshot = backend.snapshot()
    parts = snapshot.materialize()
    state = RestoredState(pickle.loads(pickle.dumps(parts.data, protocol=pickle.HIGHEST_PROTOCOL)),
                          store_files(dict(parts.files), store))
    snapshot.release()
    return state


def store_files(files: dict[str, str], store: Path) -> dict[str, str]:
    """What the checkpoint storage would do with the shared files: keep each once."""
    stored = {}
    for file_key, path in files.items():
        target = store / file_key
        if not target.exists():
            shutil.copyfile(path, target)
        stored[file_key] = str(target)
    return stored


def snapshot_row(kind: str, n: int, work: Path) -> dict[str, Any]:
    store = work / "store"
    store.mkdir(parents=True)
    backend = build(kind, work)
    t0 = time.perf_counter()
    load(backend, n)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    snapshot = backend.snapshot()
    sync1 = time.perf_counter() - t0
    # The task keeps writing while the asynchronous part runs: 1 % of the keys change.
    load(backend, n, step=100, value=lambda i: -i)
    t0 = time.perf_counter()
    parts = snapshot.materialize()
    data = pickle.dumps(parts.data, protocol=pickle.HIGHEST_PROTOCOL)
    async1 = time.perf_counter() - t0
    files = store_files(dict(parts.files), store)
    snapshot.release()
    size = len(data) + sum(Path(p).stat().st_size for p in files.values())

    # Steady state: the layers fold (heap), 1 % of the keys change again, the next snapshot.
    t0 = time.perf_counter()
    backend.maybe_fold()
    fold = time.perf_counter() - t0
    load(backend, n, first=1, step=100, value=lambda i: -i)
    t0 = time.perf_counter()
    again = backend.snapshot()
    sync2 = time.perf_counter() - t0
    t0 = time.perf_counter()
    again_parts = again.materialize()
    pickle.dumps(again_parts.data, protocol=pickle.HIGHEST_PROTOCOL)
    async2 = time.perf_counter() - t0
    again.release()
    backend.close()

    restored = build(kind, work)
    t0 = time.perf_counter()
    restored.restore([RestoredState(pickle.loads(data), files)])
    restore_s = time.perf_counter() - t0
    count = restored.value_state("count")
    restored.keys.current_key = key(n - 100)  # changed right after the snapshot
    assert count.value() == n - 100, "the restore gave back the state at the cut"
    restored.close()
    shutil.rmtree(store)
    return {"backend": kind, "keys": n, "load_s": load_s, "sync_ms": sync1 * 1e3, "async_ms": async1 * 1e3,
            "sync2_ms": sync2 * 1e3, "async2_ms": async2 * 1e3, "fold_ms": fold * 1e3, "restore_s": restore_s,
            "bytes": size}


def incremental_rows(n: int, work: Path) -> list[dict[str, Any]]:
    """Step 3: each fraction starts from the same base snapshot (restored), changes that fraction
    of the keys, and snapshots again; the new SST files are what an incremental checkpoint uploads."""
    store = work / "store"
    store.mkdir(parents=True)
    base = build("rocksdb", work)
    load(base, n)
    snapshot = base.snapshot()
    parts = snapshot.materialize()
    base_files = store_files(dict(parts.files), store)
    snapshot.release()
    base.close()
    base_state = RestoredState(parts.data, base_files)
    full_bytes = sum(Path(p).stat().st_size for p in base_files.values())
    rows = []
    for fraction in (0.01, 0.10, 0.50, 1.00):
        backend = build("rocksdb", work)
        backend.restore([base_state])
        step = round(1 / fraction)
        load(backend, n, step=step, value=lambda i: -i)
        changed = {key(i): -i for i in range(0, n, step)}
        snapshot = backend.snapshot()
        t0 = time.perf_counter()
        files = snapshot.materialize().files
        materialize_s = time.perf_counter() - t0
        new = {k: p for k, p in files.items() if k not in base_files}
        new_bytes = sum(Path(p).stat().st_size for p in new.values())
        snapshot.release()
        backend.close()
        rows.append({"fraction": fraction, "changed": len(changed), "files": len(files), "new_files": len(new),
                     "new_bytes": new_bytes, "changed_pickled": len(pickle.dumps(changed, protocol=5)),
                     "full_bytes": full_bytes, "materialize_ms": materialize_s * 1e3})
    shutil.rmtree(store)
    return rows


def rescale_row(kind: str, n: int, work: Path) -> dict[str, Any]:
    """Restores at another parallelism: subtask 0 of 2 from one snapshot of every key (heap: hashes
    every key and keeps half; RocksDB: opens the files and deletes the other half's range), and one
    subtask from the snapshots of two halves (heap: loads both; RocksDB: opens the larger one and
    copies the other's range)."""
    store = work / "store"
    store.mkdir(parents=True)
    whole = build(kind, work)
    load(whole, n)
    state_whole = stored_snapshot(whole, store)
    whole.close()
    halves = []
    for subtask in range(2):
        groups = key_group_range(MAXP, 2, subtask)
        half = build(kind, work, groups)
        load(half, n, groups=groups)
        halves.append(stored_snapshot(half, store))
        half.close()
    split = build(kind, work, key_group_range(MAXP, 2, 0))
    t0 = time.perf_counter()
    split.restore([state_whole])
    split_s = time.perf_counter() - t0
    split.close()
    merged = build(kind, work)
    t0 = time.perf_counter()
    merged.restore(halves)
    merge_s = time.perf_counter() - t0
    count = merged.value_state("count")
    merged.keys.current_key = key(n - 1)
    assert count.value() == n - 1
    merged.close()
    shutil.rmtree(store)
    return {"backend": kind, "keys": n, "split_s": split_s, "merge_s": merge_s}


def hot_path(kind: str, work: Path, records: int = 1_000_000, repeat: int = 5) -> float:
    """Seconds for ``records`` value()+update() calls over 10 k keys (median of ``repeat``)."""
    runs = []
    keys_ = [key(i % 10_000) for i in range(records)]
    for _ in range(repeat):
        backend = build(kind, work)
        count = backend.value_state("count", default=0)
        keys = backend.keys
        value, update = count.value, count.update
        t0 = time.perf_counter()
        for k in keys_:
            keys.current_key = k
            update(value() + 1)
        runs.append(time.perf_counter() - t0)
        backend.close()
    return statistics.median(runs)


def sync_part_row(kind: str, n: int, work: Path, rounds: int, changed: int) -> dict[str, Any]:
    """Step 5: the sync part of ``rounds`` snapshots of a state of ``n`` keys, each after
    ``changed`` keys were written (a window that moves through the keys)."""
    backend = build(kind, work)
    load(backend, n)
    first = backend.snapshot()
    first.materialize()
    first.release()
    times = []
    count = backend.value_state("count")
    keys = backend.keys
    changed = min(changed, n)
    for r in range(rounds):
        start = r * changed
        for i in range(start, start + changed):
            keys.current_key = key(i % n)
            count.update(-r)
        backend.maybe_fold()
        t0 = time.perf_counter()
        snapshot = backend.snapshot()
        times.append(time.perf_counter() - t0)
        snapshot.materialize()
        snapshot.release()
    backend.close()
    return {"backend": kind, "keys": n, "changed": changed, "rounds": rounds,
            "median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]], rescale: list[dict[str, Any]],
             incremental: list[dict[str, Any]], hot: dict[str, float], sync: list[dict[str, Any]]) -> str:
    lines: list[str] = []

    def out(line: str = "") -> None:
        lines.append(line)

    out(f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, shared with other work while measured; {datetime.date.today().isoformat()}. "
        f"Command: `python benchmarks/state_backends.py {' '.join(sys.argv[1:])}`.\n")
    out("### Snapshot parts and restore against state size (one value state)\n")
    out("Sync = synchronous part on the task thread, right after loading the keys; async = `materialize()` "
        "plus pickling its `data` (RocksDB: writing the frozen object caches, flushing the memtables, the hard-link "
        "checkpoint and listing its files; copying them to storage is not included); "
        "heap fold = folding back the 1 % of keys written while the snapshot was pending; "
        "\"1 % changed\" = the next snapshot after another 1 % of the keys were updated. "
        "Restore = of the first snapshot into a fresh backend at the same parallelism.\n")
    out("| backend | keys | load | sync | async | sync, 1 % changed | async, 1 % changed | heap fold | "
        "restore | snapshot bytes |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fold = f"{r['fold_ms']:.2f} ms" if r["backend"] == "heap" else "—"
        out(f"| {r['backend']} | {r['keys']:,} | {r['load_s']:.1f} s | {r['sync_ms']:.2f} ms | "
            f"{r['async_ms']:.1f} ms | {r['sync2_ms']:.2f} ms | {r['async2_ms']:.1f} ms | {fold} | "
            f"{r['restore_s'] * 1e3:.0f} ms | {fmt_bytes(r['bytes'])} |")
    if rescale:
        out(f"\n### Restore at another parallelism: {args.rescale_keys:,} keys\n")
        out("1 → 2 = subtask 0 of 2 restores from the snapshot of one subtask that held every key; "
            "2 → 1 = one subtask restores from the snapshots of two.\n")
        out("| backend | 1 → 2 (subtask 0) | 2 → 1 |")
        out("|---|---|---|")
        for r in rescale:
            out(f"| {r['backend']} | {r['split_s'] * 1e3:.0f} ms | {r['merge_s'] * 1e3:.0f} ms |")
    if incremental:
        out(f"\n### Incremental RocksDB snapshots: {args.incremental_keys:,} keys, a fraction of them changed\n")
        out("New bytes = the SST files of the snapshot that the base snapshot did not have (what an "
            "incremental checkpoint uploads); against the pickled size of the changed entries alone, and "
            f"the full snapshot ({fmt_bytes(incremental[0]['full_bytes'])} of SST files).\n")
        out("| changed | keys changed | files (new) | new bytes | changed entries pickled | new / changed | "
            "new / full |")
        out("|---|---|---|---|---|---|---|")
        for r in incremental:
            out(f"| {r['fraction']:.0%} | {r['changed']:,} | {r['files']} ({r['new_files']}) | "
                f"{fmt_bytes(r['new_bytes'])} | {fmt_bytes(r['changed_pickled'])} | "
                f"{r['new_bytes'] / r['changed_pickled']:.2f} | {r['new_bytes'] / r['full_bytes']:.1%} |")
    if sync:
        out(f"\n### Synchronous part of repeated snapshots: {sync[0]['rounds']} snapshots, each after "
            f"{args.sync_changed:,} keys were written\n")
        out("| backend | keys | sync median | sync max |")
        out("|---|---|---|---|")
        for r in sync:
            out(f"| {r['backend']} | {r['keys']:,} | {r['median_ms']:.3f} ms | {r['max_ms']:.3f} ms |")
    if hot:
        out("\n### Hot path: value() + update() of a value state, 1,000,000 records over 10,000 keys\n")
        out("| backend | time | records/s |")
        out("|---|---|---|")
        for kind, seconds in hot.items():
            out(f"| {kind} | {seconds * 1e3:.0f} ms | {1_000_000 / seconds:,.0f} |")

    return "\n".join(lines).rstrip("\n") + "\n"


def write_section(text: str) -> None:
    docsection.write_section(DOC, BEGIN, END, text, absent=SECTION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated key counts (default 10000,100000,1000000; try 10000000)")
    parser.add_argument("--backends", default="heap,rocksdb")
    parser.add_argument("--incremental-keys", type=int, default=1_000_000)
    parser.add_argument("--rescale-keys", type=int, default=1_000_000)
    parser.add_argument("--skip-rescale", action="store_true")
    parser.add_argument("--skip-incremental", action="store_true")
    parser.add_argument("--skip-hot-path", action="store_true")
    parser.add_argument("--skip-snapshots", action="store_true", help="skip tables 1 (snapshot parts and restore)")
    parser.add_argument("--sync-sizes", default="", help="comma-separated key counts for table 5 (default: none)")
    parser.add_argument("--sync-rounds", type=int, default=15)
    parser.add_argument("--sync-changed", type=int, default=10_000)
    parser.add_argument("--write", action="store_true",
                        help="replace the section between the backends markers of docs/benchmarks.md")
    parser.add_argument("--work-dir", default=None, help="where RocksDB works (default: the temp directory)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.backends.split(",")
    work_root = Path(tempfile.mkdtemp(prefix="flowstate-statebench-", dir=args.work_dir))
    try:
        rows = []
        for n in [] if args.skip_snapshots else sizes:
            for kind in kinds:
                work = work_root / f"{kind}-{n}"
                print(f"  {kind}: {n:,} keys …", file=sys.stderr)
                t0 = time.perf_counter()
                rows.append(snapshot_row(kind, n, work))
                print(f"    {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                shutil.rmtree(work, ignore_errors=True)
        rescale = [] if args.skip_rescale else [
            rescale_row(kind, args.rescale_keys, work_root / f"rescale-{kind}") for kind in kinds]
        incremental = [] if args.skip_incremental else incremental_rows(args.incremental_keys, work_root / "incr")
        hot = {} if args.skip_hot_path else {kind: hot_path(kind, work_root / "hot") for kind in kinds}
        sync = []
        for n in [int(s) for s in args.sync_sizes.split(",") if s]:
            for kind in kinds:
                print(f"  sync part, {kind}: {n:,} keys …", file=sys.stderr)
                sync.append(sync_part_row(kind, n, work_root / f"sync-{kind}-{n}", args.sync_rounds,
                                          args.sync_changed))
    finally:
        shutil.rmtree(work_root, ignore_errors=True)

    text = markdown(args, rows, rescale, incremental, hot, sync)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
