"""A deterministic, replayable source computed from the record index: record *i* is ``fn(i)``.

Rules:

1. Record *i* is ``fn(i)`` for ``i`` in ``0 .. count - 1`` (``count=None``: unbounded). ``fn`` must be
   deterministic, or a replay reads something else than the first run did.
2. There are ``splits`` splits, ``"gen-0" .. "gen-{splits-1}"``; split *k* holds the indices *i* with
   ``i % splits == k``.
3. The position of a split is the **next** index it will read (``k`` before anything was read). A
   split whose position is ``≥ count`` is exhausted.
4. A reader owning several splits reads them merged in index order (so that an unbounded split never
   starves the others): after reading record *i* it has read every index below *i* that it owns.
5. With ``rate``, each reader emits at most ``rate`` records per second (token bucket holding at most
   0.1 s worth of records). A throttled ``poll`` sleeps once, at most 0.05 s, and never spins. The
   clock is read only while polling, through the injected ``clock`` (seconds, monotonic; default
   ``SystemClock().monotonic``, i.e. ``time.monotonic``) and ``sleep`` (default ``time.sleep``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

from flowstate.clock import SystemClock

_SPLIT_PREFIX = "gen-"
_MAX_SLEEP = 0.05
"""Longest sleep of one throttled poll, in seconds (a poll must return within about 0.1 s)."""
_BURST_SECONDS = 0.1
"""The token bucket holds at most this many seconds' worth of records."""
_TOLERANCE = 1e-9


class GeneratorSource:
    """Records ``fn(0), fn(1), …`` (see the module rules). Replayable."""

    __slots__ = ("_fn", "_count", "_splits", "_name", "_rate", "_clock", "_sleep")

    def __init__(
        self,
        fn: Callable[[int], Any],
        count: int | None = None,
        *,
        splits: int = 1,
        name: str = "generator",
        rate: float | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"GeneratorSource: fn must be callable (index → record), got {fn!r}")
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f"GeneratorSource: count must be an int or None, got {count!r}")
            if count < 0:
                raise ValueError(f"GeneratorSource: count must be ≥ 0 (or None for unbounded), got {count}")
        if isinstance(splits, bool) or not isinstance(splits, int):
            raise TypeError(f"GeneratorSource: splits must be an int, got {splits!r}")
        if splits < 1:
            raise ValueError(f"GeneratorSource: splits must be ≥ 1, got {splits}")
        if rate is not None and not rate > 0:
            raise ValueError(f"GeneratorSource: rate must be > 0 records/s (or None), got {rate!r}")
        system = SystemClock()
        clock = system.monotonic if clock is None else clock
        sleep = system.sleep if sleep is None else sleep
        if not callable(clock) or not callable(sleep):
            raise TypeError("GeneratorSource: clock and sleep must be callable")
        self._fn = fn
        self._count = count
        self._splits = splits
        self._name = name
        self._rate = rate
        self._clock = clock
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return [f"{_SPLIT_PREFIX}{k}" for k in range(self._splits)]

    def build_reader(
        self, splits: Sequence[str], resume_state: dict[str, Any] | None
    ) -> GeneratorReader:
        resume = resume_state or {}
        lanes: list[int] = []
        positions: list[int] = []
        for split in splits:
            k = self._split_index(split)
            if k in lanes:
                raise ValueError(f"GeneratorSource {self._name!r}: split {split!r} assigned twice")
            position = resume.get(split, k)
            if isinstance(position, bool) or not isinstance(position, int) or position < 0:
                raise ValueError(
                    f"GeneratorSource {self._name!r}: position of {split!r} must be an int ≥ 0, "
                    f"got {position!r}"
                )
            if position % self._splits != k:
                raise ValueError(
                    f"GeneratorSource {self._name!r}: position {position} is not an index of split "
                    f"{split!r} (indices i with i % {self._splits} == {k})"
                )
            lanes.append(k)
            positions.append(position)
        limiter = None
        if self._rate is not None:
            limiter = _TokenBucket(self._rate, self._clock, self._sleep)
        return GeneratorReader(self._fn, self._count, self._splits, lanes, positions, limiter)

    def _split_index(self, split: str) -> int:
        suffix = split[len(_SPLIT_PREFIX):] if split.startswith(_SPLIT_PREFIX) else ""
        if not (suffix.isascii() and suffix.isdigit()) or int(suffix) >= self._splits or str(int(suffix)) != suffix:
            raise ValueError(
                f"GeneratorSource {self._name!r}: unknown split {split!r}; splits are "
                f"'gen-0' .. 'gen-{self._splits - 1}'"
            )
        return int(suffix)


