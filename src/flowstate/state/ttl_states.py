"""The ttl states (``flowstate.state.ttl``, whose rules they follow): wrappers of a backend's
state objects that store each entry as ``(value, expiry)`` (rule 1), hide expired entries (rule 4)
and keep an ``ExpiryIndex`` for cleanup (rule 5).

Rules of this module:

1. A ttl state reads and writes only through the backend state it wraps, so it behaves the same on
   every backend, and its entries are in every snapshot of that backend, full or incremental.
2. Every write updates the index in the same call, so that ``cleanup`` finds every entry that may
   expire; stored values that are not ``(value, expiry)`` pairs are refused (rule 7 of ``ttl``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flowstate.state.api import KeyContext, ListState, MapState, ReducingState, ValueState
from flowstate.state.backend import KeyedStateBackend, StateError
from flowstate.state.ttl_rules import (
    Access,
    ExpiryIndex,
    StateTtl,
    TtlClock,
    expiry_after,
    is_expired,
    refreshes,
)
from flowstate.state.values import immutable, private

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
