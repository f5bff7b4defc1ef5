"""The joins workload: orders, payments and customer tiers through ``interval_join``, ``window_join``
and ``join_latest``, checked against a plain batch computation of the same joins.

Input, three replayable sources of two splits each (``GeneratorSource``), timestamps on a 0.25 s
grid (exact in binary floating point, so that a bound is hit exactly where the batch says it is):

- ``orders``: order ``i`` is ``("o<i>", customer, ts, i)`` with ``ts = START + i/2`` plus up to
  1.5 s of disorder; every ``STRAGGLE``-th order after the first ``LATE`` s is a **straggler**,
  ``LATE`` s behind the others.
- ``payments``: payment ``j`` is ``("o<i>", customer, ts, j)`` for an order ``i`` near ``j``: most
  orders are paid once, some twice, some never; a payment comes about ``EARLIEST`` (-7) to
  ``LATEST`` (+47) s after its order, so that it falls inside, on and just outside the join's bounds.
- ``tiers``: version ``v`` is ``(customer, ts, v)``, a new tier for one customer every 2.5 s.

Rules the expected output relies on:

1. **Out-of-order within the bound is never late.** Each source's disorder (1.5 s) is below the
   watermark bound (``BOUND`` = 2 s), and a reader merges its splits in index order: an on-time
   record is never behind the watermark at a join, in a run without failures or after a restore
   (the watermarks are in the checkpoint). Its fate is therefore a function of the input alone.
2. **Late records over the bound are neutral by construction.** A straggler is behind every split's
   watermark by ``LATE`` s, but whether a join's watermark (the minimum over its input channels)
   already passed it when it arrives depends on how fast the *other* channels went: it is dropped
   (``interval_join``), sent to the late stream (``window_join``) or joined at once
   (``join_latest``) depending on timing. So a straggler belongs to the customer ``c-late`` that
   makes no payment and has exactly one tier, written before any order; its order id is never paid.
   Dropped or not, it yields no interval or window pair, and ``join_latest`` gives it that one tier
   either way. The batch computation says so: it joins stragglers like any record.
3. The interval join pairs an order ``o`` and a payment ``p`` of one order id when
   ``o.ts + LOWER <= p.ts <= o.ts + UPPER`` (both bounds inclusive).
4. The window join pairs an order and a payment of one customer in the same ``WINDOW``-second
   tumbling window (``start = ts - ts % WINDOW``).
5. ``join_latest`` gives each order the tier of its customer's newest version at or before the
   order's timestamp (``None`` when there is none yet).

Output, one ``FileSink`` per join: ``interval`` rows ``["i", order, payment]``, ``window`` rows
``["w", customer, order, payment]``, ``latest`` rows ``["l", order, tier]``.

The checker recomputes all three from the input with nothing but the standard library and compares
them with the committed output as multisets: in the exactly-once modes nothing may be missing,
duplicated or unexpected. In ``at_least_once`` only a missing row is a problem (the chaos runner
counts the rest): a replayed record is buffered and paired again (duplicates), and since barriers
are not aligned, the restored state may hold records and watermarks that came after the barrier on
another channel, so a replayed order can find its customer's older tiers already removed
(``join_latest`` rule 3) and get a newer tier, or none (unexpected rows).
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

ORDERS = 3000
PAYMENTS = 3000
TIERS = 600
SPLITS = 2
CUSTOMERS = 12
START = 1_700_000_000.0
BOUND = 2.0
"""The watermark bound (``max_out_of_orderness``) of every source; their disorder is below it."""
LOWER, UPPER = -5.0, 40.0
"""The interval join's bounds, in seconds from the order."""
EARLIEST, LATEST = -7.0, 47.0
"""Payments come this far before and after their order: across both bounds."""
WINDOW = 20.0
STRAGGLE = 37
LATE = 300.0
LATE_CUSTOMER = "c-late"
SINKS = ("interval", "window", "latest")


def _jitter(i: int, salt: int) -> float:
    """0 .. 1.5 s in steps of 0.25 s: below ``BOUND``, so never late (rule 1)."""
    return (((i * 2654435761 + salt * 40503) & 0xFFFFFFFF) >> 16) % 7 * 0.25


def order(i: int) -> tuple[str, str, float, int]:
    if i % STRAGGLE == STRAGGLE - 1 and i * 0.5 > LATE:
        return (f"o{i}", LATE_CUSTOMER, START + i * 0.5 - LATE, i)  # rule 2
    return (f"o{i}", f"c{i % CUSTOMERS}", START + i * 0.5 + _jitter(i, 1), i)


def _paid(j: int) -> int:
    """The order payment ``j`` pays: one whose time is ``EARLIEST`` .. ``LATEST`` s before the
    payment's (so that the payment falls inside, on and just outside the interval join's bounds);
    never a straggler's (rule 2). Some orders are paid twice, some never."""
    i = j - int(-EARLIEST * 2) + (j * 40503 >> 3) % int((LATEST - EARLIEST) * 2 + 1)
    i = j - (i - j)  # j - d with d in -14 .. 94
    return i - 1 if i % STRAGGLE == STRAGGLE - 1 else i


def payment(j: int) -> tuple[str, str, float, int]:
    """In index order, with the disorder of every source: the order is chosen by the payment's time,
    not the other way round, so that the payments' own times stay within the watermark bound."""
    i = _paid(j)
    return (f"o{i}", f"c{i % CUSTOMERS}", START + j * 0.5 + _jitter(j, 2), j)


def tier(v: int) -> tuple[str, float, int]:
    if v == 0:
        return (LATE_CUSTOMER, START - 2 * LATE, 0)  # rule 2: before any order, and its only tier
    return (f"c{(v * 5) % CUSTOMERS}", START + v * 2.5 + _jitter(v, 3), v)


