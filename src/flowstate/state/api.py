"""Keyed state as user functions see it: value, list, map and reducing state.

Every state object reads and writes the entry of the **current key**, which the runtime sets before
each call of a keyed function. A state object is created once, in ``open``, and used for every key.
The classes below are the contract; each backend (``flowstate.state.memory``,
``flowstate.state.rocksdb``) creates its own implementation of them, so that a record costs what the
backend needs and nothing more.

Keys (the current key and map keys) follow ``flowstate.state.keys``; values follow
``flowstate.state.values``, identically on every backend: a snapshot never sees a change made after
it, and a change made in place to a value read from state is stored. Lists returned by
``ListState.get`` and the iterators of ``MapState`` are new objects (their items are the state's):
adding to them changes nothing in the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

V = TypeVar("V")
K = TypeVar("K")


class KeyContext:
    """Holds the key of the record being processed. Shared by every state of one operator."""

    __slots__ = ("current_key",)

    def __init__(self) -> None:
        self.current_key: Any = None
        """Any key of ``flowstate.state.keys``: the API cannot know its type."""


class ValueState(Generic[V]):
    """One value per key. ``value()`` returns ``default`` for a key that has none: ``V`` includes
    ``None`` unless a default of type ``V`` was given (``ValueState[int]`` with ``default=0``)."""

    __slots__ = ()

    def value(self) -> V:
        """The value of the current key (the state's default when it has none)."""
        raise NotImplementedError

    def update(self, value: V | None) -> None:
        """Set the value of the current key; ``None`` clears it."""
        raise NotImplementedError

    def clear(self) -> None:
        """Remove the current key's value."""
        raise NotImplementedError


class ListState(Generic[V]):
    """A list per key. A key whose list becomes empty has no entry."""

    __slots__ = ()

    def get(self) -> list[V]:
        """A copy of the current key's list (empty when it has none)."""
        raise NotImplementedError

    def add(self, value: V) -> None:
        """Append ``value`` to the current key's list."""
        raise NotImplementedError

    def add_all(self, values: Iterable[V]) -> None:
        """Append every item of ``values``."""
        raise NotImplementedError

    def update(self, values: Iterable[V]) -> None:
        """Replace the list; an empty ``values`` clears it."""
        raise NotImplementedError

    def clear(self) -> None:
        """Remove the current key's list."""
        raise NotImplementedError


class MapState(Generic[K, V]):
    """A dictionary per key. A key whose dictionary becomes empty has no entry."""

    __slots__ = ()

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of map key ``key`` for the current key, ``default`` when absent."""
        raise NotImplementedError

    def put(self, key: K, value: V) -> None:
        """Set map key ``key`` to ``value``."""
        raise NotImplementedError

    def put_all(self, entries: dict[K, V]) -> None:
        """``put`` every entry of ``entries``."""
        raise NotImplementedError

    def contains(self, key: K) -> bool:
        """Whether map key ``key`` is present."""
        raise NotImplementedError

    def remove(self, key: K) -> None:
        """Remove ``key`` if present (no error when it is not)."""
        raise NotImplementedError

    def keys(self) -> Iterator[K]:
        """The map keys of the current key, as they were when called."""
        raise NotImplementedError

    def values(self) -> Iterator[V]:
        """The values of the current key's map, as they were when called."""
        raise NotImplementedError

    def items(self) -> Iterator[tuple[K, V]]:
        """The ``(key, value)`` pairs of the current key's map, as they were when called."""
        raise NotImplementedError

    def is_empty(self) -> bool:
        """Whether the current key has no entry."""
        raise NotImplementedError

    def clear(self) -> None:
        """Remove the current key's map."""
        raise NotImplementedError


class ReducingState(Generic[V]):
    """One value per key, combined with ``reduce_fn(old, new)`` on every ``add``."""

    __slots__ = ()

    def get(self) -> V | None:
        """The reduced value of the current key (``None`` when it has none)."""
        raise NotImplementedError

    def add(self, value: V) -> None:
        """Store ``reduce_fn(old, value)`` (``value`` for a key without one)."""
        raise NotImplementedError

    def add_and_get(self, value: V) -> V:
        """``add(value)``, then the new reduced value (backends do it in one lookup)."""
        self.add(value)
        return self.get()  # type: ignore[return-value]

    def clear(self) -> None:
        """Remove the current key's value."""
        raise NotImplementedError
