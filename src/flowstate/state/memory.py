"""In-memory (heap) keyed state backend with copy-on-write snapshots.

Every state is a ``_Table`` of **layers**: ``top``, the dict the task thread writes, and ``below``, a
tuple of frozen dicts (lowest first), empty most of the time. With no layer below (*flat*), a value
state costs one dict ``get`` and one dict store per record, as a plain dict would.

Step (1), the synchronous part (``snapshot``): for every table, the current ``top`` is frozen (it
becomes the highest layer of ``below``) and an empty dict becomes the new ``top``; every state object
is re-pointed at it. Nothing is copied: O(states + state objects), whatever the number of keys.

Step (2), while a layer is frozen, writes go to ``top``; a delete writes the tombstone ``_ABSENT``;
reads look in ``top`` first and fall through the frozen layers (a tombstone ends the search). **No
object reachable from a frozen layer is ever handed out or changed** (copy-on-write per entry, as
Flink's heap backend does): the first access to an entry found below copies it into ``top`` (a list
or a map, and every value inside that is not immutable, copied deeply with ``private``), and only
the copy is returned or changed from then on. Immutable values (numbers, strings, bytes, ``None``,
dates, tuples of these) are returned as they are and never copied, so the hot path of a count or a
sum costs what it did. This is what makes a snapshot the state at its barrier whatever the user
does with the objects that state reads return (the rules of ``flowstate.state.values``).

Step (3), the asynchronous part (``materialize``), on another thread, pickles the frozen layers as
one view (upper layers shadow lower ones, tombstones hide) in chunks of ``chunk_entries`` entries:
one pickle call never holds the interpreter lock for long, so the task thread keeps running.

Step (4), once every snapshot taken is materialized or released, the task thread folds the layers
(``maybe_fold``, between batches, or at the next ``snapshot`` at the latest): the entries of every
layer above the lowest are applied to it, in order, and it becomes ``top`` again. This costs the
number of entries written since the snapshot, never the whole state. A snapshot taken while an older
one is still being written stacks one more layer; the fold waits until both are done.

Snapshot data (format ``heap-v2``): ``{"format", "max_parallelism", "key_groups": [start, stop],
"states": {name: {"kind": kind, "chunks": [pickled dict, ...]}}}``; ``files`` is always empty. A
restore into the same or a wider key-group range loads the chunks as they are; a restore into another
range (a rescale) keeps only the keys whose key group it owns, so no key is hashed unless a rescale
needs it.
"""

from __future__ import annotations

import itertools
import pickle
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
from flowstate.state.backend import (
    RestoredState,
    SnapshotParts,
    StateError,
    StateKind,
    check_header,
)
from flowstate.state.keygroups import key_group_of
from flowstate.state.keys import check_key
from flowstate.state.values import immutable, private

FORMAT = "heap-v2"
DEFAULT_CHUNK_ENTRIES = 10_000


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
    __slots__ = ("below", "kind", "top", "views")

    def __init__(self, kind: StateKind) -> None:
        self.kind = kind
        self.top: dict[Any, Any] = {}
        self.below: tuple[dict[Any, Any], ...] = ()
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
    _flat: type[_View]
    _layered: type[_View]

    def _repoint(self, top: dict[Any, Any], below: tuple[dict[Any, Any], ...]) -> None:
        self._top = top
        self._below = below
        self.__class__ = self._layered if below else self._flat

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
    __slots__ = ("__weakref__", "_below", "_default", "_keys", "_top")

    def __init__(self, table: _Table, keys: KeyContext, default: Any) -> None:
        self._keys = keys
        self._default = default
        self._repoint(table.top, table.below)

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
        entry = self._get(self._keys.current_key)
        return self._default if entry is _ABSENT else entry

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
    __slots__ = ("__weakref__", "_below", "_keys", "_top")

    def __init__(self, table: _Table, keys: KeyContext) -> None:
        self._keys = keys
        self._repoint(table.top, table.below)

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
    __slots__ = ("__weakref__", "_below", "_keys", "_top")

    def __init__(self, table: _Table, keys: KeyContext) -> None:
        self._keys = keys
        self._repoint(table.top, table.below)

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
    __slots__ = ("__weakref__", "_below", "_fn", "_keys", "_top")

    def __init__(self, table: _Table, keys: KeyContext, reduce_fn: Callable[[Any, Any], Any]) -> None:
        self._keys = keys
        self._fn = reduce_fn
        self._repoint(table.top, table.below)

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


