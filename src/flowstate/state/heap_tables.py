"""The tables and state objects of the heap backend (``flowstate.state.memory``): copy-on-write
per entry (Step 2 of that module's docstring).

Rules:

1. A ``_Table`` is ``top`` (the dict the task thread writes) over ``below``, a tuple of frozen dicts
   (lowest first). A delete in a table with layers below writes the tombstone ``_ABSENT``; reads
   look in ``top`` first and fall through the frozen layers (a tombstone ends the search).
2. **No object reachable from a frozen layer is ever handed out or changed**: the first access to
   an entry found below copies it into ``top`` (``private``), and only the copy is returned or
   changed from then on. Immutable values are returned as they are and never copied.
3. Hence ``top`` holds every entry that may differ from the layers below it: every key written,
   deleted, or read as a mutable object (which the caller may change in place) since ``top`` was
   last frozen.
4. **Changed keys** (incremental snapshots, ``flowstate.state.heap_chain``): a table of an
   incremental backend has a set ``changed``. A flat view of it records there every key it writes
   or deletes, and every key whose value it hands out as a mutable object; a layered view records
   nothing, since ``top`` already holds all that (rule 3). So the keys changed since the last
   snapshot are always ``changed``, plus the keys of ``top`` while layers are frozen below it.
5. Each kind has a flat class (no layer below: the code of a plain dict), its tracked subclass
   (flat, rule 4) and its layered subclass, with the same slots; ``_View._repoint`` switches
   between them, so the flat hot path pays nothing for snapshots it is not part of.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flowstate.state.api import (
    KeyContext,
    ListState,
    MapState,
    ReducingState,
    ValueState,
)
from flowstate.state.backend import StateKind
from flowstate.state.keys import check_key
from flowstate.state.values import _IMMUTABLE, private


class _Absent:
    """No entry: the default of lookups, and a tombstone in a layer above the lowest."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _below_get(top: dict[Any, Any], below: tuple[dict[Any, Any], ...], key: Any) -> Any:
    """The entry of ``key`` when ``top.get(key, _ABSENT)`` gave ``_ABSENT``: ``_ABSENT`` if ``top``
    holds a tombstone for it, else the entry of the highest frozen layer that has one."""
    if key in top:
        return _ABSENT
    for layer in reversed(below):
        entry = layer.get(key, _ABSENT)
        if entry is not _ABSENT or key in layer:
            return entry
    return _ABSENT


class _Table:
    __slots__ = ("below", "changed", "kind", "top", "views")

    def __init__(self, kind: StateKind, tracked: bool = False) -> None:
        self.kind = kind
        self.top: dict[Any, Any] = {}
        self.below: tuple[dict[Any, Any], ...] = ()
        self.changed: set[Any] | None = set() if tracked else None
        """Rule 4 (``None``: a backend of full snapshots, which need no changed keys)."""
        self.views: weakref.WeakSet[_View] = weakref.WeakSet()

    def count(self) -> int:
        """The number of keys with an entry."""
        if not self.below:
            return len(self.top)
        base = self.below[0]
        total = len(base)
        for key, entry in self.merged().items():
            if entry is _ABSENT:
                total -= key in base
            else:
                total += key not in base
        return total

    def merged(self) -> dict[Any, Any]:
        """The entries above the lowest layer, the highest winning (tombstones kept)."""
        upper: dict[Any, Any] = {}
        for layer in (*self.below[1:], self.top):
            upper.update(layer)
        return upper


class _View:
    """Base of the heap state objects: a view of the layers of one table, re-pointed by the backend.

    Each kind has two classes with the same slots: the flat one (no layer below ``top``: the code
    of a plain dict) and its layered subclass (Step 2). ``_repoint`` switches an object's class, so
    the flat hot path pays nothing for snapshots it is not part of."""

    __slots__ = ()
    _top: dict[Any, Any]
    _below: tuple[dict[Any, Any], ...]
    _changed: set[Any] | None
    _flat: type[_View]
    _tracked: type[_View]
    _layered: type[_View]

    def _repoint(self, table: _Table) -> None:
        self._top = table.top  # type: ignore[misc]
        self._below = below = table.below  # type: ignore[misc]
        self._changed = changed = table.changed  # type: ignore[misc]
        self.__class__ = self._layered if below else self._flat if changed is None else self._tracked

    def clear(self) -> None:
        self._top.pop(self._keys.current_key, None)  # type: ignore[attr-defined]


