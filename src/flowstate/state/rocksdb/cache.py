"""The object cache of one state of the RocksDB backend, its frozen layers, and how they reach RocksDB.

Rules (the task thread is the only one that changes ``objects``, ``index`` and ``cleared``; the
asynchronous part of a snapshot only reads a frozen layer and writes it to RocksDB):

1. **The top layer.** ``objects`` maps a row to the object the task holds for it (or ``DELETED``, or ``ABSENT``):
   every row read or written since it was last flushed. A row read is decoded once and the same
   object is returned until then, so a change made in place to it is stored (rule 2 of
   ``flowstate.state.values``). For list and map states ``index`` lists the cached rows of each key
   prefix, and ``cleared`` the key prefixes whose rows were all deleted (a list or map ``clear``)
   and not yet deleted in RocksDB: a read of such a key never looks below the top layer.
2. **Freeze** (the synchronous part of a snapshot, ``freeze``): the top layer becomes a frozen
   ``Layer`` and an empty one takes its place. O(1): nothing is encoded or copied.
3. **Copy on read.** No object of a frozen layer is ever handed out or changed: a read that finds a
   row in a frozen layer (the newest first) puts ``private(object)`` into the top layer and returns
   that copy (an immutable value is its own copy). So a snapshot is the state at its barrier,
   whatever the task does with what later reads return (rule 1).
4. **No write while a cut is pending.** While ``frozen`` is not empty the task thread does not write
   to RocksDB at all: a flush of the top layer waits (the cache may grow past its limit meanwhile),
   a clear is recorded in ``cleared``, and a scan merges RocksDB with the frozen layers and the top
   layer in memory. So the RocksDB checkpoint that the asynchronous part takes after writing the
   frozen layers holds exactly the state at the barrier.
5. **The cut** (``write_layer``, asynchronous part, any thread): encodes a frozen layer and writes it
   (range deletes of its cleared keys first, then its rows) in batches of ``CUT_BATCH_ROWS`` rows,
   so that no call holds the interpreter lock for long. Only after the RocksDB checkpoint was taken
   is the layer taken out of ``frozen`` (by the backend, under its lock): until then reads still
   find its rows there, so it does not matter which of its rows RocksDB already has.
6. **Bounded between batches** (``flush``, rule 4 permitting): once the top layer holds more than
   ``cache_limit`` rows it is encoded and written as one batch, and emptied. ``cache_limit`` is
   ``limit`` rows, or fewer when the rows of the last flush or cut encoded to more than
   ``byte_limit`` bytes in all (re-estimated from their mean size each time), so that large values
   do not pile up in memory.
7. **Absent rows** (value and reducing state): a read that finds no row anywhere below the top
   layer caches ``ABSENT`` for it, so that the row is not looked for again. ``ABSENT`` claims that
   nothing below the top layer has the row; it stays true, since only the top layer itself is ever
   written below it (a flush writes nothing for an ``ABSENT`` row, a cut moves a frozen layer's
   rows into RocksDB without changing what the layers show). It reads as no value, like
   ``DELETED``, but is never written.
8. **Prefetch** (``prefetch``, value and reducing state, before a batch): the rows of the batch's
   keys that are not in the top layer are looked for as a read would (rule 3: the frozen layers,
   newest first, a copy of what is found there), and the rest read from RocksDB with one multi-get
   and cached (``ABSENT`` for those it does not have). So the batch's reads hit the top
   layer. Reading RocksDB while frozen layers wait for their cut is safe for a row none of them
   holds: a cut writes only its layer's rows, and a layer leaves ``frozen`` only once RocksDB has
   its rows. Whether a prefetch pays is ``PrefetchPolicy``'s to decide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rocksdict import Rdict, WriteBatch, WriteOptions

from flowstate.state.backend import StateKind
from flowstate.state.codec import ValueCodec
from flowstate.state.rocksdb.layout import successor
from flowstate.state.values import private

CF_PREFIX = "state:"
CUT_BATCH_ROWS = 4096


class Marker:
    """The class of the markers below, so that a read tells a stored object from any of them with
    one test."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


MISS: Any = Marker("MISS")
"""Not in this layer (never stored)."""
DELETED: Any = Marker("DELETED")
"""The row was deleted: written as a delete."""
ABSENT: Any = Marker("ABSENT")
"""Rule 7: no row below the top layer either; never written."""