for _flat, _layered in ((HeapValueState, _LayeredValueState),
                        (_FreshDefaultValueState, _LayeredFreshDefaultValueState), (HeapListState, _LayeredListState),
                        (HeapMapState, _LayeredMapState), (HeapReducingState, _LayeredReducingState)):
    _flat._flat = _layered._flat = _flat
    _flat._layered = _layered._layered = _layered
del _flat, _layered


class HeapSnapshot:
    """A snapshot of frozen layers (Steps 1 and 3). ``done`` turns true when ``materialize`` has
    returned or ``release`` was called: from then on the backend may fold the layers."""

    __slots__ = ("_chunk_entries", "_key_groups", "_layers", "_max_parallelism", "done")

    def __init__(self, max_parallelism: int, key_groups: range,
                 layers: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]], chunk_entries: int) -> None:
        self._max_parallelism = max_parallelism
        self._key_groups = key_groups
        self._layers: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]] | None = layers
        self._chunk_entries = chunk_entries
        self.done = False

    def materialize(self) -> SnapshotParts:
        layers = self._layers
        if layers is None:
            raise StateError("this snapshot was already materialized or released")
        try:
            states = {}
            for name, (kind, frozen) in layers.items():
                try:
                    chunks = list(_pickled_chunks(frozen, self._chunk_entries))
                except (pickle.PicklingError, TypeError, AttributeError) as exc:
                    raise StateError(
                        f"state {name!r} holds a value that cannot be pickled ({type(exc).__name__}: {exc}); "
                        "keep only picklable values (and keys) in keyed state"
                    ) from exc
                states[name] = {"kind": kind.value, "chunks": chunks}
        finally:
            self._layers = None
            self.done = True
        data = {"format": FORMAT, "max_parallelism": self._max_parallelism,
                "key_groups": [self._key_groups.start, self._key_groups.stop], "states": states}
        return SnapshotParts(data, {})

    def release(self) -> None:
        self._layers = None
        self.done = True


def _pickled_chunks(layers: tuple[dict[Any, Any], ...], size: int) -> Iterator[bytes]:
    """Step 3: the view of ``layers`` as pickled dicts of at most ``size`` entries."""
    base = layers[0]
    if len(layers) == 1:
        entries: Iterator[tuple[Any, Any]] = iter(base.items())
    else:
        upper: dict[Any, Any] = {}
        for layer in layers[1:]:
            upper.update(layer)
        entries = itertools.chain(
            ((k, v) for k, v in base.items() if k not in upper),
            ((k, v) for k, v in upper.items() if v is not _ABSENT),
        )
    while chunk := dict(itertools.islice(entries, size)):
        yield pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)


def heap_snapshot_entries(data: Any, name: str) -> dict[Any, Any]:
    """The entries of state ``name`` in the data of a heap snapshot, read offline (tools, tests);
    ``{}`` when the snapshot has no state of that name."""
    entries: dict[Any, Any] = {}
    for chunk in data["states"].get(name, {"chunks": ()})["chunks"]:
        entries.update(pickle.loads(chunk))
    return entries