class _LayeredView(_View):
    __slots__ = ()

    def clear(self) -> None:
        self._top[self._keys.current_key] = _ABSENT  # type: ignore[attr-defined]

    def _get(self, key: Any) -> Any:
        """The entry of ``key`` in the view of all layers, or ``_ABSENT``. An entry found below is
        returned as ``private`` made it: the caller may hand it out or change it (Step 2)."""
        top = self._top
        entry = top.get(key, _ABSENT)
        if entry is not _ABSENT:
            return entry
        found = _below_get(top, self._below, key)
        if found is _ABSENT:
            return found
        entry = private(found)
        if entry is not found:
            top[key] = entry
        return entry


class HeapValueState(_View, ValueState[Any]):
    __slots__ = ("__weakref__", "_below", "_default", "_keys", "_top", "_changed")

    def __init__(self, table: _Table, keys: KeyContext, default: Any) -> None:
        self._keys = keys
        self._default = default
        self._repoint(table)

    def value(self) -> Any:
        return self._top.get(self._keys.current_key, self._default)  # an immutable default

    def update(self, value: Any) -> None:
        if value is None:
            self._top.pop(self._keys.current_key, None)
        else:
            self._top[self._keys.current_key] = value


class _LayeredValueState(_LayeredView, HeapValueState):
    __slots__ = ()

    def value(self) -> Any:
        # _get inlined for the usual single layer below (one snapshot being written): a key not
        # read since the snapshot costs two dict lookups more than on a flat table.
        key = self._keys.current_key
        top = self._top
        entry = top.get(key, _ABSENT)
        if entry is not _ABSENT:
            return entry
        if key in top:
            return self._default  # a tombstone
        below = self._below
        found = below[0].get(key, _ABSENT) if len(below) == 1 else _below_get(top, below, key)
        if found is _ABSENT:
            return self._default
        if type(found) in _IMMUTABLE:
            return found
        entry = private(found)
        if entry is not found:
            top[key] = entry
        return entry

    def update(self, value: Any) -> None:
        self._top[self._keys.current_key] = _ABSENT if value is None else value


class _FreshDefaultValueState(HeapValueState):
    """A value state whose default is mutable: it is never stored, so each ``value()`` of a key
    without a value returns a fresh copy of it (changing it changes nothing). A class of its own so
    that the usual immutable default costs nothing."""

    __slots__ = ()

    def value(self) -> Any:
        entry = self._top.get(self._keys.current_key, _ABSENT)
        return private(self._default) if entry is _ABSENT else entry


class _LayeredFreshDefaultValueState(_LayeredValueState):
    __slots__ = ()

    def value(self) -> Any:
        entry = self._get(self._keys.current_key)
        return private(self._default) if entry is _ABSENT else entry


class HeapListState(_View, ListState[Any]):
    __slots__ = ("__weakref__", "_below", "_keys", "_top", "_changed")

    def __init__(self, table: _Table, keys: KeyContext) -> None:
        self._keys = keys
        self._repoint(table)

    def get(self) -> list[Any]:
        return list(self._top.get(self._keys.current_key, ()))

    def add(self, value: Any) -> None:
        self._top.setdefault(self._keys.current_key, []).append(value)

    def add_all(self, values: Iterable[Any]) -> None:
        new = list(values)
        if new:
            self._top.setdefault(self._keys.current_key, []).extend(new)

    def update(self, values: Iterable[Any]) -> None:
        new = list(values)
        if new:
            self._top[self._keys.current_key] = new
        else:
            self.clear()


class _LayeredListState(_LayeredView, HeapListState):
    __slots__ = ()

    def _own(self) -> list[Any]:
        """The list of the current key in ``top``: a copy of the one below, made on its first change."""
        key = self._keys.current_key
        entry = self._top.get(key, _ABSENT)
        if entry is _ABSENT:
            found = _below_get(self._top, self._below, key)
            entry = self._top[key] = [] if found is _ABSENT else [private(item) for item in found]
        return entry  # type: ignore[no-any-return]

    def get(self) -> list[Any]:
        key = self._keys.current_key
        entry = self._top.get(key, _ABSENT)
        if entry is _ABSENT:
            found = _below_get(self._top, self._below, key)
            if found is _ABSENT:
                return []
            entry = [private(item) for item in found]
            if any(mine is not theirs for mine, theirs in zip(entry, found)):
                self._top[key] = entry  # its items may be changed by the caller: keep the copies
        return list(entry)

    def add(self, value: Any) -> None:
        self._own().append(value)

    def add_all(self, values: Iterable[Any]) -> None:
        new = list(values)
        if new:
            self._own().extend(new)


