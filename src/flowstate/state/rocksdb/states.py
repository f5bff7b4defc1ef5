"""The state objects of the RocksDB backend: each reads and writes the rows of the current key in
the top layer of its state's object cache (``cache.Column``), which decides where a miss is read from.

Row keys (see ``flowstate.state.rocksdb``): value and reducing state use the key prefix; a list
element is the prefix plus an 8-byte big-endian sequence number, in the order the elements were added
(``add`` writes one row and never reads the list); a map entry is the prefix plus the canonical
encoding of the map key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flowstate.state.api import ListState, MapState, ReducingState, ValueState
from flowstate.state.codec import decode_key, encode_key
from flowstate.state.rocksdb.cache import DELETED, MISS, Column, Marker
from flowstate.state.rocksdb.layout import RocksKeyContext, pack_sequence
from flowstate.state.values import private


class RocksValueState(ValueState[Any]):
    __slots__ = ("_col", "_default", "_keys")

    def __init__(self, col: Column, keys: RocksKeyContext, default: Any) -> None:
        self._col = col
        self._keys = keys
        self._default = default

    def value(self) -> Any:
        col = self._col
        row = self._keys.prefix()
        found = col.objects.get(row, MISS)
        if found.__class__ is Marker:  # not cached (MISS), DELETED or ABSENT
            if found is MISS:
                found = col.load(row)
            if found.__class__ is Marker:
                return private(self._default)
        return found

    def update(self, value: Any) -> None:
        self._col.objects[self._keys.prefix()] = DELETED if value is None else value

    def clear(self) -> None:
        self._col.objects[self._keys.prefix()] = DELETED


class RocksReducingState(ReducingState[Any]):
    __slots__ = ("_col", "_fn", "_keys")

    def __init__(self, col: Column, keys: RocksKeyContext, reduce_fn: Callable[[Any, Any], Any]) -> None:
        self._col = col
        self._keys = keys
        self._fn = reduce_fn

    def get(self) -> Any:
        found = self._col.load(self._keys.prefix())
        return None if found is MISS else found

    def add(self, value: Any) -> None:
        self.add_and_get(value)

    def add_and_get(self, value: Any) -> Any:
        col = self._col
        row = self._keys.prefix()
        old = col.objects.get(row, MISS)
        if old.__class__ is Marker:  # not cached (MISS), DELETED or ABSENT
            if old is MISS:
                old = col.load(row)
            new = value if old.__class__ is Marker else self._fn(old, value)
        else:
            new = self._fn(old, value)
        col.objects[row] = new
        return new

    def clear(self) -> None:
        self._col.objects[self._keys.prefix()] = DELETED


class Sequence:
    """The next sequence number of a list element, for every list state of one backend."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = 0


class RocksListState(ListState[Any]):
    __slots__ = ("_col", "_keys", "_sequence")

    def __init__(self, col: Column, keys: RocksKeyContext, sequence: Sequence) -> None:
        self._col = col
        self._keys = keys
        self._sequence = sequence

    def get(self) -> list[Any]:
        return [value for _, value in self._col.scan_objects(self._keys.prefix())]

    def add(self, value: Any) -> None:
        sequence = self._sequence
        number = sequence.next
        sequence.next = number + 1
        prefix = self._keys.prefix()
        self._col.store_in(prefix, prefix + pack_sequence(number), value)

    def add_all(self, values: Iterable[Any]) -> None:
        for value in values:
            self.add(value)

    def update(self, values: Iterable[Any]) -> None:
        new = list(values)  # before the clear: ``values`` may be a generator over this very list
        self.clear()
        self.add_all(new)

    def clear(self) -> None:
        self._col.delete_prefix(self._keys.prefix())


class RocksMapState(MapState[Any, Any]):
    __slots__ = ("_col", "_keys")

    def __init__(self, col: Column, keys: RocksKeyContext) -> None:
        self._col = col
        self._keys = keys

    def get(self, key: Any, default: Any = None) -> Any:
        prefix = self._keys.prefix()
        found = self._col.load(prefix + encode_key(key), prefix)
        return default if found is MISS else found

    def put(self, key: Any, value: Any) -> None:
        prefix = self._keys.prefix()
        self._col.store_in(prefix, prefix + encode_key(key), value)

    def put_all(self, entries: dict[Any, Any]) -> None:
        prefix = self._keys.prefix()
        rows = [(prefix + encode_key(key), value) for key, value in entries.items()]  # every key checked first
        for row, value in rows:
            self._col.store_in(prefix, row, value)

    def contains(self, key: Any) -> bool:
        prefix = self._keys.prefix()
        return self._col.exists(prefix + encode_key(key), prefix)

    def remove(self, key: Any) -> None:
        prefix = self._keys.prefix()
        self._col.store_in(prefix, prefix + encode_key(key), DELETED)

    def keys(self) -> Iterator[Any]:
        prefix = self._keys.prefix()
        start = len(prefix)
        return iter([decode_key(row[start:]) for row, _ in self._col.scan_objects(prefix)])

    def values(self) -> Iterator[Any]:
        return iter([value for _, value in self._col.scan_objects(self._keys.prefix())])

    def items(self) -> Iterator[tuple[Any, Any]]:
        prefix = self._keys.prefix()
        start = len(prefix)
        return iter([(decode_key(row[start:]), value) for row, value in self._col.scan_objects(prefix)])

    def is_empty(self) -> bool:
        return not self._col.scan_objects(self._keys.prefix())

    def clear(self) -> None:
        self._col.delete_prefix(self._keys.prefix())
