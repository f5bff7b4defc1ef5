"""Watermarks: generated per split with bounded out-of-orderness, combined over splits and channels.

Rules of generation (``SplitWatermarks``, one per source subtask or timestamp-assigning operator):

1. A split's watermark is the largest timestamp it produced minus ``out_of_orderness``; a split that
   produced nothing has none.
2. A split that produced nothing for ``idle_timeout`` of processing time is **idle** and is excluded
   from the minimum: the output is the minimum over the active splits.
3. When every split is idle, event time follows processing time: the output is the largest split
   watermark plus the processing time elapsed beyond ``idle_timeout`` since the last record. This is
   what closes the windows of a stream that went quiet. With no split at all (a subtask that reads
   nothing) the output is an idle status once ``idle_timeout`` passed since it started.
4. The output never goes backwards, also across a restore: ``snapshot()`` holds each split's largest
   timestamp and the last watermark emitted, and a generator built from it emits that watermark first.
5. A split that is finished (``finish``) leaves the minimum for good.
5a. A split announced before it produced anything (``add_split``: a broker reader that reads several
   partitions at once says which it reads) holds the minimum back, as a split without a watermark,
   until it produces records or is idle (rule 2, counted from its announcement). Without this, the
   first partition to deliver would carry the watermark past the records the others have not
   delivered yet, and make them late.
5b. ``retain(splits)``: the reader says, once, every split it reads; a restored split that is not
   among them (another subtask reads it now, or the checkpoint was taken when the reader's records
   counted as one split) is dropped, so that it does not hold the watermark back. The last watermark
   emitted stays (rule 4).

Rules of combining (``ChannelWatermarks``, one per task with input channels):

6. The combined watermark is the minimum over the input channels that are not idle; a channel that
   ended counts as +inf. It never goes backwards; a channel's own watermark never goes backwards
   either (a lower one is ignored).
7. When every channel that has not ended is idle, the output is idle: one ``Watermark(w, idle=True)``
   is emitted, and one ``Watermark(w)`` when a channel becomes active again.
8. A channel becomes active again with its next watermark that is not idle.

Every method returns the ``Watermark`` event to forward, or ``None`` when nothing changed.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

MIN_WATERMARK = -math.inf
MAX_WATERMARK = math.inf


@dataclass(frozen=True, slots=True)
class Watermark:
    """In-band event: no record with a timestamp below ``timestamp`` follows on this channel.

    ``idle`` marks the channel idle instead (rule 7): the consumer does not wait for it until a
    watermark that is not idle arrives on it. ``Watermark(MAX_WATERMARK)`` ends event time: every
    event-time timer and window fires."""

    timestamp: float
    idle: bool = False


FINAL_WATERMARK = Watermark(MAX_WATERMARK)


class _Split:
    __slots__ = ("max_ts", "last_seen")

    def __init__(self, max_ts: float, last_seen: float | None) -> None:
        self.max_ts = max_ts
        self.last_seen = last_seen


class SplitWatermarks:
    """Rules 1-5 for the splits of one subtask."""

    def __init__(self, out_of_orderness: float, idle_timeout: float | None, resume: Any = None) -> None:
        if out_of_orderness < 0:
            raise ValueError("out_of_orderness must not be negative")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.out_of_orderness = out_of_orderness
        self.idle_timeout = idle_timeout
        self._splits: dict[str, _Split] = {}
        self._emitted = MIN_WATERMARK
        self._idle = False
        self._started: float | None = None
        self._pending_restore = False
        if resume:
            for split, max_ts in resume["splits"].items():
                self._splits[split] = _Split(float(max_ts), None)
            self._emitted = float(resume["emitted"])
            self._pending_restore = self._emitted > MIN_WATERMARK

    @property
    def emitted(self) -> float:
        """The last watermark emitted (rule 4)."""
        return self._emitted

    def on_records(self, split: str, max_timestamp: float, now: float) -> None:
        """Split ``split`` produced records whose largest timestamp is ``max_timestamp``."""
        state = self._splits.get(split)
        if state is None:
            self._splits[split] = _Split(max_timestamp, now)
        else:
            if max_timestamp > state.max_ts:
                state.max_ts = max_timestamp
            state.last_seen = now

    def add_split(self, split: str, now: float) -> None:
        """Rule 5a: ``split`` is read from ``now`` on; a split already known keeps its state."""
        if split not in self._splits:
            self._splits[split] = _Split(MIN_WATERMARK, now)

    def retain(self, splits: Collection[str]) -> None:
        """Rule 5b."""
        for split in [s for s in self._splits if s not in splits]:
            del self._splits[split]

    def finish(self, split: str) -> None:
        """Rule 5: ``split`` has no more records."""
        self._splits.pop(split, None)

    def current(self, now: float) -> Watermark | None:
        """The watermark event to emit at processing time ``now``, if any (rules 1-4)."""
        if self._started is None:
            self._started = now
            for state in self._splits.values():
                if state.last_seen is None:
                    state.last_seen = now  # restored splits count as active from the restore on
        if self._pending_restore:
            self._pending_restore = False
            return Watermark(self._emitted)
        timeout = self.idle_timeout
        ooo = self.out_of_orderness
        lowest = math.inf
        latest_seen = -math.inf
        highest = -math.inf
        for state in self._splits.values():
            seen = state.last_seen if state.last_seen is not None else now
            if seen > latest_seen:
                latest_seen = seen
            wm = state.max_ts - ooo
            if wm > highest:
                highest = wm
            if timeout is None or now - seen < timeout:
                if wm < lowest:
                    lowest = wm
        if lowest < math.inf:
            candidate, idle = lowest, False
        elif not self._splits:
            if timeout is None or now - self._started < timeout:
                return None
            candidate, idle = self._emitted, True
        elif highest == MIN_WATERMARK:
            candidate, idle = self._emitted, True  # rule 5a: every split idle and none produced
        else:
            candidate, idle = highest + (now - latest_seen - timeout), False  # type: ignore[operator]
        if idle:
            if self._idle:
                return None
            self._idle = True
            return Watermark(self._emitted, idle=True)
        if candidate > self._emitted:
            self._emitted = candidate
            self._idle = False
            return Watermark(candidate)
        if self._idle:
            self._idle = False
            return Watermark(self._emitted)
        return None

    def snapshot(self) -> dict[str, Any]:
        """Rule 4: picklable, shares nothing with the generator."""
        return {"splits": {s: st.max_ts for s, st in self._splits.items()}, "emitted": self._emitted}


class ChannelWatermarks:
    """Rules 6-8 over ``num_channels`` input channels, starting from ``floor`` (the watermark the
    task had at the restored checkpoint)."""

    def __init__(self, num_channels: int, floor: float = MIN_WATERMARK) -> None:
        self._wm = [MIN_WATERMARK] * num_channels
        self._idle = [False] * num_channels
        self._ended = [False] * num_channels
        self._combined = floor
        self._out_idle = False

    @property
    def current(self) -> float:
        return self._combined

    @property
    def idle(self) -> bool:
        return self._out_idle

    def on_watermark(self, channel: int, event: Watermark) -> Watermark | None:
        if self._ended[channel]:
            return None
        if event.idle:
            self._idle[channel] = True
        else:
            self._idle[channel] = False
            if event.timestamp > self._wm[channel]:
                self._wm[channel] = event.timestamp
        return self._recompute()

    def on_end_of_input(self, channel: int) -> Watermark | None:
        self._ended[channel] = True
        self._idle[channel] = False
        self._wm[channel] = MAX_WATERMARK
        return self._recompute()

    def _recompute(self) -> Watermark | None:
        lowest = math.inf
        any_active = False
        for wm, idle, ended in zip(self._wm, self._idle, self._ended):
            if idle:
                continue
            if not ended:
                any_active = True
            if wm < lowest:
                lowest = wm
        if not any_active and any(self._idle):
            if self._out_idle:
                return None
            self._out_idle = True
            return Watermark(self._combined, idle=True)
        was_idle, self._out_idle = self._out_idle, False
        if lowest > self._combined:
            self._combined = lowest
            return Watermark(lowest)
        if was_idle:
            return Watermark(self._combined)
        return None
