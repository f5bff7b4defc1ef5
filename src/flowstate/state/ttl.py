"""State time-to-live: keyed state whose entries expire, in event time or in processing time.

``ctx.value_state("last", ttl="1h")`` (and ``list_state``, ``map_state``, ``reducing_state``) returns
a state of the usual API whose entries expire ``ttl`` after they were written (Flink's
``StateTtlConfig``). Rules:

1. **An entry** is the value of a key (value and reducing state), one element of a key's list (list
   state) or one map entry of a key (map state). Each carries its **expiry**, stored next to it in
   the operator's keyed backend as ``(value, expiry)``: it is in every checkpoint, restored with it
   and split by key group on a rescale like any other state, on the heap and on RocksDB alike.
2. **Access time** and **now.** In processing time both are ``clock.wall()`` of the injected clock.
   In event time the access time is the timestamp of the record being processed (in ``on_timer``,
   the timer's), and *now* is the later of the operator's watermark and that timestamp: for a stream
   in timestamp order an entry's visibility is then a function of the records alone, not of where
   the watermarks fell between them. Event-time ttl needs a stream with timestamps.
3. **Update type** (``TtlUpdate``): a write sets the expiry to ``access time + ttl``
   (``ON_CREATE_AND_WRITE``, the default); ``ON_READ_AND_WRITE`` also does on every read of a live
   entry. An expiry never moves back (``expiry_after``): an out-of-order record does not shorten the
   life of an entry a later record wrote.
4. **Visibility** is Flink's ``NeverReturnExpired``: an entry whose expiry is at or before *now* is
   invisible at once (``is_expired``): reads return the default, ``None``, or leave it out; the state
   behaves as if it was never written.
5. **Cleanup.** An in-memory ``ExpiryIndex`` per state (rebuilt from the backend when the state is
   created after a restore) orders the entries by expiry. ``TtlStates.cleanup()`` removes from the
   backend every entry whose expiry is at or before the **removal time** (the watermark in event
   time, which no later record can go below; the clock in processing time). The operator calls it
   before every batch, at every watermark and before the synchronous part of every snapshot: an
   expired entry is removed at the first of these after it expired, and **no checkpoint holds an
   entry that had expired at its barrier** (Flink's cleanup in full snapshot, made exact and applied
   to incremental snapshots too). The cost is the number of entries removed, plus a dict update
   per write (a heap push only for a new entry: ``ExpiryIndex``).
6. **Counts** (``TtlStates.counts``): live entries and expired entries not yet removed, per
   operator, reported with the task's counters at each snapshot
   (``flowstate_operator_state_entries_live`` / ``_expired``). List state counts a key as one entry
   (expired when its oldest element is).
7. **What does not change**: the rules of keys and values (``flowstate.state.values``), in particular
   that a snapshot is the state at its barrier whatever the task does with the objects reads return,
   and that a change in place to a value read is stored. A state cannot gain or lose ttl across a
   restore (its stored values would not be understood): give it a new name.

The pure parts (``expiry_after``, ``refreshes``, ``is_expired``, ``ExpiryIndex``) take times as
parameters and never read a clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Protocol

from flowstate.state.api import KeyContext, ListState, MapState, ReducingState, ValueState
from flowstate.state.backend import KeyedStateBackend, StateError
from flowstate.state.values import immutable, private
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


# ---- the states --------------------------------------------------------------------------------------

_WRITTEN_WITHOUT_TTL = (
    "state {name!r} holds values written without a time-to-live (or with another layout): a state cannot "
    "gain or lose ttl across a restore; give the state with ttl a new name, or start the job afresh"
)


def _check_entry(name: str, entry: Any) -> float:
    """The expiry of a stored ``(value, expiry)``; ``StateError`` when ``entry`` is not one (rule 7)."""
    if type(entry) is not tuple or len(entry) != 2 or type(entry[1]) is not float:
        raise StateError(_WRITTEN_WITHOUT_TTL.format(name=name))
    return entry[1]


class _TtlState:
    """What every ttl state shares: its index, its clock, and the removal of due entries."""

    __slots__ = ("_access", "_clock", "_index", "_inner", "_keys", "_name", "_now", "_read_refreshes", "_ttl",
                 "config", "kind")

    kind: str

    def __init__(self, name: str, config: StateTtl, inner: Any, keys: KeyContext, clock: TtlClock) -> None:
        self._name = name
        self.config = config
        self._ttl = config.ttl
        self._inner = inner
        self._keys = keys
        self._clock = clock
        self._now = clock.now
        self._access = clock.access_time
        self._index = ExpiryIndex()
        self._read_refreshes = refreshes(config.update, Access.READ)

    def _rebuild(self, backend: KeyedStateBackend) -> None:
        """Rule 5: the index of the entries already in the backend (after a restore)."""
        keys = self._keys
        saved = keys.current_key
        try:
            for key in list(backend.state_keys(self._name)):
                keys.current_key = key
                self._index_current(key)
        finally:
            keys.current_key = saved

    def _index_current(self, key: Any) -> None:
        raise NotImplementedError

    def _remove_due(self, ikey: Any, removal: float) -> None:
        """Removes entry ``ikey`` (popped from the index as due at ``removal``) from the backend."""
        raise NotImplementedError

    def cleanup(self) -> int:
        """Rule 5: removes every entry expired at the removal time; returns how many."""
        removal = self._clock.removal_time()
        due = self._index.pop_due(removal)
        if not due:
            return 0
        keys = self._keys
        saved = keys.current_key
        try:
            for ikey, _ in due:
                self._remove_due(ikey, removal)
        finally:
            keys.current_key = saved
        return len(due)

    def counts(self) -> tuple[int, int]:
        return self._index.counts(self._clock.removal_time())


class TtlValueState(_TtlState, ValueState[Any]):
    __slots__ = ("_default", "_fresh_default")
    kind = "value"

    def __init__(self, name: str, config: StateTtl, inner: ValueState[Any], keys: KeyContext, clock: TtlClock,
                 default: Any) -> None:
        super().__init__(name, config, inner, keys, clock)
        self._default = default
        self._fresh_default = not immutable(default)

    def _index_current(self, key: Any) -> None:
        self._index.set(key, _check_entry(self._name, self._inner.value()))

    def _remove_due(self, ikey: Any, removal: float) -> None:
        self._keys.current_key = ikey
        self._inner.clear()

    def value(self) -> Any:
        entry = self._inner.value()
        if entry is None or entry[1] <= self._now():
            return private(self._default) if self._fresh_default else self._default
        if self._read_refreshes:
            expiry = expiry_after(self._ttl, self._clock.access_time(), entry[1])
            if expiry != entry[1]:
                self._inner.update((entry[0], expiry))
                self._index.set(self._keys.current_key, expiry)
        return entry[0]

    def update(self, value: Any) -> None:
        if value is None:
            self.clear()
            return
        self._inner.update((value, self._index.extend(self._keys.current_key, self._access() + self._ttl)))

    def clear(self) -> None:
        self._inner.clear()
        self._index.discard(self._keys.current_key)


class TtlListState(_TtlState, ListState[Any]):
    """Each element expires on its own (rule 1); the index holds each key's earliest expiry."""

    __slots__ = ()
    kind = "list"

    def _index_current(self, key: Any) -> None:
        self._index.set(key, min(_check_entry(self._name, e) for e in self._inner.get()))

    def _remove_due(self, ikey: Any, removal: float) -> None:
        self._keys.current_key = ikey
        entries = self._inner.get()
        kept = [e for e in entries if e[1] > removal]
        if not kept:
            self._inner.clear()
            return
        if len(kept) < len(entries):
            self._inner.update(kept)
        self._index.set(ikey, min(e[1] for e in kept))

    def get(self) -> list[Any]:
        entries = self._inner.get()
        if not entries:
            return []
        clock = self._clock
        now = clock.now()
        live = [e for e in entries if e[1] > now]
        if live and self._read_refreshes:
            access = clock.access_time()
            live = [(v, expiry_after(self._ttl, access, e)) for v, e in live]
            self._inner.update(live)
            self._index.set(self._keys.current_key, min(e for _, e in live))
        return [v for v, _ in live]

    def _expiry(self) -> float:
        return expiry_after(self._ttl, self._clock.access_time(), None)

    def _indexed(self, expiry: float) -> None:
        key = self._keys.current_key
        current = self._index.expiry(key)
        if current is None or expiry < current:
            self._index.set(key, expiry)

    def add(self, value: Any) -> None:
        expiry = self._expiry()
        self._inner.add((value, expiry))
        self._indexed(expiry)

    def add_all(self, values: Iterable[Any]) -> None:
        expiry = self._expiry()
        new = [(v, expiry) for v in values]
        if new:
            self._inner.add_all(new)
            self._indexed(expiry)

    def update(self, values: Iterable[Any]) -> None:
        expiry = self._expiry()
        new = [(v, expiry) for v in values]
        if not new:
            self.clear()
            return
        self._inner.update(new)
        self._index.set(self._keys.current_key, expiry)

    def clear(self) -> None:
        self._inner.clear()
        self._index.discard(self._keys.current_key)


