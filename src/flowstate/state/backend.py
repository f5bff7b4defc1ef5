"""The keyed state backend port, and the snapshot contract the task runtime relies on.

A backend holds every keyed state of one operator subtask: the key groups ``key_groups`` of
``max_parallelism``. Contract:

1. **State objects come from the backend.** ``value_state(name, default)``, ``list_state(name)``,
   ``map_state(name)`` and ``reducing_state(name, fn)`` return objects with the API of
   ``flowstate.state.api``, reading and writing the entry of ``keys.current_key``. Asking again for a
   name returns an object over the same entries; asking for a name with another kind raises
   ``StateError`` and changes nothing.
2. ``restore(states)`` is called at most once, on a fresh backend: before any state object was
   created and before any snapshot. It loads the entries of the key groups this subtask owns from one
   or more ``RestoredState`` (several after a change of parallelism). A snapshot of another backend's
   format, or of another ``max_parallelism``, raises ``StateError``.
3. ``snapshot(full=False)`` is the **synchronous part**, run on the task thread between two records.
   It returns quickly a ``KeyedSnapshot`` holding exactly the state at that point: later changes on
   the task thread never reach it. ``full=True`` asks for a self-contained snapshot (a savepoint);
   see ``SnapshotParts.files`` for what that means to the caller.
4. ``KeyedSnapshot.materialize()`` is the **asynchronous part**, run once, off the task thread, while
   the task keeps processing. It returns ``SnapshotParts``. ``KeyedSnapshot.release()`` is called
   exactly once per snapshot, after ``materialize`` returned (once the caller no longer needs the
   files it listed) or instead of it (the checkpoint was aborted); it may run on any thread. Until it
   is called the backend keeps what the snapshot needs (the heap backend its frozen layers, the
   RocksDB backend the hard links of its files). Snapshots may overlap (several taken and not yet
   released) and may be released in any order.
5. ``maybe_fold()`` is called by the task thread between batches (the keyed operators call it before
   every batch). It is cheap when there is nothing to do, and does the backend's deferred work at a
   point where it delays no record for long (the heap backend folds the layers of released
   snapshots back into one table there, in O(changed keys)).
6. ``close()`` frees every resource (the RocksDB backend closes its database and deletes its working
   directory; the files of snapshots not released yet are deleted when they are released). A closed
   backend is not used again.
7. ``entry_count()`` (the number of (state, key) entries; exact for the heap, an estimate from
   RocksDB's statistics for RocksDB) and ``state_size_bytes()`` (an estimate of the serialized size)
   are for metrics: cheap, never O(entries).
8. **Prefetch.** Before a batch (after ``maybe_fold``) the task thread may ask
   ``wants_prefetch(size)``; when it says yes, the operator calls ``prefetch(keys)`` with the keys
   of the batch's records, in order, before processing them: a hint that their entries are about to
   be read. It changes nothing that any read returns, nor what any snapshot holds; it only makes
   the reads cheaper (the RocksDB backend reads the rows of many keys with one multi-get and
   decides from the rows its last batch read from RocksDB; the heap backend always says no).

Snapshot data layout: every ``SnapshotParts.data`` is a dict with at least ``"format"`` (the
backend's format name), ``"max_parallelism"`` and ``"key_groups"`` (``[start, stop)`` of the subtask
that took it), so that a restore can check compatibility and read only the key-group ranges it owns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from flowstate.state.api import (
    KeyContext,
    ListState,
    MapState,
    ReducingState,
    ValueState,
)

MAX_KEY_GROUPS = 32768
"""The largest supported ``max_parallelism`` (key groups are stored as two bytes, as in Flink)."""


class StateError(Exception):
    """Keyed state was used in a way the backend cannot honour (named in the message)."""


class StateKind(Enum):
    VALUE = "value"
    LIST = "list"
    MAP = "map"
    REDUCING = "reducing"


@dataclass(frozen=True, slots=True)
class SnapshotParts:
    """What the asynchronous part of a keyed snapshot produced.

    ``data`` is a picklable value of moderate size that the caller stores with the checkpoint (heap:
    the entries, pickled in chunks; RocksDB: a manifest naming the files, with the small files of the
    database inline).

    ``files`` maps a **shared-file key** to the local path of an immutable file that is part of the
    snapshot (RocksDB: its SST files; ``{}`` for the heap). A key is globally unique and always names
    the same bytes: a later snapshot that lists a key already stored by an earlier checkpoint refers
    to the very same file, so the caller uploads each key once and only references it afterwards
    (incremental checkpoints). The paths are valid until ``KeyedSnapshot.release()``. For a full
    snapshot (``snapshot(full=True)``, a savepoint) the keys are the same, but the caller must copy
    every listed file into the savepoint instead of referring to files of other checkpoints.
    """

    data: Any
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RestoredState:
    """One snapshot to restore from: its ``SnapshotParts.data`` and, for every file key it lists, the
    local path of that file. The files are read-only to the backend: it copies or hard-links them and
    never changes them, so the caller may share them between subtasks."""

    data: Any
    files: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def of(parts: SnapshotParts) -> RestoredState:
        """A restore from the parts as a snapshot produced them (its files still at their paths)."""
        return RestoredState(parts.data, parts.files)


class KeyedSnapshot(Protocol):
    def materialize(self) -> SnapshotParts:
        """Rule 4: the asynchronous part."""
        ...

    def release(self) -> None:
        """Rule 4: drop what the snapshot held; exactly once, after ``materialize`` or instead of it."""
        ...


class KeyedStateBackend(Protocol):
    @property
    def keys(self) -> KeyContext: ...

    def value_state(self, name: str, default: Any = None) -> ValueState[Any]:
        """Rule 1."""
        ...

    def list_state(self, name: str) -> ListState[Any]:
        """Rule 1."""
        ...

    def map_state(self, name: str) -> MapState[Any, Any]:
        """Rule 1."""
        ...

    def reducing_state(self, name: str, reduce_fn: Callable[[Any, Any], Any]) -> ReducingState[Any]:
        """Rule 1."""
        ...

    def state_keys(self, name: str) -> Iterator[Any]:
        """Every key that has an entry in state ``name`` (any order; for tests and tools, O(entries))."""
        ...

    def restore(self, states: Iterable[RestoredState]) -> None:
        """Rule 2."""
        ...

    def snapshot(self, full: bool = False) -> KeyedSnapshot:
        """Rule 3."""
        ...

    def maybe_fold(self) -> None:
        """Rule 5."""
        ...

    def wants_prefetch(self, size: int) -> bool:
        """Rule 8."""
        ...

    def prefetch(self, keys: list[Any]) -> None:
        """Rule 8."""
        ...

    def close(self) -> None:
        """Rule 6."""
        ...

    def entry_count(self) -> int:
        """Rule 7."""
        ...

    def state_size_bytes(self) -> int:
        """Rule 7."""
        ...


BackendFactory = Callable[[int, range], KeyedStateBackend]
"""Builds the backend of one operator subtask from ``(max_parallelism, key_groups)``.
``HeapKeyedStateBackend`` is one; ``RocksDBBackendFactory(...)`` configures the other."""


def check_header(data: Any, fmt: str, max_parallelism: int, backend: str) -> range:
    """The key-group range of snapshot ``data`` after checking that this backend can restore it.

    Raises ``StateError`` naming the problem: not a keyed snapshot, a snapshot of another backend, or
    another ``max_parallelism``."""
    if not isinstance(data, dict) or "format" not in data:
        raise StateError(f"not a keyed state snapshot: expected a dict with a 'format', got {type(data).__name__}")
    found = data["format"]
    if found != fmt:
        raise StateError(
            f"the {backend} state backend cannot restore a snapshot of format {found!r} (it reads {fmt!r}): "
            "the checkpoint was taken with another state backend; run the job with the backend that took it"
        )
    if data.get("max_parallelism") != max_parallelism:
        raise StateError(
            f"the checkpoint was taken with max_parallelism {data.get('max_parallelism')}, "
            f"the job now has {max_parallelism}: max_parallelism cannot change"
        )
    start, stop = data["key_groups"]
    return range(start, stop)


def check_key_groups(max_parallelism: int, key_groups: range) -> None:
    """Raises ``ValueError`` unless ``key_groups`` is a non-empty contiguous range within
    ``[0, max_parallelism)`` and ``max_parallelism`` is within ``[1, MAX_KEY_GROUPS]``."""
    if not 0 < max_parallelism <= MAX_KEY_GROUPS:
        raise ValueError(f"max_parallelism {max_parallelism} must be between 1 and {MAX_KEY_GROUPS}")
    if key_groups.step != 1 or not 0 <= key_groups.start < key_groups.stop <= max_parallelism:
        raise ValueError(f"key groups {key_groups} must be a non-empty range within [0, {max_parallelism})")


def as_restored(resume_state: Any) -> list[RestoredState]:
    """The resume state of a keyed operator as ``RestoredState``s: it may be one ``RestoredState``,
    the ``SnapshotParts`` as a snapshot produced them (stored as they are: their files are then
    expected at the same paths), or a list or tuple of these (after a change of parallelism)."""
    items = resume_state if isinstance(resume_state, (list, tuple)) else [resume_state]
    restored = []
    for item in items:
        if isinstance(item, RestoredState):
            restored.append(item)
        elif isinstance(item, SnapshotParts):
            restored.append(RestoredState.of(item))
        else:
            raise StateError(
                f"the resume state of a keyed operator must be RestoredState or SnapshotParts, not {type(item).__name__}"
            )
    return restored
