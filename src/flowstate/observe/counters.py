"""What every task counts while it runs, read by the coordinator (directly for a task in its own
process, through the worker's progress messages for a task in a worker)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TaskCounters:
    """Totals of one task since it was built (one attempt)."""

    records_in: int = 0
    """Records the task read (a source: records it polled)."""
    records_out: int = 0
    """Records the task's chain emitted downstream (0 for a task that ends in a sink)."""
    backpressure_seconds: float = 0.0
    """Time the task waited for room in a full output channel."""
    state_entries: int = 0
    """Keyed state entries of the task's operators at its last snapshot."""
    operators_out: tuple[int, ...] = ()
    """Records each operator of the task's chain emitted, in chain order (a source's reader is not
    one of them: what it emits is ``records_in``)."""
    operators_ttl: tuple[tuple[int, int] | None, ...] = ()
    """Per operator of the chain, in chain order, at the task's last snapshot: the live entries of
    its states with a time-to-live and its expired entries not removed yet (``None``: it has no such
    state; ``flowstate.state.ttl``)."""
    watermark: float | None = None
    """The last finite event-time watermark (seconds) the task passed downstream; ``None`` before
    its first one, or in a job without event time."""
    progress: tuple[int, int] | None = None
    """A source whose input is bounded and of known size: (read, total) in its reader's unit
    (records, bytes), counting what was read before the restored checkpoint; ``None`` otherwise."""

    def __add__(self, other: TaskCounters) -> TaskCounters:
        ops = self.operators_out
        if len(ops) == len(other.operators_out):
            ops = tuple(a + b for a, b in zip(ops, other.operators_out))
        elif other.operators_out:
            ops = other.operators_out
        return TaskCounters(self.records_in + other.records_in, self.records_out + other.records_out,
                            self.backpressure_seconds + other.backpressure_seconds, other.state_entries, ops,
                            other.operators_ttl,
                            other.watermark if other.watermark is not None else self.watermark,
                            other.progress if other.progress is not None else self.progress)


def keyed_entries(operators: Iterable[Any], previous: int) -> int:
    """The keyed state entries of a chain's operators (``previous`` when a backend cannot say: a
    metric never fails a snapshot)."""
    try:
        return sum(op.backend.entry_count() for op in operators if hasattr(op, "backend"))
    except Exception:  # noqa: BLE001
        return previous


def ttl_entries(operators: Iterable[Any]) -> tuple[tuple[int, int] | None, ...]:
    """Per operator, its ``ttl_counts()`` (``None`` for an operator without ttl states)."""
    out: list[tuple[int, int] | None] = []
    for op in operators:
        counts = getattr(op, "ttl_counts", None)
        try:
            out.append(counts() if counts is not None else None)
        except Exception:  # noqa: BLE001 - a metric never fails a snapshot
            out.append(None)
    return tuple(out)
