"""The windowed jobs of the end-to-end tests, their input, and the plain batch computation of each.

Input: record ``i`` is ``(key, ts, value)``. Source split ``j`` (of 3) holds the records with
``i % 3 == j``; each key belongs to one split, so the arrival order of a key's records is the same at
any parallelism (count windows depend on it). Timestamps rise by 0.05 s per record of a split with up
to 0.2 s of disorder (below the 0.25 s bound: no record is late), in bursts of 200 records per split
separated by 10 s of silence, so that sessions (gap 1 s) end and start again.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import flowstate as fs

N = 1800
SPLITS = 3
OUT_OF_ORDERNESS = 0.25
KINDS = ("tumbling", "sliding", "session", "count")


def record(i: int) -> tuple[str, float, int]:
    split, n = i % SPLITS, i // SPLITS
    key = f"u{split}{n % 4}"
    ts = 1_700_000_000.0 + n * 0.05 + 10.0 * (n // 200) + ((n * 7919) % 5) * 0.04
    return key, round(ts, 6), i % 10


def records(count: int = N) -> list[tuple[str, float, int]]:
    return [record(i) for i in range(count)]


def session_summary(key: Any, window: Any, recs: list[Any]) -> list[Any]:
    return [(key, window.start, window.end, len(recs), sum(r[2] for r in recs))]


def count_summary(key: Any, window: Any, recs: list[Any]) -> list[Any]:
    return [(key, window.start, window.end, sorted(r[2] for r in recs))]


def add_values(a: Any, b: Any) -> Any:
    return (a[0], max(a[1], b[1]), a[2] + b[2])


def window_job(kind: str, sink: Any, *, parallelism: int, count: int = N, rate: float | None = None,
               name: str = "windows") -> fs.Dataflow:
    flow = fs.Dataflow(name, parallelism=parallelism)
    keyed = (flow.source(fs.GeneratorSource(record, count, splits=SPLITS, rate=rate, name="events"), uid="events")
                 .assign_timestamps(lambda r: r[1], max_out_of_orderness=OUT_OF_ORDERNESS, uid="timestamps")
                 .key_by(lambda r: r[0]))
    if kind == "tumbling":
        out = keyed.window(fs.TumblingWindows("5s")).aggregate(fs.aggregates.count(), uid="win")
    elif kind == "sliding":
        out = keyed.window(fs.SlidingWindows("10s", "5s")).reduce(add_values, uid="win")
    elif kind == "session":
        out = keyed.window(fs.SessionWindows(gap=1)).process(session_summary, uid="win")
    elif kind == "count":
        out = keyed.window(fs.CountWindows(7)).process(count_summary, uid="win")
    else:
        raise ValueError(kind)
    out.map(normalize, uid="normalize").sink(sink, uid="out")
    return flow


def normalize(result: Any) -> Any:
    """Window results as plain JSON-friendly tuples."""
    if isinstance(result, fs.WindowResult):
        value = result.value
        if isinstance(value, tuple):
            value = value[2]
        return (result.key, result.window.start, result.window.end, value)
    return tuple(result)


def batch_windows(kind: str, count: int = N) -> Counter[Any]:
    """The plain batch computation of ``window_job(kind)`` over the same input."""
    data = records(count)
    out: Counter[Any] = Counter()
    if kind == "tumbling":
        for key, ts, _ in data:
            start = ts - ts % 5.0
            out[(key, start, start + 5.0)] += 1
        return Counter({(k, s, e, c): 1 for (k, s, e), c in out.items()})
    if kind == "sliding":
        sums: dict[Any, int] = defaultdict(int)
        for key, ts, value in data:
            last = ts - ts % 5.0
            for start in (last, last - 5.0):
                if start + 10.0 > ts:
                    sums[(key, start, start + 10.0)] += value
        return Counter((k, s, e, v) for (k, s, e), v in sums.items())
    if kind == "session":
        by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for key, ts, value in data:
            by_key[key].append((ts, value))
        for key, items in by_key.items():
            items.sort()
            start, end, n, total = items[0][0], items[0][0] + 1, 0, 0
            for ts, value in items:
                if ts > end:
                    out[(key, start, end, n, total)] += 1
                    start, n, total = ts, 0, 0
                end = max(end, ts + 1)
                n, total = n + 1, total + value
            out[(key, start, end, n, total)] += 1
        return out
    if kind == "count":
        seen: dict[str, list[int]] = defaultdict(list)
        for key, _, value in data:
            seen[key].append(value)
        for key, values in seen.items():
            for start in range(0, len(values), 7):
                chunk = values[start:start + 7]
                out[(key, start, start + len(chunk), tuple(sorted(chunk)))] += 1
        return out
    raise ValueError(kind)


def as_key(row: Any) -> Any:
    return tuple(tuple(x) if isinstance(x, list) else x for x in row)


def committed(directory: Path) -> Counter[Any]:
    rows: Counter[Any] = Counter()
    if not directory.exists():
        return rows
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        with open(path, encoding="utf-8") as file:
            rows.update(as_key(json.loads(line)) for line in file)
    return rows


def close(actual: Counter[Any], expected: Counter[Any]) -> str:
    missing, extra = expected - actual, actual - expected
    return (f"{sum(missing.values())} missing (e.g. {sorted(missing, key=repr)[:3]}), "
            f"{sum(extra.values())} unexpected (e.g. {sorted(extra, key=repr)[:3]})")


def floats_match(row: Any) -> Any:
    return tuple(round(x, 6) if isinstance(x, float) and math.isfinite(x) else x for x in row)