class PrefetchPolicy:
    """Whether a state's rows are prefetched before the next batch (rule 8), from the rows that the
    last batch read from RocksDB (``misses``: one at a time, or by its prefetch).

    Prefetching goes on while at least ``1 / MISS_SHARE`` of a batch's records read a row from
    RocksDB: below that, the rows stay cached and a prefetch would only cost a pass over the keys.
    Every ``PROBE_EVERY``-th batch is a **probe**, without a prefetch, so that a state that is no
    longer read (whose prefetch still reads rows nobody asks for) is found out. Pure: it sees
    counts, nothing else."""

    __slots__ = ("batches", "last_size", "on")

    PROBE_EVERY = 16
    MISS_SHARE = 8

    def __init__(self) -> None:
        self.on = False
        self.batches = 0
        self.last_size = 0

    def before_batch(self, size: int, misses: int) -> bool:
        """Whether to prefetch for a batch of ``size`` records, given the ``misses`` of the last one."""
        self.on = misses * self.MISS_SHARE >= self.last_size > 0
        self.batches += 1
        self.last_size = size
        return self.on and self.batches % self.PROBE_EVERY != 0


def write_options() -> WriteOptions:
    """No write-ahead log: checkpoints make the state durable, and a restart restores one."""
    options = WriteOptions()
    options.disable_wal = True  # type: ignore[method-assign,assignment]  # a property, typed as a method
    return options