class TtlMapState(_TtlState, MapState[Any, Any]):
    """Each map entry expires on its own (rule 1): the index is by ``(key, map key)``."""

    __slots__ = ()
    kind = "map"

    def _index_current(self, key: Any) -> None:
        for mk, entry in self._inner.items():
            self._index.set((key, mk), _check_entry(self._name, entry))

    def _remove_due(self, ikey: Any, removal: float) -> None:
        key, mk = ikey
        self._keys.current_key = key
        self._inner.remove(mk)

    def _live(self, mk: Any, entry: Any, now: float, access: float | None) -> Any:
        """The value of a stored entry, refreshed when reads refresh (``access`` given); ``_DEAD``
        when it expired."""
        if entry[1] <= now:
            return _DEAD
        if access is not None:
            expiry = expiry_after(self._ttl, access, entry[1])
            if expiry != entry[1]:
                self._inner.put(mk, (entry[0], expiry))
                self._index.set((self._keys.current_key, mk), expiry)
        return entry[0]

    def _read_access(self) -> float | None:
        return self._clock.access_time() if self._read_refreshes else None

    def get(self, key: Any, default: Any = None) -> Any:
        entry = self._inner.get(key)
        if entry is None:
            return default
        value = self._live(key, entry, self._clock.now(), self._read_access())
        return default if value is _DEAD else value

    def put(self, key: Any, value: Any) -> None:
        expiry = self._index.extend((self._keys.current_key, key), self._access() + self._ttl)
        self._inner.put(key, (value, expiry))

    def put_all(self, entries: dict[Any, Any]) -> None:
        for key, value in entries.items():
            self.put(key, value)

    def contains(self, key: Any) -> bool:
        entry = self._inner.get(key)
        return entry is not None and not is_expired(entry[1], self._clock.now())

    def remove(self, key: Any) -> None:
        self._inner.remove(key)
        self._index.discard((self._keys.current_key, key))

    def _items(self) -> list[tuple[Any, Any]]:
        now = self._clock.now()
        access = self._read_access()
        out = []
        for mk, entry in self._inner.items():
            value = self._live(mk, entry, now, access)
            if value is not _DEAD:
                out.append((mk, value))
        return out

    def keys(self) -> Iterator[Any]:
        return iter([mk for mk, _ in self._items()])

    def values(self) -> Iterator[Any]:
        return iter([v for _, v in self._items()])

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._items())

    def is_empty(self) -> bool:
        now = self._clock.now()
        return all(is_expired(entry[1], now) for entry in self._inner.values())

    def clear(self) -> None:
        key = self._keys.current_key
        for mk in list(self._inner.keys()):
            self._index.discard((key, mk))
        self._inner.clear()