class HeapMapState(_View, MapState[Any, Any]):
    __slots__ = ("__weakref__", "_below", "_keys", "_top", "_changed")

    def __init__(self, table: _Table, keys: KeyContext) -> None:
        self._keys = keys
        self._repoint(table)

    def _read(self) -> dict[Any, Any]:
        """The map of the current key, for reading keys only."""
        return self._top.get(self._keys.current_key) or {}

    def _values(self) -> dict[Any, Any]:
        """The map of the current key, whose values may be handed out."""
        return self._top.get(self._keys.current_key) or {}

    def _own(self) -> dict[Any, Any]:
        return self._top.setdefault(self._keys.current_key, {})  # type: ignore[no-any-return]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._values().get(key, default)

    def put(self, key: Any, value: Any) -> None:
        if type(key) is not str:
            check_key(key)
        self._own()[key] = value

    def put_all(self, entries: dict[Any, Any]) -> None:
        if entries:
            for key in entries:
                if type(key) is not str:
                    check_key(key)
            self._own().update(entries)

    def contains(self, key: Any) -> bool:
        return key in self._read()

    def remove(self, key: Any) -> None:
        entries = self._read()
        if key not in entries:
            return
        if len(entries) == 1:
            self.clear()
        else:
            del self._own()[key]

    def keys(self) -> Iterator[Any]:
        return iter(list(self._read()))

    def values(self) -> Iterator[Any]:
        return iter(list(self._values().values()))

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(list(self._values().items()))

    def is_empty(self) -> bool:
        return not self._read()


class _LayeredMapState(_LayeredView, HeapMapState):
    __slots__ = ()

    def _read(self) -> dict[Any, Any]:
        key = self._keys.current_key
        entry = self._top.get(key, _ABSENT)
        if entry is _ABSENT:
            entry = _below_get(self._top, self._below, key)
        return {} if entry is _ABSENT else entry  # type: ignore[no-any-return]

    def _values(self) -> dict[Any, Any]:
        key = self._keys.current_key
        if key in self._top:
            return self._read()
        found = _below_get(self._top, self._below, key)
        if found is _ABSENT:
            return {}
        entry = {k: private(v) for k, v in found.items()}
        if any(mine is not found[k] for k, mine in entry.items()):
            self._top[key] = entry  # its values may be changed by the caller: keep the copies
        return entry

    def _own(self) -> dict[Any, Any]:
        """The map of the current key in ``top``: a copy of the one below, made on its first change."""
        key = self._keys.current_key
        entry = self._top.get(key, _ABSENT)
        if entry is _ABSENT:
            found = _below_get(self._top, self._below, key)
            entry = self._top[key] = {} if found is _ABSENT else {k: private(v) for k, v in found.items()}
        return entry  # type: ignore[no-any-return]


class HeapReducingState(_View, ReducingState[Any]):
    __slots__ = ("__weakref__", "_below", "_fn", "_keys", "_top", "_changed")

    def __init__(self, table: _Table, keys: KeyContext, reduce_fn: Callable[[Any, Any], Any]) -> None:
        self._keys = keys
        self._fn = reduce_fn
        self._repoint(table)

    def get(self) -> Any:
        return self._top.get(self._keys.current_key)

    def add(self, value: Any) -> None:
        self.add_and_get(value)

    def add_and_get(self, value: Any) -> Any:
        key = self._keys.current_key
        top = self._top
        old = top.get(key, _ABSENT)  # flat: no tombstones, _ABSENT means no entry
        new = top[key] = value if old is _ABSENT else self._fn(old, value)
        return new