def rows_from(cf: Rdict, start: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The rows of a raw-mode column family from ``start`` on, in order (bytes, typed as such)."""
    return cf.items(from_key=start)  # type: ignore[return-value]


def end_of(prefix: bytes) -> bytes:
    """The end of the range of rows that start with ``prefix`` (a key prefix starts with a key group
    below 0x8000, so it has a successor)."""
    end = successor(prefix)
    assert end is not None
    return end


class Layer:
    """A frozen top layer (rule 2): never changed again; written to RocksDB by a cut."""

    __slots__ = ("cleared", "index", "objects")

    def __init__(self, objects: dict[bytes, Any], index: dict[bytes, list[bytes]], cleared: set[bytes]) -> None:
        self.objects = objects
        self.index = index
        self.cleared = cleared


class Column:
    """One state: its column family, its top layer and its frozen layers (see the module docstring)."""

    __slots__ = ("byte_limit", "cache_limit", "cf", "cleared", "db", "decode", "encode", "frozen", "handle", "index",
                 "kind", "limit", "misses", "objects", "policy")

    def __init__(self, db: Rdict, name: str, kind: StateKind, limit: int, byte_limit: int,
                 codec: ValueCodec) -> None:
        self.db = db
        self.cf = db.get_column_family(CF_PREFIX + name)
        self.cf.set_write_options(write_options())
        self.handle = db.get_column_family_handle(CF_PREFIX + name)
        self.kind = kind
        self.limit = limit
        self.byte_limit = byte_limit
        self.cache_limit = limit
        self.objects: dict[bytes, Any] = {}
        self.index: dict[bytes, list[bytes]] = {}
        self.cleared: set[bytes] = set()
        self.frozen: tuple[Layer, ...] = ()
        """The frozen layers not cut yet, oldest first (replaced, never changed, under the backend's lock)."""
        self.encode = codec.encode
        self.decode = codec.decode
        self.misses = 0
        """Rows of value or reducing state read from RocksDB since the last batch (``PrefetchPolicy``)."""
        self.policy = PrefetchPolicy()

    # ---- reads (rules 1 and 3) -------------------------------------------------------------------

    def load(self, row: bytes, prefix: bytes | None = None) -> Any:
        """The object of ``row`` (cached from now on), or ``MISS`` when it has none. ``prefix`` is the
        key prefix of a list or map row (``None`` for value and reducing state, whose rows found
        nowhere are cached as ``ABSENT``, rule 7)."""
        found = self.objects.get(row, MISS)
        if found is MISS:
            if self.frozen or self.cleared:
                return self._find_below(row, prefix)
            raw = self.cf.get(row)
            if prefix is None:
                self.misses += 1
                if raw is None:
                    self.objects[row] = ABSENT
                    return MISS
                found = self.objects[row] = self.decode(raw)
                return found
            if raw is None:
                return MISS
            found = self.decode(raw)
            self.store_in(prefix, row, found)
            return found
        return MISS if found.__class__ is Marker else found

    def _find_below(self, row: bytes, prefix: bytes | None) -> Any:
        """Rule 3: the object of ``row`` below the top layer, copied into it; ``MISS`` if none."""
        if prefix is not None and prefix in self.cleared:
            return MISS
        for layer in reversed(self.frozen):
            found = layer.objects.get(row, MISS)
            if found is not MISS:
                if found.__class__ is Marker:  # DELETED or ABSENT
                    if prefix is None:
                        self.objects[row] = ABSENT
                    return MISS
                value = private(found)
                break
            if prefix is not None and prefix in layer.cleared:
                return MISS
        else:
            raw = self.cf.get(row)
            if prefix is None:
                self.misses += 1
            if raw is None:
                if prefix is None:
                    self.objects[row] = ABSENT
                return MISS
            value = self.decode(raw)
        if prefix is None:
            self.objects[row] = value
        else:
            self.store_in(prefix, row, value)
        return value

    def prefetch(self, rows: list[bytes]) -> None:
        """Rule 8 (value and reducing state): every row of ``rows`` is in the top layer after it."""
        objects = self.objects
        wanted = [row for row in dict.fromkeys(rows) if row not in objects]
        if not wanted:
            return
        layers = self.frozen  # read once: a layer leaves it only after its rows reached RocksDB
        if layers:
            below = []
            for row in wanted:
                for layer in reversed(layers):
                    found = layer.objects.get(row, MISS)
                    if found is not MISS:
                        objects[row] = ABSENT if found.__class__ is Marker else private(found)
                        break
                else:
                    below.append(row)
            wanted = below
            if not wanted:
                return
        self.misses += len(wanted)
        decode = self.decode
        raws: list[bytes | None] = self.cf.get(wanted)  # type: ignore[arg-type,assignment]  # multi-get
        for row, raw in zip(wanted, raws, strict=True):
            objects[row] = ABSENT if raw is None else decode(raw)

    def exists(self, row: bytes, prefix: bytes) -> bool:
        """Whether ``row`` (of a map) has a value, without decoding it."""
        found = self.objects.get(row, MISS)
        if found is not MISS:
            return found.__class__ is not Marker
        if prefix in self.cleared:
            return False
        for layer in reversed(self.frozen):
            found = layer.objects.get(row, MISS)
            if found is not MISS:
                return found.__class__ is not Marker
            if prefix in layer.cleared:
                return False
        return self.cf.get(row) is not None

    def scan_objects(self, prefix: bytes) -> list[tuple[bytes, Any]]:
        """The rows of one key and their objects (cached from now on), in order."""
        if self.frozen:
            return self._scan_layered(prefix)
        self.write_prefix(prefix)
        objects = self.objects
        decode = self.decode
        out = []
        for row, raw in rows_from(self.cf, prefix):
            if not row.startswith(prefix):
                break
            value = objects.get(row, MISS)
            if value is MISS:
                value = decode(raw)
                self.store_in(prefix, row, value)
            out.append((row, value))
        return out

    def _scan_layered(self, prefix: bytes) -> list[tuple[bytes, Any]]:
        """Rule 4: RocksDB, then the frozen layers, then the top layer, merged in memory (the higher
        wins; a cleared key hides everything below the layer that cleared it)."""
        layers = self.frozen
        merged: dict[bytes, tuple[int, Any]] = {}  # row -> (0 RocksDB, 1 frozen, 2 top; its value)
        if prefix not in self.cleared:
            first = 0
            for i in range(len(layers) - 1, -1, -1):
                if prefix in layers[i].cleared:
                    first = i
                    break
            else:
                for row, raw in rows_from(self.cf, prefix):
                    if not row.startswith(prefix):
                        break
                    merged[row] = (0, raw)
            for layer in layers[first:]:
                objects = layer.objects
                for row in layer.index.get(prefix, ()):
                    merged[row] = (1, objects[row])
        objects = self.objects
        for row in self.index.get(prefix, ()):
            merged[row] = (2, objects[row])
        out = []
        for row in sorted(merged):
            source, value = merged[row]
            if value is DELETED:
                continue
            if source != 2:
                value = self.decode(value) if source == 0 else private(value)
                self.store_in(prefix, row, value)
            out.append((row, value))
        return out

    # ---- writes in the top layer (rules 1 and 4) ---------------------------------------------------

    def store_in(self, prefix: bytes, row: bytes, value: Any) -> None:
        """``value`` (or ``DELETED``) becomes the object of ``row``, a row of a list or map state,
        under the key prefix it starts with. (Value and reducing state set ``objects[row]``.)"""
        objects = self.objects
        if row not in objects:
            index = self.index.get(prefix)
            if index is None:
                self.index[prefix] = [row]
            else:
                index.append(row)
        objects[row] = value

    def delete_prefix(self, prefix: bytes) -> None:
        """Every row of one key is deleted: dropped from the top layer, and recorded in ``cleared``
        (deleted in RocksDB by the next write of that key)."""
        rows = self.index.pop(prefix, None)
        if rows:
            objects = self.objects
            for row in rows:
                objects.pop(row, None)
        self.cleared.add(prefix)

    # ---- to RocksDB (rules 4 to 6) -----------------------------------------------------------------

    def write_prefix(self, prefix: bytes) -> None:
        """Writes the top layer's rows of one key (and its clear) to RocksDB, before a scan of it;
        the objects stay cached. Only with no frozen layer (rule 4)."""
        rows = self.index.get(prefix)
        if not rows and prefix not in self.cleared:
            return
        batch = WriteBatch(raw_mode=True)
        handle = self.handle
        if prefix in self.cleared:
            self.cleared.discard(prefix)
            batch.delete_range(prefix, end_of(prefix), handle)
        if rows:
            objects = self.objects
            encode = self.encode
            for row in rows:
                value = objects[row]
                if value is DELETED:
                    batch.delete(row, handle)
                else:
                    batch.put(row, encode(value), handle)
        self.db.write(batch)

    def flush(self, evict: bool = True) -> None:
        """Encodes the top layer and writes it to RocksDB as one batch; ``evict`` empties it (a cache
        over its limit), else the objects stay the rows' objects. Does nothing while a frozen layer
        waits for its cut (rule 4)."""
        if self.frozen:
            return
        objects = self.objects
        if not objects and not self.cleared:
            return
        size = self._write(Layer(objects, self.index, self.cleared), self.encode, len(objects) + 1)
        self.cleared = set()
        if evict and objects:
            self._measure(size, len(objects))
            self.objects = {}
            self.index = {}

    def freeze(self) -> Layer:
        """Rule 2."""
        layer = Layer(self.objects, self.index, self.cleared)
        self.objects = {}
        self.index = {}
        self.cleared = set()
        return layer

    def write_layer(self, layer: Layer, encode: Any) -> None:
        """Rule 5 (``encode``: a codec of the cut's own, the task thread's may be busy)."""
        if layer.objects:
            self._measure(self._write(layer, encode, CUT_BATCH_ROWS), len(layer.objects))
        elif layer.cleared:
            self._write(layer, encode, CUT_BATCH_ROWS)

    def _write(self, layer: Layer, encode: Any, batch_rows: int) -> int:
        """Writes ``layer`` (its range deletes first) in batches of ``batch_rows``; the bytes encoded."""
        handle = self.handle
        write = self.db.write
        batch = WriteBatch(raw_mode=True)
        for prefix in layer.cleared:
            batch.delete_range(prefix, end_of(prefix), handle)
        rows = len(layer.cleared)
        size = 0
        for row, value in layer.objects.items():
            if value.__class__ is Marker:
                if value is ABSENT:
                    continue  # rule 7
                batch.delete(row, handle)
            else:
                encoded = encode(value)
                size += len(encoded)
                batch.put(row, encoded, handle)
            rows += 1
            if rows >= batch_rows:
                write(batch)
                batch = WriteBatch(raw_mode=True)
                rows = 0
        if rows:
            write(batch)
        return size

    def _measure(self, size: int, rows: int) -> None:
        mean = size / rows
        self.cache_limit = min(self.limit, max(16, int(self.byte_limit / mean)) if mean else self.limit)

    def pending_rows(self) -> int:
        """The rows cached in the top layer and the frozen layers (for metrics)."""
        return len(self.objects) + sum(len(layer.objects) for layer in self.frozen)
