"""The windowed workload: clicks per user through session windows and one-minute tumbling windows
with early counts, checked against a plain computation of the same windows.

Input: record ``i`` is ``(user, ts, value)``; source split ``j`` (of ``SPLITS``) holds the records
with ``i % SPLITS == j`` and each user belongs to one split, so a user's records arrive in the same
order in every run. Timestamps rise by 0.1 s per record of a split, with pauses of 90 s every 500
records of a split so that sessions (gap 30 s) close and open again, and up to 0.4 s of disorder
(below the 1 s bound: no record is late in a run without failures, nor after a restore, since the
watermarks are in the checkpoint).

Output, through two ``FileSink``s:

- ``sessions``: ``["s", user, start, end, records, sum of values]`` per session window;
- ``minutes``: ``["m", user, start, count, early]`` per one-minute window, with an early result on
  every ``EARLY``-th record of a window (``early_count``) and the final count.

The checker recomputes both from the input with nothing but the standard library and compares them
with the committed output as multisets: in the exactly-once modes nothing may be missing, duplicated
or unexpected. ``at_least_once`` is not checked: a record replayed after a restore counts again in
its window's state, so a window's final row may carry a higher count than the input's (and its exact
row is then missing): at-least-once aggregates over-count, as in Flink.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flowstate as fs
from flowstate.testing.oracles import EXACTLY_ONCE_MODES, Oracle

COUNT = 12_000
SPLITS = 4
USERS_PER_SPLIT = 6
GAP = 30.0
MINUTE = 60.0
EARLY = 25
START = 1_700_000_000.0


def record(i: int) -> tuple[str, float, int]:
    split, n = i % SPLITS, i // SPLITS
    user = f"u{split}-{n % USERS_PER_SPLIT}"
    ts = START + n * 0.1 + 90.0 * (n // 500) + ((n * 7919) % 5) * 0.1
    return user, round(ts, 3), i % 10


def _session_row(key: str, window: Any, records: list[Any]) -> list[Any]:
    return [["s", key, window.start, window.end, len(records), sum(r[2] for r in records)]]


def _minute_row(result: Any) -> list[Any]:
    return ["m", result.key, result.window.start, result.value, bool(result.early)]


def windows_job(output: str | os.PathLike[str], *, count: int = COUNT, parallelism: int = 2,
                rate: float | None = None) -> fs.Dataflow:
    """The workload over records ``0 .. count - 1`` (at most ``rate`` records/s), committing to
    ``output/sessions`` and ``output/minutes``."""
    out = Path(output)
    flow = fs.Dataflow("windows", parallelism=parallelism)
    keyed = (flow.source(fs.GeneratorSource(record, count, splits=SPLITS, rate=rate, name="clicks"), uid="clicks")
                 .assign_timestamps(lambda r: r[1], max_out_of_orderness=1.0, uid="timestamps")
                 .key_by(lambda r: r[0]))
    (keyed.window(fs.SessionWindows(gap=GAP)).process(_session_row, uid="sessions-window")
          .sink(fs.FileSink(out / "sessions"), uid="sessions"))
    (keyed.window(fs.TumblingWindows(MINUTE), early_count=EARLY).aggregate(fs.aggregates.count(), uid="minutes-window")
          .map(_minute_row, uid="minute-rows")
          .sink(fs.FileSink(out / "minutes"), uid="minutes"))
    return flow


def job() -> fs.Dataflow:
    """The workload with its defaults, writing to ``windows-out/``: ``flowstate chaos
    flowstate.testing.oracles.windows:job``."""
    return windows_job("windows-out")


# ---- the checker ------------------------------------------------------------------------------------


def expected_rows(count: int = COUNT) -> Counter[tuple[Any, ...]]:
    """Every row the workload commits, computed from the input alone."""
    by_user: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for i in range(count):
        user, ts, value = record(i)
        by_user[user].append((ts, value))
    rows: Counter[tuple[Any, ...]] = Counter()
    for user, items in by_user.items():
        ordered = sorted(items)
        start, end, n, total = ordered[0][0], ordered[0][0] + GAP, 0, 0
        for ts, value in ordered:
            if ts > end:
                rows[("s", user, start, end, n, total)] += 1
                start, n, total = ts, 0, 0
            end = max(end, ts + GAP)
            n, total = n + 1, total + value
        rows[("s", user, start, end, n, total)] += 1
        seen: dict[float, int] = defaultdict(int)
        for ts, _ in items:  # arrival order
            minute = ts - ts % MINUTE
            seen[minute] += 1
            if seen[minute] % EARLY == 0:
                rows[("m", user, minute, seen[minute], True)] += 1
        for minute, n in seen.items():
            rows[("m", user, minute, n, False)] += 1
    return rows


def read_rows(directory: Path) -> Counter[tuple[Any, ...]]:
    rows: Counter[tuple[Any, ...]] = Counter()
    if directory.exists():
        for path in sorted(directory.iterdir()):
            if not path.name.startswith("."):
                with open(path, encoding="utf-8") as file:
                    rows.update(tuple(json.loads(line)) for line in file if line.strip())
    return rows


def _rounded(rows: Counter[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    return Counter({tuple(round(x, 3) if isinstance(x, float) else x for x in row): n for row, n in rows.items()})


def check_output(directories: Mapping[str, Path], mode: str, *, count: int = COUNT) -> list[str]:
    if mode not in EXACTLY_ONCE_MODES:
        return []  # the module docstring says why
    actual = Counter[tuple[Any, ...]]()
    for uid in ("sessions", "minutes"):
        if uid not in directories:
            return [f"no committed output of sink {uid!r}"]
        actual += read_rows(directories[uid])
    actual, expected = _rounded(actual), _rounded(expected_rows(count))
    missing, extra = expected - actual, actual - expected
    problems = []
    if missing:
        problems.append(f"{sum(missing.values())} window rows missing, e.g. {sorted(missing, key=repr)[:2]}")
    if extra and mode in EXACTLY_ONCE_MODES:
        problems.append(f"{sum(extra.values())} window rows duplicated or unexpected, e.g. {sorted(extra, key=repr)[:2]}")
    return problems


def oracle(*, count: int = COUNT) -> Oracle:
    """The window checks for the chaos runner."""
    return Oracle("windows", lambda directories, mode: check_output(directories, mode, count=count))
