"""The pure parts of state time-to-live (``flowstate.state.ttl``, whose rules these are): the
configuration of a state's ttl, the rules of expiry (rules 3 and 4), the index that orders entries
by expiry (rule 5) and the clocks of rule 2.

Nothing here reads a clock: times are parameters (``ExpiryIndex``, the functions) or come from an
injected clock or operator context (``ProcessingTtlClock``, ``EventTtlClock``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Protocol

from flowstate.time.duration import parse_duration


class TtlTime(StrEnum):
    """The clock entries expire by (rule 2)."""

    EVENT = "event"
    PROCESSING = "processing"


class TtlUpdate(StrEnum):
    """Which accesses set an entry's expiry anew (rule 3)."""

    ON_CREATE_AND_WRITE = "on_create_and_write"
    ON_READ_AND_WRITE = "on_read_and_write"


class Access(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class StateTtl:
    """The time-to-live of a state: ``ttl`` (a duration: seconds, ``"30m"``, ``timedelta``), by
    ``time``, refreshed as ``update`` says (names or enum members). Invalid values raise
    ``ValueError`` saying what is accepted."""

    ttl: float
    time: TtlTime = TtlTime.PROCESSING
    update: TtlUpdate = TtlUpdate.ON_CREATE_AND_WRITE

    def __post_init__(self) -> None:
        checked = StateTtl.of(self.ttl, self.time, self.update)  # raises a clear ValueError
        object.__setattr__(self, "ttl", checked.ttl)
        object.__setattr__(self, "time", checked.time)
        object.__setattr__(self, "update", checked.update)

    @staticmethod
    def of(ttl: float | str | timedelta, time: TtlTime | str = TtlTime.PROCESSING,
           update: TtlUpdate | str = TtlUpdate.ON_CREATE_AND_WRITE) -> StateTtl:
        """A ttl from a duration as users write it (``3600``, ``"1h"``, ``timedelta(hours=1)``)."""
        seconds = parse_duration(ttl, "ttl")
        if seconds <= 0:
            raise ValueError(f"ttl: must be positive, got {ttl!r}")
        try:
            clock = TtlTime(time)
        except ValueError:
            raise ValueError(f"ttl time must be 'event' or 'processing', got {time!r}") from None
        try:
            how = TtlUpdate(update)
        except ValueError:
            raise ValueError(
                f"ttl update must be 'on_create_and_write' or 'on_read_and_write', got {update!r}") from None
        made = object.__new__(StateTtl)
        object.__setattr__(made, "ttl", seconds)
        object.__setattr__(made, "time", clock)
        object.__setattr__(made, "update", how)
        return made


def as_state_ttl(ttl: StateTtl | float | str | timedelta | None, time: TtlTime | str | None = None,
                 update: TtlUpdate | str | None = None) -> StateTtl | None:
    """The ``StateTtl`` of the ``ttl=``, ``ttl_time=`` and ``ttl_update=`` arguments of a state."""
    if ttl is None:
        if time is not None or update is not None:
            raise ValueError("ttl_time and ttl_update need a ttl: pass ttl=<duration> as well")
        return None
    if isinstance(ttl, StateTtl):
        if time is not None or update is not None:
            raise ValueError("pass either a StateTtl or ttl_time/ttl_update, not both")
        return ttl
    return StateTtl.of(ttl, time or TtlTime.PROCESSING, update or TtlUpdate.ON_CREATE_AND_WRITE)


# ---- the pure rules ----------------------------------------------------------------------------------


def expiry_after(ttl: float, access: float, current: float | None) -> float:
    """Rule 3: the expiry of an entry accessed (written, or read under ``ON_READ_AND_WRITE``) at
    ``access`` whose expiry was ``current`` (``None``: a new entry). Never before ``current``."""
    new = access + ttl
    return new if current is None or new > current else current


def refreshes(update: TtlUpdate, access: Access) -> bool:
    """Rule 3: whether ``access`` sets the expiry anew under ``update``."""
    return access is Access.WRITE or update is TtlUpdate.ON_READ_AND_WRITE


def is_expired(expiry: float, now: float) -> bool:
    """Rule 4: an entry whose expiry is at or before ``now`` is expired."""
    return expiry <= now


class ExpiryIndex:
    """The entries of one state by expiry (rule 5): ``ikey`` (a key, or ``(key, map key)``) ->
    expiry, and a heap that says when to look at each. Pure: times are parameters.

    A write costs a dict update, not a heap push: an entry's heap item is due at its **scheduled**
    time, which is at or before its expiry (expiries only move later, rule 3, so the item of the
    first write stays a lower bound). When an item comes due and its entry's expiry moved on, it is
    pushed again at that expiry. An earlier expiry than the scheduled time (an entry written anew after
    it was discarded, by an out-of-order record) pushes a new item. Items are matched to their entry
    by a sequence number, so stale ones are skipped; the heap is rebuilt when they outnumber the
    entries, so it stays within twice the entries (plus a constant)."""

    __slots__ = ("_entries", "_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._entries: dict[Any, list[Any]] = {}  # ikey -> [expiry | None (discarded), scheduled, seq]
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = 0
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def expiry(self, ikey: Any) -> float | None:
        got = self._entries.get(ikey)
        return None if got is None else got[0]  # type: ignore[no-any-return]

    def _schedule(self, ikey: Any, entry: list[Any], at: float) -> None:
        self._seq += 1
        entry[1] = at
        entry[2] = self._seq
        heapq.heappush(self._heap, (at, self._seq, ikey))

    def set(self, ikey: Any, expiry: float) -> None:
        entry = self._entries.get(ikey)
        if entry is None:
            entry = self._entries[ikey] = [expiry, expiry, 0]
            self._live += 1
            self._schedule(ikey, entry, expiry)
            self._maybe_compact()
            return
        if entry[0] is None:
            self._live += 1
        entry[0] = expiry
        if expiry < entry[1]:
            self._schedule(ikey, entry, expiry)
            self._maybe_compact()

    def extend(self, ikey: Any, expiry: float) -> float:
        """``set(ikey, expiry_after(...))`` in one lookup: the expiry becomes the later of its
        current one and ``expiry``, which is returned (rule 3)."""
        entry = self._entries.get(ikey)
        if entry is not None and entry[0] is not None:
            if expiry > entry[0]:
                entry[0] = expiry
                return expiry
            return entry[0]  # type: ignore[no-any-return]
        self.set(ikey, expiry)
        return expiry

    def discard(self, ikey: Any) -> None:
        entry = self._entries.get(ikey)
        if entry is not None and entry[0] is not None:
            entry[0] = None  # its heap item deletes it when it comes due
            self._live -= 1
            self._maybe_compact()

    def pop_due(self, upto: float) -> list[tuple[Any, float]]:
        """Removes and returns every ``(ikey, expiry)`` with ``is_expired(expiry, upto)``."""
        heap, entries = self._heap, self._entries
        due: list[tuple[Any, float]] = []
        while heap and heap[0][0] <= upto:
            _, seq, ikey = heapq.heappop(heap)
            entry = entries.get(ikey)
            if entry is None or entry[2] != seq:
                continue  # stale
            expiry = entry[0]
            if expiry is None:
                del entries[ikey]
            elif expiry <= upto:
                del entries[ikey]
                self._live -= 1
                due.append((ikey, expiry))
            else:
                self._schedule(ikey, entry, expiry)  # written again since: look at it when it expires
        return due

    def counts(self, now: float) -> tuple[int, int]:
        """``(live, expired)`` at ``now``. Costs the heap items scheduled at or before ``now`` (a
        subtree at the root), among which every expired entry's is."""
        heap, entries = self._heap, self._entries
        expired = 0
        stack = [0]
        while stack:
            i = stack.pop()
            if i < len(heap) and heap[i][0] <= now:
                _, seq, ikey = heap[i]
                entry = entries.get(ikey)
                if entry is not None and entry[2] == seq and entry[0] is not None and entry[0] <= now:
                    expired += 1
                stack.append(2 * i + 1)
                stack.append(2 * i + 2)
        return self._live - expired, expired

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * self._live + 64:
            self._entries = {k: e for k, e in self._entries.items() if e[0] is not None}
            self._heap = [(e[1], e[2], k) for k, e in self._entries.items()]
            heapq.heapify(self._heap)


# ---- the clocks of rule 2 ----------------------------------------------------------------------------


class TtlClock(Protocol):
    """Rule 2 for one clock, as the operator sees it at the current access."""

    def access_time(self) -> float:
        """The time of the current access: a write sets the expiry to this + ttl."""
        ...

    def now(self) -> float:
        """Entries expired at this time are invisible to the current access."""
        ...

    def removal_time(self) -> float:
        """Entries expired at this time may be removed: no later access can see them (<= ``now()``)."""
        ...


class ProcessingTtlClock:
    """Rule 2 in processing time: every time is ``wall()`` of the injected clock (bound as
    attributes, so that an access costs one call)."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self.access_time = self.now = self.removal_time = wall


class EventTtlClock:
    """Rule 2 in event time, over an operator context with ``timestamp`` (of the record or timer
    being processed, ``None`` between them) and ``watermark``."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    # In on_timer of a processing-time timer, ctx.timestamp is a time of the clock, not an event's.

    def access_time(self) -> float:
        ctx = self._ctx
        ts = ctx.timestamp
        if ts is None or ctx.timer_domain == "processing_time":
            return ctx.watermark  # type: ignore[no-any-return]
        return ts  # type: ignore[no-any-return]

    def now(self) -> float:
        ctx = self._ctx
        ts, watermark = ctx.timestamp, ctx.watermark
        if ts is None or ts < watermark or ctx.timer_domain == "processing_time":
            return watermark  # type: ignore[no-any-return]
        return ts  # type: ignore[no-any-return]

    def removal_time(self) -> float:
        return self._ctx.watermark  # type: ignore[no-any-return]