class _Dead:
    __slots__ = ()


_DEAD = _Dead()


class _Combine:
    """The reduce function over stored ``(value, expiry)`` pairs: the newer pair's expiry."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def __call__(self, old: tuple[Any, float], new: tuple[Any, float]) -> tuple[Any, float]:
        return (self.fn(old[0], new[0]), new[1])


class TtlReducingState(_TtlState, ReducingState[Any]):
    __slots__ = ()
    kind = "reducing"

    def _index_current(self, key: Any) -> None:
        self._index.set(key, _check_entry(self._name, self._inner.get()))

    def _remove_due(self, ikey: Any, removal: float) -> None:
        self._keys.current_key = ikey
        self._inner.clear()

    def get(self) -> Any:
        entry = self._inner.get()
        if entry is None:
            return None
        clock = self._clock
        if entry[1] <= clock.now():
            return None
        if self._read_refreshes:
            expiry = expiry_after(self._ttl, clock.access_time(), entry[1])
            if expiry != entry[1]:
                # A value state write, not an add: the reduce function must not run on a read.
                self._inner.clear()
                self._inner.add((entry[0], expiry))
                self._index.set(self._keys.current_key, expiry)
        return entry[0]

    def add(self, value: Any) -> None:
        self.add_and_get(value)

    def add_and_get(self, value: Any) -> Any:
        key = self._keys.current_key
        clock = self._clock
        current = self._index.expiry(key)
        if current is not None and current <= clock.now():
            self._inner.clear()  # the old value expired: the reduction starts afresh
            current = None
        if current is None:
            expiry = clock.access_time() + self._ttl
            self._index.set(key, expiry)
        else:
            expiry = self._index.extend(key, clock.access_time() + self._ttl)
        return self._inner.add_and_get((value, expiry))[0]

    def clear(self) -> None:
        self._inner.clear()
        self._index.discard(self._keys.current_key)


AnyTtlState = TtlValueState | TtlListState | TtlMapState | TtlReducingState


class TtlStates:
    """The ttl states of one keyed operator subtask: created through it, cleaned up and counted
    together (rules 5 and 6). ``clocks`` gives the clock of each ``TtlTime`` the operator supports
    (``None``: it has no such time, and a state asking for it is refused with ``why``)."""

    def __init__(self, backend: KeyedStateBackend, operator: str, processing: TtlClock,
                 event: TtlClock | None, no_event_time: str = "") -> None:
        self._backend = backend
        self._operator = operator
        self._clocks: dict[TtlTime, TtlClock | None] = {TtlTime.PROCESSING: processing, TtlTime.EVENT: event}
        self._no_event_time = no_event_time
        self._states: dict[str, AnyTtlState] = {}
        self._plain: set[str] = set()

    def plain(self, name: str) -> None:
        """Records that ``name`` is used without ttl (refused later with ttl, rule 7)."""
        if name in self._states:
            raise StateError(f"state {name!r} has a ttl; ask for it with the same ttl every time")
        self._plain.add(name)

    def _existing(self, name: str, kind: str, config: StateTtl) -> AnyTtlState | None:
        if name in self._plain:
            raise StateError(f"state {name!r} is used without a ttl; ask for it with the same ttl every time")
        state = self._states.get(name)
        if state is None:
            return None
        if state.kind != kind:
            raise StateError(f"state {name!r} is {state.kind} state; it cannot also be {kind} state")
        if state.config != config:
            raise StateError(f"state {name!r} was created with {state.config}; ask for it with the same ttl every time")
        return state

    def _clock(self, name: str, config: StateTtl) -> TtlClock:
        clock = self._clocks[config.time]
        if clock is None:
            raise StateError(f"operator {self._operator!r}: state {name!r} has an event-time ttl, "
                             f"but {self._no_event_time}")
        return clock

    def _add(self, name: str, state: AnyTtlState) -> AnyTtlState:
        state._rebuild(self._backend)
        self._states[name] = state
        return state

    def value_state(self, name: str, default: Any, config: StateTtl) -> ValueState[Any]:
        state = self._existing(name, "value", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.value_state(name, None)
        return self._add(name, TtlValueState(name, config, inner, self._backend.keys, self._clock(name, config),
                                             default))  # type: ignore[return-value]

    def list_state(self, name: str, config: StateTtl) -> ListState[Any]:
        state = self._existing(name, "list", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.list_state(name)
        return self._add(name, TtlListState(name, config, inner, self._backend.keys,
                                            self._clock(name, config)))  # type: ignore[return-value]

    def map_state(self, name: str, config: StateTtl) -> MapState[Any, Any]:
        state = self._existing(name, "map", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.map_state(name)
        return self._add(name, TtlMapState(name, config, inner, self._backend.keys,
                                           self._clock(name, config)))  # type: ignore[return-value]

    def reducing_state(self, name: str, reduce_fn: Callable[[Any, Any], Any], config: StateTtl) -> ReducingState[Any]:
        state = self._existing(name, "reducing", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.reducing_state(name, _Combine(reduce_fn))
        return self._add(name, TtlReducingState(name, config, inner, self._backend.keys,
                                                self._clock(name, config)))  # type: ignore[return-value]

    def cleanup(self) -> int:
        """Rule 5 for every ttl state; the number of entries removed. Cheap when nothing is due."""
        removed = 0
        for state in self._states.values():
            removed += state.cleanup()
        return removed

    def counts(self) -> tuple[int, int]:
        """Rule 6: ``(live, expired not yet removed)`` over every ttl state."""
        live = expired = 0
        for state in self._states.values():
            a, b = state.counts()
            live += a
            expired += b
        return live, expired

    def __bool__(self) -> bool:
        return bool(self._states)
