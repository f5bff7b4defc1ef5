"""What a window operator emits, and how it folds the records of a window into one accumulator.

Rules:

1. ``reduce`` and ``aggregate`` emit one ``WindowResult(key, window, value)`` per window firing;
   an early firing (``early_every`` / ``early_count``) emits an ``EarlyWindowResult``, an update
   followed by the window's final ``WindowResult``. ``process`` emits what its function returns.
2. Accumulators are values (``Reducer``): ``add`` may change only an accumulator created in the same
   batch, ``merge`` changes neither argument. An accumulator read from keyed state, or handed to
   state, is therefore never changed in place: a checkpoint holds the window as it was at its barrier.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from flowstate.windowed import EarlyWindowResult, WindowResult

PENDING_LIMIT = 100_000
"""Pending (key, window) accumulators or session records above which a window operator merges them
into keyed state without waiting for a window to close or a snapshot."""
MISSING: Any = object()
"""Marks an accumulator or stored window that does not exist (``None`` may be one)."""

Window = tuple[float, float]
Groups = dict[Window, dict[Any, Any]]
"""Accumulators per window and key: ``(start, end) -> {key: accumulator}``."""

new_result = partial(tuple.__new__, WindowResult)
"""``WindowResult(key, window, value)`` from the tuple ``(key, window, value)``, without a call in Python."""


class Reducer:
    """Rule 2: how a window folds its records: ``first(record)``, ``add(acc, record)``, ``merge(a, b)``,
    ``emit(key, window, acc) -> records``. Accumulators are values: ``add`` may change only an
    accumulator created in the same batch, ``merge`` changes neither argument."""

    def __init__(self, kind: str, fn: Any) -> None:
        self.kind = kind
        if kind == "aggregate":
            create, add, merge, result = fn.create, fn.add, fn.merge, fn.result
            self.first = lambda record: add(create(), record)
            self.add = add
            self.merge = merge
            self.emit = lambda key, window, acc: [WindowResult(key, window, result(acc))]
            self.emit_early = lambda key, window, acc: [EarlyWindowResult(key, window, result(acc))]
        elif kind == "reduce":
            self.first = lambda record: record
            self.add = fn
            self.merge = fn
            self.emit = lambda key, window, acc: [WindowResult(key, window, acc)]
            self.emit_early = lambda key, window, acc: [EarlyWindowResult(key, window, acc)]
        elif kind == "process":
            self.first = lambda record: [record]
            self.add = _append
            self.merge = _concat
            self.emit = lambda key, window, acc: list(fn(key, window, acc) or ())
            self.emit_early = lambda key, window, acc: list(fn(key, window, list(acc)) or ())
        else:
            raise ValueError(f"unknown window function kind {kind!r}")


def _append(acc: list[Any], record: Any) -> list[Any]:
    acc.append(record)
    return acc


def _concat(a: list[Any], b: list[Any]) -> list[Any]:
    return a + b
