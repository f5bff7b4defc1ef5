"""In-memory (heap) keyed state backend.

Tables are plain dicts. The synchronous part of a snapshot copies each table (one level deeper for
list and map state, whose entries are mutated in place); serialising happens in the asynchronous
part. The copy grows with state size: it is measured in ``docs/benchmarks.md``.

A snapshot records the key-group range of the subtask that wrote it and its tables as flat dicts. A
restore into the same range loads them as they are; a restore into another range (a rescale) keeps
only the keys whose stable key group it owns, so no key is hashed unless a rescale needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flowstate.state.api import KeyContext
from flowstate.state.backend import StateError, StateKind
from flowstate.state.keygroups import key_group_of

FORMAT = "heap-v1"


@dataclass(frozen=True, slots=True)
class HeapSnapshot:
    max_parallelism: int
    key_groups: range
    tables: dict[str, tuple[StateKind, dict[Any, Any]]]

    def materialize(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "max_parallelism": self.max_parallelism,
            "key_groups": [self.key_groups.start, self.key_groups.stop],
            "tables": {name: {"kind": kind.value, "entries": table} for name, (kind, table) in self.tables.items()},
        }


class HeapKeyedStateBackend:
    def __init__(self, max_parallelism: int, key_groups: range) -> None:
        self._maxp = max_parallelism
        self._key_groups = key_groups
        self._keys = KeyContext()
        self._tables: dict[str, tuple[StateKind, dict[Any, Any]]] = {}

    @property
    def keys(self) -> KeyContext:
        return self._keys

    def table(self, name: str, kind: StateKind) -> dict[Any, Any]:
        existing = self._tables.get(name)
        if existing is not None:
            if existing[0] is not kind:
                raise StateError(
                    f"state {name!r} is {existing[0].value} state; it cannot also be {kind.value} state"
                )
            return existing[1]
        table: dict[Any, Any] = {}
        self._tables[name] = (kind, table)
        return table

    def snapshot(self) -> HeapSnapshot:
        copies: dict[str, tuple[StateKind, dict[Any, Any]]] = {}
        for name, (kind, table) in self._tables.items():
            if kind is StateKind.LIST:
                copies[name] = (kind, {k: list(v) for k, v in table.items()})
            elif kind is StateKind.MAP:
                copies[name] = (kind, {k: dict(v) for k, v in table.items()})
            else:
                copies[name] = (kind, table.copy())
        return HeapSnapshot(self._maxp, self._key_groups, copies)

    def restore(self, states: Iterable[Any]) -> None:
        own = self._key_groups
        maxp = self._maxp
        for state in states:
            if state.get("format") != FORMAT:
                raise StateError(f"unknown keyed state format {state.get('format')!r}")
            if state["max_parallelism"] != maxp:
                raise StateError(
                    f"the checkpoint was taken with max_parallelism {state['max_parallelism']}, "
                    f"the job now has {maxp}: max_parallelism cannot change"
                )
            start, stop = state["key_groups"]
            inside = own.start <= start and stop <= own.stop
            for name, entry in state["tables"].items():
                table = self.table(name, StateKind(entry["kind"]))
                if inside:
                    table.update(entry["entries"])
                else:
                    table.update((k, v) for k, v in entry["entries"].items() if key_group_of(k, maxp) in own)

    def entry_count(self) -> int:
        return sum(len(t) for _, t in self._tables.values())
