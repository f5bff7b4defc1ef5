"""Joins of two keyed streams: the interval join (``a.interval_join(b, lower=, upper=)``, below)
and the enrichment by the latest row of a table stream (``stream.join_latest(table)``,
``JoinLatestOperator``).

Rules:

1. Records of both inputs arrive on one keyed stream, tagged ``(0, a)`` or ``(1, b)`` (the join is a
   union of the two, keyed by each side's key: see ``KeyedStream.interval_join``).
2. ``a`` and ``b`` of one key join when ``a.ts + lower <= b.ts <= a.ts + upper``; each pair is emitted
   once, by whichever of the two arrives second.
3. A record whose timestamp is below the watermark is late and dropped (as in Flink): the side it
   would join may already have been cleared.
4. Each side keeps its records in keyed state (map state ``timestamp -> [records]``), so buffered
   records are in checkpoints and follow their key on a rescale. A left record is cleared once the
   watermark passes ``ts + upper``, a right one once it passes ``ts - lower``: no record still to come
   can join it then. A timer just past that time per buffered timestamp does it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from flowstate.clock import SystemClock
from flowstate.errors import UserFunctionError
from flowstate.operators.base import OperatorEnv, _Keyed
from flowstate.operators.timers import TimerService, to_seconds
from flowstate.time.watermarks import MIN_WATERMARK, Watermark

LEFT_STATE = "__join_left__"
RIGHT_STATE = "__join_right__"
_EVENT = 0


def _pair(a: Any, b: Any) -> tuple[Any, Any]:
    return (a, b)


class IntervalJoinOperator(_Keyed):
    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any], node: Any) -> None:
        super().__init__(uid, name, env, key_fn)
        extra = node.extra
        self.timestamp_fn = extra["timestamp_fn"]
        self.lower = float(extra["lower"])
        self.upper = float(extra["upper"])
        self.fn = node.fn or _pair
        self.watermark = MIN_WATERMARK
        self.late_dropped = 0
        self.clock = env.clock or SystemClock()

    def open(self, resume_state: Any) -> None:
        super().open(resume_state)
        self.sides = (self.backend.map_state(LEFT_STATE), self.backend.map_state(RIGHT_STATE))
        self.timers = TimerService(self.backend, self.clock)

    def process_batch(self, batch: list[Any]) -> list[Any]:
        self.backend.maybe_fold()
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        keys = self.backend.keys
        lower, upper = self.lower, self.upper
        wm = self.watermark
        fn = self.fn
        out: list[Any] = []
        record = None
        try:
            for record in batch:
                ts = to_seconds(ts_fn(record))
                if ts < wm:
                    self.late_dropped += 1  # rule 3
                    continue
                keys.current_key = key_fn(record)
                side, value = record
                mine, other = self.sides[side], self.sides[1 - side]
                low, high = (ts + lower, ts + upper) if side == 0 else (ts - upper, ts - lower)
                for other_ts, values in other.items():
                    if low <= other_ts <= high:
                        for v in values:
                            out.append(fn(value, v) if side == 0 else fn(v, value))
                kept = mine.get(ts)
                mine.put(ts, [value] if kept is None else kept + [value])
                # Rule 4: cleared just after the last watermark at which a match can still come.
                self.timers.register(_EVENT, math.nextafter(high if side == 0 else ts - lower, math.inf))
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out

    def on_watermark(self, event: Watermark) -> tuple[list[Any], Watermark | None]:
        if event.idle or event.timestamp <= self.watermark:
            return [], event
        self.watermark = wm = event.timestamp
        left, right = self.sides
        while self.timers.pop(_EVENT, wm) is not None:
            for ts in [t for t in left.keys() if t + self.upper < wm]:
                left.remove(ts)
            for ts in [t for t in right.keys() if t - self.lower < wm]:
                right.remove(ts)
        return [], event


VERSIONS_STATE = "__join_versions__"
WAITING_STATE = "__join_waiting__"


class JoinLatestOperator(_Keyed):
    """``stream.join_latest(table)``: each record of the stream with the table's row of its key as of
    the record's timestamp (Flink's event-time temporal join, as a left join).

    Rules:

    1. Inputs arrive tagged ``(0, record)`` (the stream) or ``(1, row)`` (the table), keyed alike.
    2. A table row with timestamp ``t`` is the key's version from ``t`` on (map state
       ``t -> row``). A stream record with timestamp ``t`` is joined with the latest version at or
       before ``t`` once the watermark reaches ``t`` (no version at or before ``t`` can arrive
       after that); ``fn(record, row)``, with ``row`` ``None`` when the key had none. Until then the
       record waits in map state, with a timer at ``t``; a record already behind the watermark is
       joined at once.
    3. Versions older than the newest one at or before the watermark can join nothing any more and
       are removed when the key's timers fire.
    """

    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any], node: Any) -> None:
        super().__init__(uid, name, env, key_fn)
        self.timestamp_fn = node.extra["timestamp_fn"]
        self.fn = node.fn or _pair
        self.watermark = MIN_WATERMARK
        self.clock = env.clock or SystemClock()

    def open(self, resume_state: Any) -> None:
        super().open(resume_state)
        self.versions = self.backend.map_state(VERSIONS_STATE)
        self.waiting = self.backend.map_state(WAITING_STATE)
        self.timers = TimerService(self.backend, self.clock)

    def _row_at(self, ts: float) -> Any:
        best = None
        row = None
        for version_ts, version in self.versions.items():
            if version_ts <= ts and (best is None or version_ts > best):
                best, row = version_ts, version
        return row

    def process_batch(self, batch: list[Any]) -> list[Any]:
        self.backend.maybe_fold()
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        keys = self.backend.keys
        wm = self.watermark
        out: list[Any] = []
        record = None
        try:
            for record in batch:
                ts = to_seconds(ts_fn(record))
                keys.current_key = key_fn(record)
                side, value = record
                if side == 1:
                    self.versions.put(ts, value)
                    self.timers.register(_EVENT, ts)
                elif ts <= wm:
                    out.append(self.fn(value, self._row_at(ts)))
                else:
                    kept = self.waiting.get(ts)
                    self.waiting.put(ts, [value] if kept is None else kept + [value])
                    self.timers.register(_EVENT, ts)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out

    def on_watermark(self, event: Watermark) -> tuple[list[Any], Watermark | None]:
        if event.idle or event.timestamp <= self.watermark:
            return [], event
        self.watermark = wm = event.timestamp
        out: list[Any] = []
        try:
            while self.timers.pop(_EVENT, wm) is not None:
                for ts in sorted(t for t in self.waiting.keys() if t <= wm):
                    row = self._row_at(ts)
                    out.extend(self.fn(value, row) for value in self.waiting.get(ts) or ())
                    self.waiting.remove(ts)
                done = sorted(t for t in self.versions.keys() if t <= wm)
                for ts in done[:-1]:  # rule 3: the newest at or before the watermark stays
                    self.versions.remove(ts)
        except Exception as exc:
            raise UserFunctionError(self.name, "<join_latest>", exc) from exc
        return out, event
