"""A test kit for event time: a source whose records come with explicit timestamps and explicit
watermarks, so that a test drives late data, idleness and timers exactly, and the manual clock for
processing time.

    events = [click1, click2, fs.Watermark(60.0), late_click, click3]
    flow.source(TimedSource(events, timestamp=lambda c: c.ts)).key_by(...).window(...)

Rules:

1. Records are emitted in the order given; a ``Watermark`` item is emitted at its place, behind the
   records before it and ahead of those after it (nothing else generates watermarks: the stream
   needs no ``assign_timestamps``, its records have ``timestamp(record)`` as their timestamp).
2. The source has one split: at parallelism p > 1 the other subtasks read nothing and say at once
   that they are idle, so they hold no watermark back.
3. It is replayable: its position (the index of the next item) is in the checkpoint, so a restore
   re-emits the records and watermarks after it, and the end of the input still brings the final
   watermark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flowstate.clock import ManualClock
from flowstate.time.watermarks import MIN_WATERMARK, Watermark

SPLIT = "events"

__all__ = ["ManualClock", "TimedSource", "Watermark"]


class TimedSource:
    def __init__(self, events: Iterable[Any], *, timestamp: Callable[[Any], Any], name: str = "timed") -> None:
        if not callable(timestamp):
            raise TypeError(f"TimedSource: timestamp must be callable (record -> timestamp), got {timestamp!r}")
        self.events = list(events)
        self.timestamp_fn = timestamp
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return [SPLIT]

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> TimedReader:
        events = self.events if SPLIT in splits else []
        return TimedReader(events, (resume_state or {}).get(SPLIT, 0), bool(events))


class TimedReader:
    """Rule 1: ``poll`` stops at a watermark item; the task then takes it with ``take_watermark``."""

    def __init__(self, events: list[Any], position: int, has_split: bool) -> None:
        self._events = events
        self._position = position
        self._has_split = has_split
        self._watermark: Watermark | None = None if has_split else Watermark(MIN_WATERMARK, idle=True)

    def poll(self, max_records: int) -> list[Any] | None:
        events = self._events
        if self._position >= len(events) and self._watermark is None:
            return None
        out: list[Any] = []
        while self._position < len(events) and len(out) < max_records:
            item = events[self._position]
            self._position += 1
            if type(item) is Watermark:
                self._watermark = item
                break
            out.append(item)
        return out

    def take_watermark(self) -> Watermark | None:
        event, self._watermark = self._watermark, None
        return event

    def snapshot(self) -> dict[str, Any]:
        return {SPLIT: self._position} if self._has_split else {}

    def close(self) -> None:
        pass
