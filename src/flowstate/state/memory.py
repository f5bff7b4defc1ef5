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

Step (3), the asynchronous part (``materialize``), on another thread, pickles the view of the frozen
layers (upper layers shadow lower ones, tombstones hide; the lowest layer itself when it is the only
one) as ``flowstate.state.heap_pickling`` says: one pickler call per state, which lets the task
thread take the interpreter lock frame by frame, or, for a state that call cannot pickle (a cyclic
value, many frozensets), chunks of ``chunk_entries`` entries; the backend remembers such a state and
pickles it in chunks from then on.

Step (4), once every snapshot taken is materialized or released, the task thread folds the layers
(``maybe_fold``, between batches, or at the next ``snapshot`` at the latest): the entries of every
layer above the lowest are applied to it, in order, and it becomes ``top`` again. This costs the
number of entries written since the snapshot, never the whole state. A snapshot taken while an older
one is still being written stacks one more layer; the fold waits until both are done.

**Full snapshots** (``incremental=False``). Data (format ``heap-v2``): ``{"format",
"max_parallelism", "key_groups": [start, stop], "states": {name: {"kind": kind, "chunks": [pickled
dict, ...]}}}``; ``files`` is always empty. A state is one chunk, or none when it is empty, or (Step
3) chunks of ``chunk_entries`` entries, as every state was in snapshots written before; all read
alike. A restore into the same or a wider key-group range loads the chunks as they are; a restore
into another range (a rescale) keeps only the keys whose key group it owns, so no key is hashed
unless a rescale needs it.

**Incremental snapshots** (``incremental=True``, ``flowstate.state.heap_chain``): every table also
keeps the set of keys changed since the last snapshot (rule 4 of ``flowstate.state.heap_tables``:
a flat view adds each key it writes, deletes or hands out a mutable value of; while layers are
frozen, ``top`` holds those keys). Step (1) hands that set to the snapshot and starts a new one;
Step (3) writes the entries of those keys in the frozen view as a delta file (a key without an
entry there is a delete), or the whole view as a base file, and lists the base and deltas of its
chain as shared files (format ``heap-chain-v1``); Step (4) adds the keys of ``top`` to the new set
before it folds. The price on the task thread is one set insertion per write.
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flowstate.state.api import KeyContext
from flowstate.state.backend import (
    RestoredState,
    SnapshotParts,
    StateError,
    StateKind,
    check_header,
)
from flowstate.state.heap_chain import (
    CHAIN_FORMAT,
    ChainPolicy,
    ChainSnapshot,
    ChainStore,
    restore_chain,
    view,
)
from flowstate.state.heap_pickling import fast_chunks, memo_chunks
from flowstate.state.heap_tables import (
    _ABSENT,
    HeapListState,
    HeapMapState,
    HeapReducingState,
    HeapValueState,
    _FreshDefaultValueState,
    _Table,
)
from flowstate.state.keygroups import key_group_of
from flowstate.state.values import immutable

__all__ = [
    "CHAIN_FORMAT", "FORMAT", "FORMATS", "HeapBackendFactory", "HeapKeyedStateBackend", "HeapListState",
    "HeapMapState", "HeapReducingState", "HeapSnapshot", "HeapValueState", "heap_snapshot_entries",
]

FORMAT = "heap-v2"
FORMATS = (FORMAT, CHAIN_FORMAT)
"""The formats of heap snapshots: full, and incremental (a chain of shared files)."""
DEFAULT_CHUNK_ENTRIES = 10_000


