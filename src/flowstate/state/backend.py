"""The keyed state backend port.

A backend holds every keyed state table of one operator subtask. Contract:

1. ``table(name, kind)`` returns the live table (key → entry) of state ``name``; asking again for
   the same name returns the same table; asking with another kind raises ``StateError``.
2. ``snapshot()`` is the **synchronous part** of a snapshot, run on the task thread between two
   records: it must return quickly with a ``KeyedSnapshot`` that later changes to the live tables
   cannot affect.
3. ``KeyedSnapshot.materialize()`` is the **asynchronous part**, run off the task thread: it returns a
   picklable value grouped by key group, so that any subtask range can be read back.
4. ``restore(states)`` loads the entries of the key groups this subtask owns from one or more
   materialized snapshots, before the operator opens.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any, Protocol

from flowstate.state.api import KeyContext


class StateError(Exception):
    """Keyed state was used in a way the backend cannot honour (named in the message)."""


class StateKind(Enum):
    VALUE = "value"
    LIST = "list"
    MAP = "map"
    REDUCING = "reducing"


class KeyedSnapshot(Protocol):
    def materialize(self) -> Any:
        """Rule 3."""
        ...


class KeyedStateBackend(Protocol):
    @property
    def keys(self) -> KeyContext: ...

    def table(self, name: str, kind: StateKind) -> dict[Any, Any]:
        """Rule 1."""
        ...

    def snapshot(self) -> KeyedSnapshot:
        """Rule 2."""
        ...

    def restore(self, states: Iterable[Any]) -> None:
        """Rule 4."""
        ...

    def entry_count(self) -> int:
        """Number of (state, key) entries held, for metrics."""
        ...
