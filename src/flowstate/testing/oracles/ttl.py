"""The state time-to-live workload: per-key counters in event-time ttl state over a key space that
keeps growing, checked against a plain batch computation of the same expiry rule.

Input: record ``i`` is ``(key, ts)``; source split ``j`` (of ``SPLITS``) holds the records with
``i % SPLITS == j`` and each key belongs to one split, so a key's records arrive in the same order in
every run. With ``n = i // SPLITS``, ``ts = START + n/4`` plus up to 1 s of disorder (below the 2 s
watermark bound: no record is ever late, so what a record sees of its key's state is a function
of the input alone, ``flowstate.state.ttl`` rule 2). Keys come in **generations** of ``GENERATION``
records per split, each in four phases: keys ``0-2`` of the generation are written in phases 0
and 2, keys ``3-5`` in phases 1 and 3; a phase lasts longer than the ttl, so every key falls silent
long enough to expire and then starts again from 1. After its generation a key is never written
again: the key space grows without end, and only the ttl keeps the state bounded.

The job (``Visits``): per key, with ``TTL`` s of event-time ttl, a ``value_state`` counter and a
``list_state`` of the timestamps written, a watermark after every batch; each record emits ``["v", key, ts, n, recent]``: ``n`` its
count since the key's state last expired, ``recent`` the listed timestamps still live.

The expiry rule of the batch computation (``flowstate.state.ttl`` rules 2-4, in event time): an
entry written by a record at ``t`` expires at ``t + TTL``, a write never moves an expiry back, and
a record at ``ts`` sees an entry while ``ts < expiry``. A list element keeps the expiry of its own
write.

The checker compares the committed rows as multisets: in the exactly-once modes nothing may be
missing, duplicated or unexpected. ``at_least_once`` is not checked (as for the windowed workload):
a replayed record counts again, so its rows carry higher counts. ``LIVE_BOUND`` is the most entries
that can be live at any watermark (two phases' keys of each split); tests compare the
``flowstate_operator_state_entries_live`` gauge with it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flowstate as fs
from flowstate.testing.oracles import EXACTLY_ONCE_MODES, Oracle

COUNT = 9_600
SPLITS = 2
START = 1_700_000_000.0
STEP = 0.25
"""Seconds between two records of a split."""
BOUND = 2.0
TTL = 10.0
PHASE = 60
"""Records of a split per phase: 15 s, longer than the ttl and the bound together."""
GENERATION = 4 * PHASE
KEYS_PER_PHASE = 3
STATES = 2
LIVE_BOUND = STATES * SPLITS * 3 * KEYS_PER_PHASE
"""Live ttl entries at any snapshot, at most (a key counts once per state: ``flowstate.state.ttl``
rule 6). At a watermark ``w`` an entry is live if written after ``w - TTL``; with a watermark after
every batch (``watermark_interval=0``) those writes span ``TTL + BOUND`` s plus the watermark's lag
behind the records before the barrier, so at most two phases (15 s each) of ``KEYS_PER_PHASE`` keys
per split, and a third when one reader runs up to a phase ahead of the other. Without the ttl, every
key ever written (``keys_written``) would be live."""


def record(i: int) -> tuple[str, float]:
    split, n = i % SPLITS, i // SPLITS
    generation, phase = n // GENERATION, n % GENERATION // PHASE
    key = f"k{generation}-{split}-{n % KEYS_PER_PHASE + KEYS_PER_PHASE * (phase % 2)}"
    jitter = (((n * 2654435761 + split * 40503) & 0xFFFFFFFF) >> 16) % 5 * 0.25  # 0 .. 1 s
    return key, START + n * STEP + jitter


class Visits(fs.KeyedProcessFunction):
    """A counter and a list of timestamps per key, both with event-time ttl."""

    def open(self, ctx: Any) -> None:
        self.count = ctx.value_state("count", ttl=TTL, ttl_time="event")
        self.recent = ctx.list_state("recent", ttl=TTL, ttl_time="event")

    def process(self, record: Any, ctx: Any) -> Any:
        key, ts = record
        n = (self.count.value() or 0) + 1
        recent = len(self.recent.get())
        self.count.update(n)
        self.recent.add(ts)
        yield ["v", key, ts, n, recent]


def ttl_job(output: str | os.PathLike[str], *, count: int = COUNT, parallelism: int = 2,
            rate: float | None = None) -> fs.Dataflow:
    """The workload over records ``0 .. count - 1`` (at most ``rate`` records/s), committing to
    ``output/visits``."""
    flow = fs.Dataflow("ttl", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(record, count, splits=SPLITS, rate=rate, name="visits"), uid="visits-source")
         .assign_timestamps(_timestamp, max_out_of_orderness=BOUND, watermark_interval=0, uid="timestamps")
         .key_by(_key)
         .process(Visits(), name="ttl-counter", uid="ttl-counter")
         .sink(fs.FileSink(Path(output) / "visits"), uid="visits"))
    return flow


def _timestamp(record: Any) -> float:
    return record[1]  # type: ignore[no-any-return]


def _key(record: Any) -> str:
    return record[0]  # type: ignore[no-any-return]


def job() -> fs.Dataflow:
    """The workload with its defaults, writing to ``ttl-out/``: ``flowstate chaos
    flowstate.testing.oracles.ttl:job``."""
    return ttl_job("ttl-out")


# ---- the checker ------------------------------------------------------------------------------------


def expected_rows(count: int = COUNT) -> Counter[tuple[Any, ...]]:
    """Every row the workload commits, computed from the input alone (the module's expiry rule)."""
    counters: dict[str, tuple[int, float]] = {}
    lists: dict[str, list[float]] = {}
    rows: Counter[tuple[Any, ...]] = Counter()
    for i in range(count):  # a key's records in arrival order: one split each, in index order
        key, ts = record(i)
        old = counters.get(key)
        n = (old[0] if old is not None and ts < old[1] else 0) + 1
        recent = [expiry for expiry in lists.get(key, []) if ts < expiry]
        rows[("v", key, ts, n, len(recent))] += 1
        expiry = ts + TTL
        counters[key] = (n, max(expiry, old[1]) if old is not None and ts < old[1] else expiry)
        lists[key] = [*recent, expiry]
    return rows


def keys_written(count: int = COUNT) -> int:
    return len({record(i)[0] for i in range(count)})


def read_rows(directory: Path) -> Counter[tuple[Any, ...]]:
    rows: Counter[tuple[Any, ...]] = Counter()
    if directory.exists():
        for path in sorted(directory.iterdir()):
            if not path.name.startswith("."):
                with open(path, encoding="utf-8") as file:
                    rows.update(tuple(json.loads(line)) for line in file if line.strip())
    return rows


def check_output(directories: Mapping[str, Path], mode: str, *, count: int = COUNT) -> list[str]:
    if mode not in EXACTLY_ONCE_MODES:
        return []  # the module docstring says why
    if "visits" not in directories:
        return ["no committed output of sink 'visits'"]
    actual, expected = read_rows(directories["visits"]), expected_rows(count)
    missing, extra = expected - actual, actual - expected
    problems = []
    if missing:
        problems.append(f"{sum(missing.values())} ttl rows missing, e.g. {sorted(missing, key=repr)[:2]}")
    if extra:
        problems.append(f"{sum(extra.values())} ttl rows duplicated or unexpected, e.g. {sorted(extra, key=repr)[:2]}")
    return problems


def oracle(*, count: int = COUNT) -> Oracle:
    """The ttl checks for the chaos runner."""
    return Oracle("ttl", lambda directories, mode: check_output(directories, mode, count=count))