class GeneratorReader:
    """Reads the splits given to ``GeneratorSource.build_reader``. All state is the next index per
    split (``snapshot``); the rate limiter is not state."""

    __slots__ = ("_fn", "_count", "_stride", "_lanes", "_positions", "_limiter")

    def __init__(
        self,
        fn: Callable[[int], Any],
        count: int | None,
        stride: int,
        lanes: list[int],
        positions: list[int],
        limiter: _TokenBucket | None,
    ) -> None:
        self._fn = fn
        self._count = count
        self._stride = stride
        self._lanes = lanes
        self._positions = positions
        self._limiter = limiter

    def poll(self, max_records: int) -> list[Any] | None:
        count = self._count
        active = [
            j for j, position in enumerate(self._positions) if count is None or position < count
        ]
        if not active:
            return None
        if max_records <= 0:
            return []
        if self._limiter is not None:
            max_records = self._limiter.take(max_records)
            if max_records == 0:
                return []
        stride = self._stride
        if len(active) == 1:
            j = active[0]
            start = self._positions[j]
            stop = start + max_records * stride
            if count is not None and stop > count:
                stop = count
            indices: Sequence[int] = range(start, stop, stride)
            records = list(map(self._fn, indices))
            # Assigned only after fn succeeded for every index: a failing fn leaves the reader as it was.
            self._positions[j] = start + len(indices) * stride
            return records
        lanes = []
        for j in active:
            start = self._positions[j]
            stop = start + max_records * stride
            if count is not None and stop > count:
                stop = count
            lanes.append(range(start, stop, stride))
        indices = list(islice(heapq.merge(*lanes), max_records))
        records = list(map(self._fn, indices))
        last = indices[-1]
        for j in active:
            if self._positions[j] <= last:
                # Rule 4: every owned index ≤ last was read; the next one of this lane follows last.
                self._positions[j] = last + 1 + (self._lanes[j] - last - 1) % stride
        return records

    def snapshot(self) -> dict[str, Any]:
        return {f"{_SPLIT_PREFIX}{k}": position for k, position in zip(self._lanes, self._positions)}

    def progress(self) -> tuple[int, int] | None:
        """(records read, records) of this reader's splits, those read before a restore included;
        ``None`` for an unbounded generator."""
        count = self._count
        if count is None:
            return None
        stride = self._stride
        read = total = 0
        for lane, position in zip(self._lanes, self._positions):
            read += max(0, -(-(min(position, count) - lane) // stride))
            total += max(0, -(-(count - lane) // stride))
        return read, total

    def close(self) -> None:
        pass


class _TokenBucket:
    """At most ``rate`` tokens per second, at most ``rate * 0.1`` (and at least one) saved up."""

    __slots__ = ("_rate", "_capacity", "_tokens", "_last", "_clock", "_sleep")

    def __init__(self, rate: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate * _BURST_SECONDS)
        self._tokens = 1.0
        self._last: float | None = None
        self._clock = clock
        self._sleep = sleep

    def take(self, wanted: int) -> int:
        """Up to ``wanted`` tokens, possibly 0 after one sleep of at most ``_MAX_SLEEP``."""
        self._refill()
        if self._tokens < 1.0 - _TOLERANCE:
            self._sleep(min((1.0 - self._tokens) / self._rate, _MAX_SLEEP))
            self._refill()
        # The tolerance absorbs rounding: after sleeping exactly long enough, 0.9999999… is a token.
        granted = min(wanted, int(self._tokens + _TOLERANCE))
        self._tokens = max(0.0, self._tokens - granted)
        return granted

    def _refill(self) -> None:
        now = self._clock()
        if self._last is not None and now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