def _third(record: Any) -> float:
    return record[2]  # type: ignore[no-any-return]


def _second(record: Any) -> float:
    return record[1]  # type: ignore[no-any-return]


def _interval_row(o: Any, p: Any) -> list[Any]:
    return ["i", o[0], p[3]]


def _window_row(o: Any, p: Any) -> list[Any]:
    return ["w", o[1], o[0], p[3]]


def _latest_row(o: Any, row: Any) -> list[Any]:
    return ["l", o[0], None if row is None else row[2]]


def joins_job(output: str | os.PathLike[str], *, orders: int = ORDERS, payments: int = PAYMENTS, tiers: int = TIERS,
              parallelism: int = 2, rate: float | None = None) -> fs.Dataflow:
    """The workload (each source at most ``rate`` records/s), committing to ``output/interval``,
    ``output/window`` and ``output/latest``."""
    out = Path(output)
    flow = fs.Dataflow("joins", parallelism=parallelism)

    def source(name: str, fn: Any, count: int, timestamp: Any) -> Any:
        return (flow.source(fs.GeneratorSource(fn, count, splits=SPLITS, rate=rate, name=name), uid=name)
                    .assign_timestamps(timestamp, max_out_of_orderness=BOUND, uid=f"{name}-time"))

    order_stream = source("orders", order, orders, _third)
    payment_stream = source("payments", payment, payments, _third)
    tier_stream = source("tiers", tier, tiers, _second)
    (order_stream.key_by(lambda o: o[0])
         .interval_join(payment_stream.key_by(lambda p: p[0]), lower=LOWER, upper=UPPER, fn=_interval_row,
                        uid="interval-join")
         .sink(fs.FileSink(out / "interval"), uid="interval"))
    (order_stream.key_by(lambda o: o[1])
         .window_join(payment_stream.key_by(lambda p: p[1]), fs.TumblingWindows(WINDOW), _window_row, uid="window-join")
         .sink(fs.FileSink(out / "window"), uid="window"))
    (order_stream.key_by(lambda o: o[1])
         .join_latest(tier_stream.key_by(lambda t: t[0]), _latest_row, uid="latest-join")
         .sink(fs.FileSink(out / "latest"), uid="latest"))
    return flow


def job() -> fs.Dataflow:
    """The workload with its defaults, writing to ``joins-out/``: ``flowstate chaos
    flowstate.testing.oracles.joins:job``."""
    return joins_job("joins-out")


# ---- the checker ------------------------------------------------------------------------------------


def expected_rows(orders: int = ORDERS, payments: int = PAYMENTS, tiers: int = TIERS) -> Counter[tuple[Any, ...]]:
    """Every row the workload commits, computed from the input alone (rules 3-5)."""
    all_orders = [order(i) for i in range(orders)]
    all_payments = [payment(j) for j in range(payments)]
    rows: Counter[tuple[Any, ...]] = Counter()
    by_id: dict[str, list[Any]] = defaultdict(list)
    by_window: dict[tuple[str, float], list[Any]] = defaultdict(list)
    for p in all_payments:
        by_id[p[0]].append(p)
        by_window[(p[1], p[2] - p[2] % WINDOW)].append(p)
    versions: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for v in range(tiers):
        customer, ts, value = tier(v)
        versions[customer].append((ts, value))
    for o in all_orders:
        for p in by_id[o[0]]:
            if o[2] + LOWER <= p[2] <= o[2] + UPPER:
                rows[("i", o[0], p[3])] += 1
        for p in by_window[(o[1], o[2] - o[2] % WINDOW)]:
            rows[("w", o[1], o[0], p[3])] += 1
        known = [version for version in versions[o[1]] if version[0] <= o[2]]
        rows[("l", o[0], max(known)[1] if known else None)] += 1
    return rows


def read_rows(directory: Path) -> Counter[tuple[Any, ...]]:
    rows: Counter[tuple[Any, ...]] = Counter()
    if directory.exists():
        for path in sorted(directory.iterdir()):
            if not path.name.startswith("."):
                with open(path, encoding="utf-8") as file:
                    rows.update(tuple(json.loads(line)) for line in file if line.strip())
    return rows


def check_output(directories: Mapping[str, Path], mode: str, *, orders: int = ORDERS, payments: int = PAYMENTS,
                 tiers: int = TIERS) -> list[str]:
    actual = Counter[tuple[Any, ...]]()
    for uid in SINKS:
        if uid not in directories:
            return [f"no committed output of sink {uid!r}"]
        actual += read_rows(directories[uid])
    expected = expected_rows(orders, payments, tiers)
    missing, extra = expected - actual, actual - expected
    problems = []
    if missing:
        problems.append(f"{sum(missing.values())} join rows missing, e.g. {sorted(missing, key=repr)[:2]}")
    if mode not in EXACTLY_ONCE_MODES:
        return problems  # the module docstring says why
    unexpected = Counter({row: n for row, n in extra.items() if row not in expected})
    if unexpected:
        problems.append(f"{sum(unexpected.values())} join rows unexpected, e.g. {sorted(unexpected, key=repr)[:2]}")
    if extra - unexpected:
        duplicated = extra - unexpected
        problems.append(f"{sum(duplicated.values())} join rows duplicated, e.g. {sorted(duplicated, key=repr)[:2]}")
    return problems


def oracle(*, orders: int = ORDERS, payments: int = PAYMENTS, tiers: int = TIERS) -> Oracle:
    """The join checks for the chaos runner."""
    return Oracle("joins", lambda directories, mode: check_output(directories, mode, orders=orders,
                                                                  payments=payments, tiers=tiers))
