"""Keyed state as user functions see it: value, list, map and reducing state.

Every state object reads and writes the entry of the **current key**, which the runtime sets before
each call of a keyed function. A state object is created once, in ``open``, and used for every key.

Values are stored by reference. Do not mutate an object after storing it unless you store it again:
a checkpoint copies entries when it is taken, not when they change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

V = TypeVar("V")
K = TypeVar("K")


class KeyContext:
    """Holds the key of the record being processed. Shared by every state of one operator."""

    __slots__ = ("current_key",)

    def __init__(self) -> None:
        self.current_key: Any = None


class ValueState(Generic[V]):
    """One value per key. ``value()`` returns ``default`` for a key that has none."""

    __slots__ = ("_table", "_keys", "_default")

    def __init__(self, table: dict[Any, V], keys: KeyContext, default: V | None) -> None:
        self._table = table
        self._keys = keys
        self._default = default

    def value(self) -> V | None:
        return self._table.get(self._keys.current_key, self._default)

    def update(self, value: V | None) -> None:
        """Set the value of the current key; ``None`` clears it."""
        if value is None:
            self._table.pop(self._keys.current_key, None)
        else:
            self._table[self._keys.current_key] = value

    def clear(self) -> None:
        self._table.pop(self._keys.current_key, None)


class ListState(Generic[V]):
    """A list per key."""

    __slots__ = ("_table", "_keys")

    def __init__(self, table: dict[Any, list[V]], keys: KeyContext) -> None:
        self._table = table
        self._keys = keys

    def get(self) -> list[V]:
        """A copy of the current key's list (empty when it has none)."""
        return list(self._table.get(self._keys.current_key, ()))

    def add(self, value: V) -> None:
        self._table.setdefault(self._keys.current_key, []).append(value)

    def add_all(self, values: Iterable[V]) -> None:
        self._table.setdefault(self._keys.current_key, []).extend(values)

    def update(self, values: Iterable[V]) -> None:
        new = list(values)
        if new:
            self._table[self._keys.current_key] = new
        else:
            self._table.pop(self._keys.current_key, None)

    def clear(self) -> None:
        self._table.pop(self._keys.current_key, None)


class MapState(Generic[K, V]):
    """A dictionary per key."""

    __slots__ = ("_table", "_keys")

    def __init__(self, table: dict[Any, dict[K, V]], keys: KeyContext) -> None:
        self._table = table
        self._keys = keys

    def _map(self) -> dict[K, V]:
        return self._table.get(self._keys.current_key) or {}

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._map().get(key, default)

    def put(self, key: K, value: V) -> None:
        self._table.setdefault(self._keys.current_key, {})[key] = value

    def put_all(self, entries: dict[K, V]) -> None:
        self._table.setdefault(self._keys.current_key, {}).update(entries)

    def contains(self, key: K) -> bool:
        return key in self._map()

    def remove(self, key: K) -> None:
        m = self._table.get(self._keys.current_key)
        if m is not None:
            m.pop(key, None)
            if not m:
                del self._table[self._keys.current_key]

    def keys(self) -> Iterator[K]:
        return iter(list(self._map()))

    def values(self) -> Iterator[V]:
        return iter(list(self._map().values()))

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self._map().items()))

    def is_empty(self) -> bool:
        return not self._map()

    def clear(self) -> None:
        self._table.pop(self._keys.current_key, None)


class ReducingState(Generic[V]):
    """One value per key, combined with ``reduce_fn`` on every ``add``."""

    __slots__ = ("_table", "_keys", "_fn")

    def __init__(self, table: dict[Any, V], keys: KeyContext, reduce_fn: Callable[[V, V], V]) -> None:
        self._table = table
        self._keys = keys
        self._fn = reduce_fn

    def get(self) -> V | None:
        return self._table.get(self._keys.current_key)

    def add(self, value: V) -> None:
        key = self._keys.current_key
        table = self._table
        if key in table:
            table[key] = self._fn(table[key], value)
        else:
            table[key] = value

    def clear(self) -> None:
        self._table.pop(self._keys.current_key, None)