class HeapKeyedStateBackend:
    """Keyed state in dicts, with copy-on-write snapshots (see the module docstring)."""

    def __init__(self, max_parallelism: int, key_groups: range, *,
                 chunk_entries: int = DEFAULT_CHUNK_ENTRIES) -> None:
        if chunk_entries < 1:
            raise ValueError(f"chunk_entries must be at least 1, not {chunk_entries}")
        self._maxp = max_parallelism
        self._key_groups = key_groups
        self._chunk_entries = chunk_entries
        self._keys = KeyContext()
        self._tables: dict[str, _Table] = {}
        self._layered = False
        self._pending: list[HeapSnapshot] = []
        self._used = False

    @property
    def keys(self) -> KeyContext:
        return self._keys

    # ---- state objects (rule 1) ------------------------------------------------------------------

    def _table(self, name: str, kind: StateKind) -> _Table:
        self._used = True
        table = self._tables.get(name)
        if table is None:
            # A new table is flat even while others are layered: no snapshot holds any of it.
            table = self._tables[name] = _Table(kind)
        elif table.kind is not kind:
            raise StateError(f"state {name!r} is {table.kind.value} state; it cannot also be {kind.value} state")
        return table

    def value_state(self, name: str, default: Any = None) -> HeapValueState:
        table = self._table(name, StateKind.VALUE)
        kind = HeapValueState if immutable(default) else _FreshDefaultValueState
        view = kind(table, self._keys, default)
        table.views.add(view)
        return view

    def list_state(self, name: str) -> HeapListState:
        table = self._table(name, StateKind.LIST)
        view = HeapListState(table, self._keys)
        table.views.add(view)
        return view

    def map_state(self, name: str) -> HeapMapState:
        table = self._table(name, StateKind.MAP)
        view = HeapMapState(table, self._keys)
        table.views.add(view)
        return view

    def reducing_state(self, name: str, reduce_fn: Callable[[Any, Any], Any]) -> HeapReducingState:
        table = self._table(name, StateKind.REDUCING)
        view = HeapReducingState(table, self._keys, reduce_fn)
        table.views.add(view)
        return view

    def state_keys(self, name: str) -> Iterator[Any]:
        table = self._tables.get(name)
        if table is None:
            return iter(())
        if not table.below:
            return iter(list(table.top))
        upper = table.merged()
        base = table.below[0]
        keys = [k for k in base if k not in upper]
        keys.extend(k for k, v in upper.items() if v is not _ABSENT)
        return iter(keys)

    # ---- snapshots (rules 3 to 5) ----------------------------------------------------------------

    def snapshot(self, full: bool = False) -> HeapSnapshot:
        """Step 1. ``full`` changes nothing: a heap snapshot is always self-contained."""
        self._used = True
        self.maybe_fold()
        frozen: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]] = {}
        for name, table in self._tables.items():
            layers = (*table.below, table.top)
            frozen[name] = (table.kind, layers)
            table.below = layers
            table.top = {}
            self._repoint(table)
        self._layered = True
        snapshot = HeapSnapshot(self._maxp, self._key_groups, frozen, self._chunk_entries)
        self._pending.append(snapshot)
        return snapshot

    def maybe_fold(self) -> None:
        """Step 4, when every snapshot taken is done; otherwise nothing."""
        if not self._layered:
            return
        for snapshot in self._pending:
            if not snapshot.done:
                return
        self._pending.clear()
        for table in self._tables.values():
            if not table.below:
                continue  # created after the last snapshot: flat already
            base = table.below[0]
            for layer in (*table.below[1:], table.top):
                for key, entry in layer.items():
                    if entry is _ABSENT:
                        base.pop(key, None)
                    else:
                        base[key] = entry
            table.top = base
            table.below = ()
            self._repoint(table)
        self._layered = False

    @staticmethod
    def _repoint(table: _Table) -> None:
        for view in table.views:
            view._repoint(table.top, table.below)

    # ---- restore (rule 2) ------------------------------------------------------------------------

    def restore(self, states: Iterable[RestoredState]) -> None:
        if self._used:
            raise StateError("restore() must come first: state was already created or snapshotted in this backend")
        self._used = True
        own = self._key_groups
        maxp = self._maxp
        for state in states:
            theirs = check_header(state.data, FORMAT, maxp, "heap")
            inside = own.start <= theirs.start and theirs.stop <= own.stop
            if not inside and (theirs.stop <= own.start or own.stop <= theirs.start):
                continue  # no key group in common
            for name, entry in state.data["states"].items():
                table = self._table(name, StateKind(entry["kind"]))
                top = table.top
                for chunk in entry["chunks"]:
                    entries = pickle.loads(chunk)
                    if inside:
                        top.update(entries)
                    else:
                        top.update((k, v) for k, v in entries.items() if key_group_of(k, maxp) in own)

    # ---- resources and metrics (rules 6 and 7) ---------------------------------------------------

    def close(self) -> None:
        self._tables.clear()
        self._pending.clear()
        self._layered = False

    def entry_count(self) -> int:
        """Exact; O(states) when no snapshot is pending, else O(entries written since it was taken)."""
        return sum(table.count() for table in self._tables.values())

    def state_size_bytes(self) -> int:
        """An estimate of the pickled size: the mean pickled size of up to 32 entries of each state,
        times its entry count."""
        total = 0
        for table in self._tables.values():
            base = table.below[0] if table.below else table.top
            sample = dict(itertools.islice(base.items(), 32))
            if sample:
                per_entry = len(pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)) / len(sample)
                total += int(per_entry * table.count())
        return total
