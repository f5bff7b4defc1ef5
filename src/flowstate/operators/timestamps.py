"""Runtime operators of event time around the windows: timestamp assignment and the selection of
late records.

``TimestampsOperator`` (``Stream.assign_timestamps``) generates watermarks with
``flowstate.time.SplitWatermarks`` from the largest timestamp of each batch (one call of the
timestamp function per record, one generator update per batch) and on every tick (idleness, at most
one watermark per ``interval``), swallows the watermarks that come from upstream except the final
one, and keeps its generator's state in the checkpoint, so that its watermark never goes backwards
across a restore.

``SelectOperator`` follows a window operator (``flowstate.operators.windows``): it keeps either the
window results or the records the window operator found late (``LateRecord``, ``late_records()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

from flowstate.clock import SystemClock
from flowstate.errors import UserFunctionError
from flowstate.operators.base import Operator, OperatorEnv, Ready
from flowstate.operators.timers import to_seconds
from flowstate.time.watermarks import MAX_WATERMARK, SplitWatermarks, Watermark

SUBTASK_SPLIT = "*"
"""The split of a generator that sees its records as one stream (records carry no split id)."""


class LateRecord:
    """A late record on its way to the late stream (``late_records()``)."""

    __slots__ = ("record",)

    def __init__(self, record: Any) -> None:
        self.record = record

    def __reduce__(self) -> tuple[Any, ...]:
        return (LateRecord, (self.record,))


class TimestampsOperator(Operator):
    stateful = True
    wants_ticks = True

    def __init__(self, uid: str, name: str, env: OperatorEnv, fn: Callable[[Any], Any],
                 out_of_orderness: float, idle_timeout: float | None, interval: float = 0.0) -> None:
        super().__init__(uid, name, env)
        self.fn = fn
        self.interval = interval
        self._next_emit = -math.inf
        self.out_of_orderness = out_of_orderness
        self.idle_timeout = idle_timeout
        self.clock = env.clock or SystemClock()
        self.generator = SplitWatermarks(out_of_orderness, idle_timeout)
        self.current_split = SUBTASK_SPLIT
        """The split the records of the next batch come from, when the source reader says
        (``SourceTask`` sets it; ``SUBTASK_SPLIT`` otherwise)."""

    def open(self, resume_state: Any) -> None:
        if resume_state:
            self.generator = SplitWatermarks(self.out_of_orderness, self.idle_timeout, resume_state)

    def process_batch(self, batch: list[Any]) -> list[Any]:
        if batch:
            try:
                highest = to_seconds(max(map(self.fn, batch)))  # numbers, or aware datetimes, compare
            except Exception:  # noqa: BLE001 - found again record by record, to name the record
                highest = self._highest_slowly(batch)
            self.generator.on_records(self.current_split, highest, self.clock.monotonic())
        return batch

    def _highest_slowly(self, batch: list[Any]) -> float:
        fn = self.fn
        record = None
        highest = -math.inf
        try:
            for record in batch:
                ts = to_seconds(fn(record))
                if ts > highest:
                    highest = ts
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return highest

    def retain_splits(self, splits: Collection[str]) -> None:
        self.generator.retain(splits)

    def start_split(self, split: str) -> None:
        self.generator.add_split(split, self.clock.monotonic())

    def finish_split(self, split: str) -> None:
        self.generator.finish(split)

    def on_watermark(self, event: Watermark) -> tuple[list[Any], Watermark | None]:
        # Watermarks from upstream are replaced by this operator's own, except the final one.
        return [], event if event.timestamp == MAX_WATERMARK and not event.idle else None

    def on_tick(self, now: float) -> tuple[list[Any], Watermark | None]:
        """At most one watermark per ``interval`` (Flink's periodic watermarks): the windows
        downstream group the records between two watermarks."""
        now = self.clock.monotonic()
        if now < self._next_emit:
            return [], None
        self._next_emit = now + self.interval
        return [], self.generator.current(now)

    def snapshot(self, checkpoint_id: int) -> Ready:
        return Ready(self.generator.snapshot())


class SelectOperator(Operator):
    """After a window operator: its results (``late=False``) or its late records (``late=True``)."""

    def __init__(self, uid: str, name: str, env: OperatorEnv, late: bool) -> None:
        super().__init__(uid, name, env)
        self.late = late

    def process_batch(self, batch: list[Any]) -> list[Any]:
        if self.late:
            return [r.record for r in batch if type(r) is LateRecord]
        return [r for r in batch if type(r) is not LateRecord]