class _LayeredReducingState(_LayeredView, HeapReducingState):
    __slots__ = ()

    def get(self) -> Any:
        entry = self._get(self._keys.current_key)
        return None if entry is _ABSENT else entry

    def add_and_get(self, value: Any) -> Any:
        key = self._keys.current_key
        old = self._get(key)
        new = self._top[key] = value if old is _ABSENT else self._fn(old, value)
        return new

# ---- flat views that record changed keys (rule 4) ---------------------------------------------------


class _TrackedView(_View):
    __slots__ = ()

    def clear(self) -> None:
        key = self._keys.current_key  # type: ignore[attr-defined]
        self._top.pop(key, None)
        self._changed.add(key)  # type: ignore[union-attr]


class _TrackedValueState(_TrackedView, HeapValueState):
    __slots__ = ()

    def value(self) -> Any:
        key = self._keys.current_key
        entry = self._top.get(key, self._default)  # an immutable default
        if type(entry) not in _IMMUTABLE:
            self._changed.add(key)  # type: ignore[union-attr]  # the caller may change it in place
        return entry

    def update(self, value: Any) -> None:
        key = self._keys.current_key
        if value is None:
            self._top.pop(key, None)
        else:
            self._top[key] = value
        self._changed.add(key)  # type: ignore[union-attr]


class _TrackedFreshDefaultValueState(_TrackedValueState):
    __slots__ = ()

    def value(self) -> Any:
        key = self._keys.current_key
        entry = self._top.get(key, _ABSENT)
        if entry is _ABSENT:
            return private(self._default)  # never stored
        if type(entry) not in _IMMUTABLE:
            self._changed.add(key)  # type: ignore[union-attr]
        return entry


class _TrackedListState(_TrackedView, HeapListState):
    __slots__ = ()

    def get(self) -> list[Any]:
        key = self._keys.current_key
        entry = self._top.get(key)
        if entry is None:
            return []
        self._changed.add(key)  # type: ignore[union-attr]  # its items may be changed in place
        return list(entry)

    def add(self, value: Any) -> None:
        key = self._keys.current_key
        self._top.setdefault(key, []).append(value)
        self._changed.add(key)  # type: ignore[union-attr]

    def add_all(self, values: Iterable[Any]) -> None:
        new = list(values)
        if new:
            key = self._keys.current_key
            self._top.setdefault(key, []).extend(new)
            self._changed.add(key)  # type: ignore[union-attr]

    def update(self, values: Iterable[Any]) -> None:
        new = list(values)
        if new:
            key = self._keys.current_key
            self._top[key] = new
            self._changed.add(key)  # type: ignore[union-attr]
        else:
            self.clear()


class _TrackedMapState(_TrackedView, HeapMapState):
    __slots__ = ()

    def _values(self) -> dict[Any, Any]:
        key = self._keys.current_key
        entry = self._top.get(key)
        if not entry:
            return {}
        self._changed.add(key)  # type: ignore[union-attr]  # its values may be changed in place
        return entry  # type: ignore[no-any-return]

    def _own(self) -> dict[Any, Any]:
        key = self._keys.current_key
        self._changed.add(key)  # type: ignore[union-attr]
        return self._top.setdefault(key, {})  # type: ignore[no-any-return]


class _TrackedReducingState(_TrackedView, HeapReducingState):
    __slots__ = ()

    def get(self) -> Any:
        key = self._keys.current_key
        entry = self._top.get(key)
        if type(entry) not in _IMMUTABLE:
            self._changed.add(key)  # type: ignore[union-attr]
        return entry

    def add_and_get(self, value: Any) -> Any:
        key = self._keys.current_key
        top = self._top
        old = top.get(key, _ABSENT)
        new = top[key] = value if old is _ABSENT else self._fn(old, value)
        self._changed.add(key)  # type: ignore[union-attr]
        return new


for _flat, _tracked, _layered in (
    (HeapValueState, _TrackedValueState, _LayeredValueState),
    (_FreshDefaultValueState, _TrackedFreshDefaultValueState, _LayeredFreshDefaultValueState),
    (HeapListState, _TrackedListState, _LayeredListState),
    (HeapMapState, _TrackedMapState, _LayeredMapState),
    (HeapReducingState, _TrackedReducingState, _LayeredReducingState),
):
    for _cls in (_flat, _tracked, _layered):
        _cls._flat, _cls._tracked, _cls._layered = _flat, _tracked, _layered
del _flat, _tracked, _layered, _cls