class HeapSnapshot:
    """A snapshot of frozen layers (Steps 1 and 3). ``done`` turns true when ``materialize`` has
    returned or ``release`` was called: from then on the backend may fold the layers."""

    __slots__ = ("_chunk_entries", "_in_chunks", "_key_groups", "_layers", "_max_parallelism", "done")

    def __init__(self, max_parallelism: int, key_groups: range,
                 layers: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]], chunk_entries: int,
                 in_chunks: set[str]) -> None:
        self._max_parallelism = max_parallelism
        self._key_groups = key_groups
        self._layers: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]] | None = layers
        self._chunk_entries = chunk_entries
        self._in_chunks = in_chunks
        """The backend's states that one fast-mode pickler call could not pickle (shared: this
        snapshot adds the ones it finds)."""
        self.done = False

    def materialize(self) -> SnapshotParts:
        layers = self._layers
        if layers is None:
            raise StateError("this snapshot was already materialized or released")
        try:
            states = {}
            for name, (kind, frozen) in layers.items():
                try:
                    chunks = self._pickled(name, view(frozen))
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

    def _pickled(self, name: str, entries: dict[Any, Any]) -> list[bytes]:
        if not entries:
            return []
        if name not in self._in_chunks:
            chunks = fast_chunks(entries)
            if chunks is not None:
                return chunks
        chunks = memo_chunks(entries, self._chunk_entries)
        self._in_chunks.add(name)
        return chunks

    def release(self) -> None:
        self._layers = None
        self.done = True


def heap_snapshot_entries(data: Any, name: str, files: Mapping[str, str] | None = None) -> dict[Any, Any]:
    """The entries of state ``name`` in the data of a heap snapshot, read offline (tools, tests);
    ``{}`` when the snapshot has no state of that name. An incremental snapshot's chain is read from
    ``files`` (file key -> local path)."""
    entries: dict[Any, Any] = {}
    if data.get("format") == CHAIN_FORMAT:
        for content in restore_chain(data["chain"], dict(files or {})):
            kind_puts_deleted = content.states.get(name)
            if kind_puts_deleted is not None:
                for chunk in kind_puts_deleted[1]:
                    entries.update(chunk)
                for key in kind_puts_deleted[2]:
                    entries.pop(key, None)
        return entries
    for chunk in data["states"].get(name, {"chunks": ()})["chunks"]:
        entries.update(pickle.loads(chunk))
    return entries


@dataclass(frozen=True, slots=True)
class HeapBackendFactory:
    """Builds heap backends (a ``BackendFactory``): incremental snapshots or full ones, their chain
    files in temporary directories under ``base_dir`` (the system's by default)."""

    incremental: bool = True
    base_dir: str | None = None
    policy: ChainPolicy = ChainPolicy()

    def __call__(self, max_parallelism: int, key_groups: range) -> HeapKeyedStateBackend:
        return HeapKeyedStateBackend(max_parallelism, key_groups, incremental=self.incremental,
                                     base_dir=self.base_dir, policy=self.policy)


class HeapKeyedStateBackend:
    """Keyed state in dicts, with copy-on-write snapshots (see the module docstring): full ones, or
    with ``incremental`` a chain of a base and deltas in files under ``base_dir`` (chosen as
    ``policy`` says). ``chunk_entries`` bounds the chunks entries are pickled in when one call
    cannot pickle them (Step 3) or, in a chain file, marshal cannot encode them."""

    def __init__(self, max_parallelism: int, key_groups: range, *,
                 chunk_entries: int = DEFAULT_CHUNK_ENTRIES, incremental: bool = False,
                 base_dir: str | os.PathLike[str] | None = None, policy: ChainPolicy | None = None) -> None:
        if chunk_entries < 1:
            raise ValueError(f"chunk_entries must be at least 1, not {chunk_entries}")
        self._maxp = max_parallelism
        self._key_groups = key_groups
        self._chunk_entries = chunk_entries
        self._in_chunks: set[str] = set()
        """States that full snapshots pickle in chunks (``flowstate.state.heap_pickling``, rule 4)."""
        self._keys = KeyContext()
        self._tables: dict[str, _Table] = {}
        self._layered = False
        self._pending: list[HeapSnapshot | ChainSnapshot] = []
        self._used = False
        self._store = ChainStore(base_dir, policy or ChainPolicy()) if incremental else None
        self._taken = 0
        self._last: ChainSnapshot | None = None
        """The newest incremental snapshot: the next one extends its chain (if it was written)."""

    @property
    def incremental(self) -> bool:
        return self._store is not None

    @property
    def keys(self) -> KeyContext:
        return self._keys

    # ---- state objects (rule 1) ------------------------------------------------------------------

    def _table(self, name: str, kind: StateKind) -> _Table:
        self._used = True
        table = self._tables.get(name)
        if table is None:
            # A new table is flat even while others are layered: no snapshot holds any of it.
            table = self._tables[name] = _Table(kind, tracked=self._store is not None)
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

    def snapshot(self, full: bool = False) -> HeapSnapshot | ChainSnapshot:
        """Step 1. ``full`` changes nothing: the caller copies the files of an incremental one into
        a savepoint, which is then self-contained."""
        self._used = True
        self.maybe_fold()
        frozen: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]] = {}
        changed: dict[str, set[Any]] = {}
        for name, table in self._tables.items():
            if table.changed is not None:
                keys = changed[name] = table.changed
                if table.below:
                    keys.update(table.top)  # written since the last snapshot, which froze the layers below
                table.changed = set()
            layers = (*table.below, table.top)
            frozen[name] = (table.kind, layers)
            table.below = layers
            table.top = {}
            self._repoint(table)
        self._layered = True
        snapshot: HeapSnapshot | ChainSnapshot
        if self._store is None:
            snapshot = HeapSnapshot(self._maxp, self._key_groups, frozen, self._chunk_entries,
                                    self._in_chunks)
        else:
            self._taken += 1
            header = {"format": CHAIN_FORMAT, "max_parallelism": self._maxp,
                      "key_groups": [self._key_groups.start, self._key_groups.stop],
                      "states": {name: kind.value for name, (kind, _) in frozen.items()}}
            snapshot = self._last = ChainSnapshot(self._store, self._taken, self._last, header, frozen, changed,
                                                  self._chunk_entries)
        self._pending.append(snapshot)
        return snapshot

    def wants_prefetch(self, size: int) -> bool:
        """Rule 8 of ``flowstate.state.backend``: never, every entry is in memory."""
        return False

    def prefetch(self, keys: list[Any]) -> None:
        """Rule 8 of ``flowstate.state.backend``: nothing to read ahead."""

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
            if table.changed is not None:
                table.changed.update(table.top)  # written since the last snapshot
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
        for state in table.views:
            state._repoint(table)

    # ---- restore (rule 2) ------------------------------------------------------------------------

    def restore(self, states: Iterable[RestoredState]) -> None:
        if self._used:
            raise StateError("restore() must come first: state was already created or snapshotted in this backend")
        self._used = True
        own = self._key_groups
        maxp = self._maxp
        for state in states:
            data = state.data
            chain = isinstance(data, dict) and data.get("format") == CHAIN_FORMAT
            theirs = check_header(data, CHAIN_FORMAT if chain else FORMAT, maxp, "heap")
            inside = own.start <= theirs.start and theirs.stop <= own.stop
            if not inside and (theirs.stop <= own.start or own.stop <= theirs.start):
                continue  # no key group in common
            if not chain:
                for name, entry in data["states"].items():
                    table = self._table(name, StateKind(entry["kind"]))
                    for chunk in entry["chunks"]:
                        self._load(table.top, pickle.loads(chunk), inside)
                continue
            for name, kind in data["states"].items():
                self._table(name, StateKind(kind))
            for content in restore_chain(data["chain"], dict(state.files)):
                for name, (kind, puts, deleted) in content.states.items():
                    top = self._table(name, kind).top
                    for entries in puts:
                        self._load(top, entries, inside)
                    for key in deleted:
                        top.pop(key, None)  # a key of another key group is in no other snapshot

    def _load(self, top: dict[Any, Any], entries: dict[Any, Any], inside: bool) -> None:
        if inside:
            top.update(entries)
        else:
            own, maxp = self._key_groups, self._maxp
            top.update((k, v) for k, v in entries.items() if key_group_of(k, maxp) in own)

    # ---- resources and metrics (rules 6 and 7) ---------------------------------------------------

    def close(self) -> None:
        self._tables.clear()
        self._pending.clear()
        self._last = None
        self._layered = False
        if self._store is not None:
            self._store.close()

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
