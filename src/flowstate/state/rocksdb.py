"""Embedded RocksDB keyed state backend (through ``rocksdict``), with incremental snapshots.

**Layout.** One database per operator subtask, in a working directory of its own; one column family
per state (``"state:" + name``). Every row key starts with the **key prefix** of its key: the key
group (two bytes, big-endian), the length of the key's canonical encoding (a varint) and that
encoding (``flowstate.state.codec``). The prefix is prefix-free, so the rows of one key are exactly
the rows that start with its prefix, and the rows of a key-group range are one contiguous range:

- value and reducing state: the row key is the prefix;
- list state: prefix + an 8-byte big-endian sequence number, one row per element in the order they
  were added (``add`` writes one row, never reads the list);
- map state: prefix + the canonical encoding of the map key, one row per entry.

Row values are ``codec.ValueCodec`` encodings (a tag byte, then msgpack or pickle). Writes skip the
write-ahead log: durability comes from checkpoints. SST files are compressed with zstd when the
bundled RocksDB has it (it does in rocksdict 0.3), else lz4, else not at all (``compression`` says
which).

**Object cache and write buffer.** Rows read or written (value, reducing, list ``add``, map
``get``/``put``/``remove``, the items of scans) are kept as **objects** in a dict per state (the
object cache, ``_Column``) until it is flushed: in the synchronous part of a snapshot, or between
batches once it holds more than ``write_batch_entries`` rows (fewer when values are large: about
``write_batch_bytes`` of them). A flush encodes every object into the
write buffer (the encoded row, or ``None`` for a delete), which reaches RocksDB as one
``WriteBatch``; it is also written before any scan or range delete of that state. So a change made in
place to a value read from state is stored, as on the heap (rule 2 of ``flowstate.state.values``),
a snapshot holds the bytes encoded at its barrier (rule 1), and a key updated by many records in a
row costs dict operations and one encoding per flush. Key prefixes of recent keys are cached too.

**Snapshots.** Step (1), the synchronous part: write the buffers, then create a RocksDB checkpoint
of the database in ``snapshots/<n>`` of the working directory. A checkpoint flushes the memtables
and hard-links the SST files (immutable) and copies the small files. Its cost is the size of the
memtables and the number of files, not the size of the state. Step (2), the asynchronous part
(``materialize``) lists that directory: every SST becomes a shared file keyed
``"<uuid of the database instance that wrote it>-<file name>"`` (RocksDB never reuses a file number
within one instance, so a key always names the same bytes, and an SST that outlives several
checkpoints keeps its key: the caller uploads it once); the other small files (manifest,
``CURRENT``; not the options files, which RocksDB writes anew when it opens a database) are inline in
``data``. Step (3), ``release`` deletes the directory.

``data`` (format ``rocksdb-v1``): ``{"format", "max_parallelism", "key_groups": [start, stop],
"states": {name: kind}, "sst": {file name: file key}, "inline": {file name: bytes},
"next_sequence": int, "full": bool}``.

**Restore.** Of the snapshots given, the one that shares the most key groups with this subtask is the
base: its SSTs are hard-linked (or copied) into the new database directory under their own names,
its small files written, and the database opened as it is; when it holds key groups this subtask
does not own, they are deleted with two range deletes (cheap: RocksDB drops them in later
compactions). Every other snapshot that shares key groups is opened read-only in a scratch directory
and only the rows of the shared key-group range are read (range scans) and written. So a restore at
the same parallelism opens the files in place, and a rescale reads only its ranges.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    Checkpoint,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

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
    check_key_groups,
)
from flowstate.state.codec import (
    ValueCodec,
    decode_key,
    encode_key,
    read_varint,
    varint,
)
from flowstate.state.keygroups import key_group_of
from flowstate.state.values import private

FORMAT = "rocksdb-v1"
CF_PREFIX = "state:"
DEFAULT_WRITE_BUFFER_SIZE = 32 << 20
DEFAULT_WRITE_BATCH_ENTRIES = 16_384
DEFAULT_WRITE_BATCH_BYTES = 8 << 20
COMPRESSIONS = ("zstd", "lz4", "none")
_COMPRESSION_TYPES: dict[str, Callable[[], DBCompressionType]] = {
    "zstd": DBCompressionType.zstd, "lz4": DBCompressionType.lz4, "none": DBCompressionType.none,
}
_pack_sequence = struct.Struct(">Q").pack
_RESTORE_BATCH_ROWS = 10_000
_PREFIX_CACHE_ENTRIES = 1 << 16
_MISS = object()
_DELETED = object()


def successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix`` (``None``:
    there is none, ``prefix`` is all 0xff)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def key_prefix(key: Any, max_parallelism: int) -> bytes:
    """The prefix of every row of ``key``: key group, length, canonical encoding."""
    encoded = encode_key(key)
    return key_group_of(key, max_parallelism).to_bytes(2, "big") + varint(len(encoded)) + encoded


def split_prefix(row: bytes) -> tuple[bytes, Any]:
    """The key prefix a row key starts with, and the key it encodes."""
    size, pos = read_varint(row, 2)
    return row[: pos + size], decode_key(row[pos : pos + size])


class _RocksKeyContext(KeyContext):
    """The current key, and its key prefix, computed once per record (not once per state access)
    and remembered for keys seen recently (a bounded cache of ``str``, ``bytes`` and ``int`` keys:
    the types whose equal values always have equal prefixes)."""

    __slots__ = ("_cache", "_maxp", "_prefix", "_prefix_of")

    def __init__(self, max_parallelism: int) -> None:
        super().__init__()
        self._maxp = max_parallelism
        self._prefix_of: Any = _MISS
        self._prefix = b""
        self._cache: dict[Any, bytes] = {}

    def prefix(self) -> bytes:
        key = self.current_key
        if key is self._prefix_of:
            return self._prefix
        kind = type(key)
        if kind is str or kind is bytes or kind is int:
            cache = self._cache
            prefix = cache.get(key)
            if prefix is None:
                if len(cache) >= _PREFIX_CACHE_ENTRIES:
                    cache.clear()
                prefix = cache[key] = key_prefix(key, self._maxp)
        else:
            prefix = key_prefix(key, self._maxp)
        self._prefix_of = key
        self._prefix = prefix
        return prefix


class _Column:
    """One state: its column family, the **object cache** of the rows read or written since it was
    last flushed, and the write buffer of encoded rows (``None``: delete).

    The object cache (``objects``: row -> the object the task holds, or ``_DELETED``) is what makes a
    change made in place to a value read from state stored (rule 2 of ``flowstate.state.values``):
    a row read is decoded once and the same object is returned until the cache is flushed; ``flush``
    encodes every object into the write buffer then. It is flushed in the synchronous part of a
    snapshot (so the snapshot is isolated from later changes, rule 1), and between batches once it
    holds more than ``limit`` rows. For list and map states, ``index`` lists the cached rows of each
    key prefix, so that a scan of one key first encodes only that key's objects.

    ``cache_limit`` bounds the cache: ``limit`` rows, or fewer when the rows of the last eviction
    encoded to more than ``byte_limit`` bytes in all (it is re-estimated from their mean size at every
    eviction), so that large values do not pile up in memory. The write buffer holds what a flush
    encoded and is written to RocksDB as one batch at the end of that flush."""

    __slots__ = ("byte_limit", "cache_limit", "cf", "db", "decode", "encode", "handle", "index", "kind", "limit",
                 "objects", "pending")

    def __init__(self, db: Rdict, name: str, kind: StateKind, limit: int, byte_limit: int,
                 codec: ValueCodec) -> None:
        self.db = db
        self.cf = db.get_column_family(CF_PREFIX + name)
        self.cf.set_write_options(_write_options())
        self.handle = db.get_column_family_handle(CF_PREFIX + name)
        self.kind = kind
        self.limit = limit
        self.byte_limit = byte_limit
        self.cache_limit = limit
        self.pending: dict[bytes, bytes | None] = {}
        self.objects: dict[bytes, Any] = {}
        self.index: dict[bytes, list[bytes]] = {}
        self.encode = codec.encode
        self.decode = codec.decode

    def load(self, row: bytes) -> Any:
        """The object of ``row`` (cached from now on), or ``_MISS`` when it has none."""
        found = self.objects.get(row, _MISS)
        if found is _MISS:
            raw = self.get(row)
            if raw is None:
                return _MISS
            found = self.objects[row] = self.decode(raw)
            return found
        return _MISS if found is _DELETED else found

    def store_in(self, prefix: bytes, row: bytes, value: Any) -> None:
        """``value`` (or ``_DELETED``) becomes the object of ``row``, a row of a list or map state,
        under the key prefix it starts with. (Value and reducing state set ``objects[row]``.)"""
        objects = self.objects
        if row not in objects:
            index = self.index.get(prefix)
            if index is None:
                self.index[prefix] = [row]
            else:
                index.append(row)
        objects[row] = value

    def flush(self, evict: bool = True) -> None:
        """Encodes every cached object into the write buffer and writes it; ``evict`` empties the
        cache (a snapshot, or a cache over its limit), else the objects stay the rows' objects."""
        objects = self.objects
        if objects:
            pending = self.pending
            encode = self.encode
            size = 0
            for row, value in objects.items():
                if value is _DELETED:
                    pending[row] = None
                else:
                    pending[row] = encoded = encode(value)
                    size += len(encoded)
            if evict:
                mean = size / len(objects)
                self.cache_limit = min(self.limit, max(16, int(self.byte_limit / mean)) if mean else self.limit)
                objects.clear()
                self.index.clear()
        self.write()

    def flush_prefix(self, prefix: bytes) -> None:
        """Encodes the cached objects of one key into the write buffer and writes it (before a scan
        of that key); the objects stay cached."""
        rows = self.index.get(prefix)
        if rows:
            objects = self.objects
            pending = self.pending
            encode = self.encode
            for row in rows:
                value = objects[row]
                pending[row] = None if value is _DELETED else encode(value)
        self.write()

    def forget_prefix(self, prefix: bytes) -> None:
        """Drops the cached objects of one key (its rows are about to be deleted)."""
        rows = self.index.pop(prefix, None)
        if rows:
            objects = self.objects
            for row in rows:
                objects.pop(row, None)

    def scan_objects(self, prefix: bytes) -> Iterator[tuple[bytes, Any]]:
        """The rows of one key and their objects (cached from now on), in order."""
        self.flush_prefix(prefix)
        objects = self.objects
        decode = self.decode
        for row, raw in self.cf.items(from_key=prefix):
            if not row.startswith(prefix):
                return
            value = objects.get(row, _MISS)
            if value is _MISS:
                value = decode(raw)
                self.store_in(prefix, row, value)
            yield row, value

    def get(self, row: bytes) -> bytes | None:
        found = self.pending.get(row, _MISS)
        return self.cf.get(row) if found is _MISS else found  # type: ignore[return-value]

    def write(self) -> None:
        """Writes the buffer to RocksDB as one batch."""
        if not self.pending:
            return
        batch = WriteBatch(raw_mode=True)
        handle = self.handle
        for row, value in self.pending.items():
            if value is None:
                batch.delete(row, handle)
            else:
                batch.put(row, value, handle)
        self.db.write(batch)
        self.pending.clear()

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The rows that start with ``prefix``, in order (after writing the buffer).

        The end of the range is checked here rather than with ``ReadOptions`` bounds: rocksdict
        does not keep a bound alive for as long as the iterator that uses it."""
        self.write()
        for row, value in self.cf.items(from_key=prefix):
            if not row.startswith(prefix):
                return
            yield row, value

    def delete_prefix(self, prefix: bytes) -> None:
        self.forget_prefix(prefix)
        self.write()
        self.cf.delete_range(prefix, successor(prefix))


class RocksValueState(ValueState[Any]):
    __slots__ = ("_col", "_default", "_keys")

    def __init__(self, col: _Column, keys: _RocksKeyContext, codec: ValueCodec, default: Any) -> None:
        self._col = col
        self._keys = keys
        self._default = default

    def value(self) -> Any:
        found = self._col.load(self._keys.prefix())
        return private(self._default) if found is _MISS else found

    def update(self, value: Any) -> None:
        self._col.objects[self._keys.prefix()] = _DELETED if value is None else value

    def clear(self) -> None:
        self._col.objects[self._keys.prefix()] = _DELETED


class RocksReducingState(ReducingState[Any]):
    __slots__ = ("_col", "_fn", "_keys")

    def __init__(self, col: _Column, keys: _RocksKeyContext, codec: ValueCodec,
                 reduce_fn: Callable[[Any, Any], Any]) -> None:
        self._col = col
        self._keys = keys
        self._fn = reduce_fn

    def get(self) -> Any:
        found = self._col.load(self._keys.prefix())
        return None if found is _MISS else found

    def add(self, value: Any) -> None:
        self.add_and_get(value)

    def add_and_get(self, value: Any) -> Any:
        row = self._keys.prefix()
        old = self._col.load(row)
        new = value if old is _MISS else self._fn(old, value)
        self._col.objects[row] = new
        return new

    def clear(self) -> None:
        self._col.objects[self._keys.prefix()] = _DELETED


class _Sequence:
    """The next sequence number of a list element, for every list state of one backend."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = 0


class RocksListState(ListState[Any]):
    __slots__ = ("_codec", "_col", "_keys", "_sequence")

    def __init__(self, col: _Column, keys: _RocksKeyContext, codec: ValueCodec, sequence: _Sequence) -> None:
        self._col = col
        self._keys = keys
        self._codec = codec
        self._sequence = sequence

    def get(self) -> list[Any]:
        return [value for _, value in self._col.scan_objects(self._keys.prefix())]

    def add(self, value: Any) -> None:
        sequence = self._sequence
        number = sequence.next
        sequence.next = number + 1
        prefix = self._keys.prefix()
        self._col.store_in(prefix, prefix + _pack_sequence(number), value)

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
    __slots__ = ("_codec", "_col", "_keys")

    def __init__(self, col: _Column, keys: _RocksKeyContext, codec: ValueCodec) -> None:
        self._col = col
        self._keys = keys
        self._codec = codec

    def get(self, key: Any, default: Any = None) -> Any:
        prefix = self._keys.prefix()
        row = prefix + encode_key(key)
        col = self._col
        found = col.objects.get(row, _MISS)
        if found is _MISS:
            raw = col.get(row)
            if raw is None:
                return default
            found = col.decode(raw)
            col.store_in(prefix, row, found)
        return default if found is _DELETED else found

    def put(self, key: Any, value: Any) -> None:
        prefix = self._keys.prefix()
        self._col.store_in(prefix, prefix + encode_key(key), value)

    def put_all(self, entries: dict[Any, Any]) -> None:
        prefix = self._keys.prefix()
        rows = [(prefix + encode_key(key), value) for key, value in entries.items()]  # every key checked first
        for row, value in rows:
            self._col.store_in(prefix, row, value)

    def contains(self, key: Any) -> bool:
        row = self._keys.prefix() + encode_key(key)
        found = self._col.objects.get(row, _MISS)
        return self._col.get(row) is not None if found is _MISS else found is not _DELETED

    def remove(self, key: Any) -> None:
        prefix = self._keys.prefix()
        self._col.store_in(prefix, prefix + encode_key(key), _DELETED)

    def keys(self) -> Iterator[Any]:
        prefix = self._keys.prefix()
        start = len(prefix)
        self._col.flush_prefix(prefix)
        return iter([decode_key(row[start:]) for row, _ in self._col.scan(prefix)])

    def values(self) -> Iterator[Any]:
        return iter([value for _, value in self._col.scan_objects(self._keys.prefix())])

    def items(self) -> Iterator[tuple[Any, Any]]:
        prefix = self._keys.prefix()
        start = len(prefix)
        return iter([(decode_key(row[start:]), value) for row, value in self._col.scan_objects(prefix)])

    def is_empty(self) -> bool:
        prefix = self._keys.prefix()
        self._col.flush_prefix(prefix)
        return next(iter(self._col.scan(prefix)), None) is None

    def clear(self) -> None:
        self._col.delete_prefix(self._keys.prefix())


class RocksDBSnapshot:
    """A RocksDB checkpoint directory taken by the synchronous part (Step 1)."""

    __slots__ = ("_backend", "_file_keys", "_header", "_instance", "_path", "_state")

    def __init__(self, backend: RocksDBKeyedStateBackend, path: Path, header: dict[str, Any],
                 instance: str, file_keys: dict[str, str]) -> None:
        self._backend = backend
        self._path = path
        self._header = header
        self._instance = instance
        self._file_keys = file_keys
        self._state = "taken"

    @property
    def path(self) -> Path:
        """The checkpoint directory (until ``release``)."""
        return self._path

    def materialize(self) -> SnapshotParts:
        """Step 2: lists the checkpoint directory."""
        if self._state != "taken":
            raise StateError(f"this snapshot was already {self._state}")
        self._state = "materialized"
        sst: dict[str, str] = {}
        inline: dict[str, bytes] = {}
        files: dict[str, str] = {}
        for entry in sorted(os.scandir(self._path), key=lambda e: e.name):
            if entry.name.endswith(".sst"):
                key = self._file_keys.get(entry.name) or f"{self._instance}-{entry.name}"
                sst[entry.name] = key
                files[key] = entry.path
            elif not entry.name.startswith("OPTIONS-"):  # RocksDB writes them anew on open
                inline[entry.name] = Path(entry.path).read_bytes()
        return SnapshotParts({**self._header, "sst": sst, "inline": inline}, files)

    def release(self) -> None:
        """Step 3: deletes the checkpoint directory (its hard links)."""
        if self._state == "released":
            return
        self._state = "released"
        self._backend._release(self._path)


class RocksDBKeyedStateBackend:
    """Keyed state in an embedded RocksDB database (see the module docstring).

    ``directory`` is the working directory (it must not exist or be empty; it is created); without
    it, a new temporary directory under ``base_dir`` (the system's temporary directory by default).
    Either way the backend owns it and deletes it on ``close``. ``compression`` is one of
    ``COMPRESSIONS`` or ``None`` for the best one available."""

    def __init__(self, max_parallelism: int, key_groups: range, directory: str | os.PathLike[str] | None = None,
                 *, base_dir: str | os.PathLike[str] | None = None, compression: str | None = None,
                 write_buffer_size: int = DEFAULT_WRITE_BUFFER_SIZE,
                 write_batch_entries: int = DEFAULT_WRITE_BATCH_ENTRIES,
                 write_batch_bytes: int = DEFAULT_WRITE_BATCH_BYTES) -> None:
        check_key_groups(max_parallelism, key_groups)
        if compression is not None and compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)} or None, not {compression!r}")
        if write_batch_entries < 1 or write_batch_bytes < 1:
            raise ValueError(f"write_batch_entries ({write_batch_entries}) and write_batch_bytes "
                             f"({write_batch_bytes}) must be at least 1")
        if directory is None:
            if base_dir is not None:
                os.makedirs(base_dir, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="flowstate-rocksdb-", dir=base_dir))
        else:
            self._dir = Path(directory)
            self._dir.mkdir(parents=True, exist_ok=True)
            if any(self._dir.iterdir()):
                raise StateError(f"the working directory {self._dir} of a RocksDB state backend must be empty")
        self._maxp = max_parallelism
        self._key_groups = key_groups
        self._wanted_compression = compression
        self.compression: str | None = None
        """The SST compression in use, once the database is open."""
        self._write_buffer_size = write_buffer_size
        self._batch_entries = write_batch_entries
        self._batch_bytes = write_batch_bytes
        self._keys = _RocksKeyContext(max_parallelism)
        self._codec = ValueCodec()
        self._sequence = _Sequence()
        self._instance = uuid.uuid4().hex
        self._db: Rdict | None = None
        self._columns: dict[str, _Column] = {}
        self._families: set[str] = set()
        self._file_keys: dict[str, str] = {}
        self._snapshots_taken = 0
        self._lock = threading.Lock()
        self._outstanding: set[Path] = set()
        self._used = False
        self._closed = False

    @property
    def keys(self) -> KeyContext:
        return self._keys

    @property
    def directory(self) -> Path:
        return self._dir

    # ---- the database ----------------------------------------------------------------------------

    def _options(self) -> Options:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_write_buffer_size(self._write_buffer_size)
        options.set_max_background_jobs(2)
        options.set_keep_log_file_num(2)
        options.set_max_log_file_size(1 << 20)
        # The manifest is copied inline into every snapshot: keep it small.
        options.set_max_manifest_file_size(256 << 10)
        if self.compression is not None:
            options.set_compression_type(_COMPRESSION_TYPES[self.compression]())
        return options

    def _open_db(self, path: Path, read_only: bool = False) -> Rdict:
        """Opens the database at ``path`` with every column family it has; on the first open, picks
        the best compression the bundled RocksDB supports."""
        choices = [self.compression] if self.compression else (
            [self._wanted_compression] if self._wanted_compression else list(COMPRESSIONS))
        error: Exception | None = None
        for choice in choices:
            self.compression = choice
            options = self._options()
            families = {}
            if (path / "CURRENT").exists():
                families = {cf: self._options() for cf in Rdict.list_cf(str(path), options) if cf != "default"}
            access = AccessType.read_only(False) if read_only else AccessType.read_write()
            try:
                db = Rdict(str(path), options, column_families=families, access_type=access)
            except Exception as exc:  # RocksDB reports a codec it lacks as a generic error
                if "compression" not in str(exc).lower() or len(choices) == 1:
                    raise
                error = exc
                continue
            if not read_only:
                db.set_write_options(_write_options())
                self._families = set(families)
            return db
        raise StateError(f"no SST compression of {COMPRESSIONS} is available: {error}")

    def _database(self) -> Rdict:
        if self._closed:
            raise StateError("the RocksDB state backend is closed")
        if self._db is None:
            self._db = self._open_db(self._dir / "db")
        return self._db

    def _column(self, name: str, kind: StateKind) -> _Column:
        self._used = True
        column = self._columns.get(name)
        if column is not None:
            if column.kind is not kind:
                raise StateError(f"state {name!r} is {column.kind.value} state; it cannot also be {kind.value} state")
            return column
        db = self._database()
        if CF_PREFIX + name not in self._families:
            db.create_column_family(CF_PREFIX + name, self._options())
            self._families.add(CF_PREFIX + name)
        column = self._columns[name] = _Column(db, name, kind, self._batch_entries, self._batch_bytes, self._codec)
        return column

    # ---- state objects (rule 1) ------------------------------------------------------------------

    def value_state(self, name: str, default: Any = None) -> RocksValueState:
        return RocksValueState(self._column(name, StateKind.VALUE), self._keys, self._codec, default)

    def list_state(self, name: str) -> RocksListState:
        return RocksListState(self._column(name, StateKind.LIST), self._keys, self._codec, self._sequence)

    def map_state(self, name: str) -> RocksMapState:
        return RocksMapState(self._column(name, StateKind.MAP), self._keys, self._codec)

    def reducing_state(self, name: str, reduce_fn: Callable[[Any, Any], Any]) -> RocksReducingState:
        return RocksReducingState(self._column(name, StateKind.REDUCING), self._keys, self._codec, reduce_fn)

    def state_keys(self, name: str) -> Iterator[Any]:
        column = self._columns.get(name)
        if column is None:
            return iter(())
        column.flush(evict=False)
        keys = []
        last = b""
        for row in column.cf.keys():  # noqa: SIM118 - an Rdict, not a dict: it has no __iter__
            if not last or not row.startswith(last):
                last, key = split_prefix(row)
                keys.append(key)
        return iter(keys)

    # ---- snapshots (rules 3 to 5) ----------------------------------------------------------------

    def snapshot(self, full: bool = False) -> RocksDBSnapshot:
        """Step 1 (see the module docstring). ``full`` is recorded in the data; the files are the
        same (the caller copies them all into a savepoint)."""
        db = self._database()
        self._used = True
        for column in self._columns.values():
            column.flush()  # rule 1 of flowstate.state.values: the objects are encoded here
        self._snapshots_taken += 1
        path = self._dir / "snapshots" / f"{self._snapshots_taken:08d}"
        path.parent.mkdir(exist_ok=True)
        Checkpoint(db).create_checkpoint(str(path))
        with self._lock:
            self._outstanding.add(path)
        header = {
            "format": FORMAT, "max_parallelism": self._maxp,
            "key_groups": [self._key_groups.start, self._key_groups.stop],
            "states": {name: column.kind.value for name, column in self._columns.items()},
            "next_sequence": self._sequence.next, "full": full,
        }
        return RocksDBSnapshot(self, path, header, self._instance, self._file_keys)

    def _release(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        with self._lock:
            self._outstanding.discard(path)
            last = self._closed and not self._outstanding  # else close() deletes the directory
        if last:
            shutil.rmtree(self._dir, ignore_errors=True)

    def maybe_fold(self) -> None:
        """Flushes the object cache of a state once it holds more than its ``cache_limit`` rows (at
        most ``write_batch_entries``, fewer for values that encode to more than about
        ``write_batch_bytes`` in all); between batches, so never while a call may still change an
        object it read."""
        for column in self._columns.values():
            if len(column.objects) > column.cache_limit:
                column.flush()

    # ---- restore (rule 2) ------------------------------------------------------------------------

    def restore(self, states: Iterable[RestoredState]) -> None:
        if self._used or self._db is not None:
            raise StateError("restore() must come first: state was already created or snapshotted in this backend")
        self._used = True
        own = self._key_groups
        shared: list[tuple[RestoredState, range, range]] = []
        for state in states:
            theirs = check_header(state.data, FORMAT, self._maxp, "rocksdb")
            for name, key in state.data["sst"].items():
                if key not in state.files:
                    raise StateError(f"the snapshot lists file {key!r} ({name}), but restore() was not given its path")
            common = range(max(own.start, theirs.start), min(own.stop, theirs.stop))
            if common:
                shared.append((state, theirs, common))
        if not shared:
            return
        shared.sort(key=lambda item: len(item[2]), reverse=True)
        base, base_range, _ = shared[0]
        _lay_out(base, self._dir / "db")
        self._db = self._open_db(self._dir / "db")
        self._file_keys = dict(base.data["sst"])
        for name, kind in base.data["states"].items():
            self._column(name, StateKind(kind))
        self._clip(base_range)
        for number, (state, _, common) in enumerate(shared[1:]):
            self._copy_rows(state, common, self._dir / f"restore-{number}")
        self._sequence.next = max(state.data["next_sequence"] for state, _, _ in shared)

    def _clip(self, theirs: range) -> None:
        """Deletes the rows of key groups outside this subtask's range (the base held more)."""
        own = self._key_groups
        for column in self._columns.values():
            if theirs.start < own.start:
                column.cf.delete_range(theirs.start.to_bytes(2, "big"), own.start.to_bytes(2, "big"))
            if own.stop < theirs.stop:
                column.cf.delete_range(own.stop.to_bytes(2, "big"), theirs.stop.to_bytes(2, "big"))

    def _copy_rows(self, state: RestoredState, common: range, scratch: Path) -> None:
        """Reads the rows of key groups ``common`` from another snapshot (range scans) into this one."""
        _lay_out(state, scratch)
        source = self._open_db(scratch, read_only=True)
        try:
            for name, kind in state.data["states"].items():
                column = self._column(name, StateKind(kind))
                stop = common.stop.to_bytes(2, "big")
                rows = source.get_column_family(CF_PREFIX + name).items(from_key=common.start.to_bytes(2, "big"))
                batch = WriteBatch(raw_mode=True)
                for row, value in rows:
                    if row[:2] >= stop:
                        break
                    batch.put(row, value, column.handle)
                    if len(batch) >= _RESTORE_BATCH_ROWS:
                        column.db.write(batch)
                        batch = WriteBatch(raw_mode=True)
                column.db.write(batch)
                del rows
        finally:
            source.close()
            shutil.rmtree(scratch, ignore_errors=True)

    # ---- resources and metrics (rules 6 and 7) ---------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        if self._db is not None:
            # Dropping the column families first spares the flush of their memtables that closing a
            # database without a write-ahead log does (the files are deleted next anyway). The
            # database is closed before the state objects let go of their column family handles:
            # the other order makes rocksdict's close wait a second.
            for family in self._families:
                self._db.drop_column_family(family)
            self._db.close()
            self._db = None
        self._columns.clear()
        shutil.rmtree(self._dir / "db", ignore_errors=True)
        with self._lock:
            self._closed = True
            last = not self._outstanding
        if last:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _property_sum(self, name: str) -> int:
        total = 0
        for column in self._columns.values():
            total += column.cf.property_int_value(name) or 0
        return total

    def entry_count(self) -> int:
        """RocksDB's estimate of the rows (``rocksdb.estimate-num-keys``): one per value or reducing
        key, one per list element and map entry; rows overwritten or deleted since the last
        compaction may be counted. Plus the rows waiting in the write buffers."""
        return self._property_sum("rocksdb.estimate-num-keys") + sum(
            len(column.pending) + len(column.objects) for column in self._columns.values())

    def state_size_bytes(self) -> int:
        """The size of the live SST files plus the memtables."""
        return self._property_sum("rocksdb.live-sst-files-size") + self._property_sum(
            "rocksdb.cur-size-all-mem-tables")


def _write_options() -> WriteOptions:
    """No write-ahead log: checkpoints make the state durable, and a restart restores one."""
    options = WriteOptions()
    options.disable_wal = True
    return options


def _lay_out(state: RestoredState, target: Path) -> None:
    """Builds the database directory of a snapshot: its SSTs hard-linked (copied across file
    systems) under their own names, its small files written. The restored files are never changed:
    RocksDB only ever reads an SST, and deleting a link leaves the original in place."""
    target.mkdir(parents=True)
    for name, key in state.data["sst"].items():
        source = state.files[key]
        try:
            os.link(source, target / name)
        except OSError:
            shutil.copyfile(source, target / name)
    for name, content in state.data["inline"].items():
        (target / name).write_bytes(content)


@dataclass(frozen=True, slots=True)
class RocksDBBackendFactory:
    """Builds a ``RocksDBKeyedStateBackend`` per operator subtask, each in a new temporary directory
    under ``base_dir`` (``OperatorEnv.state_backend``)."""

    base_dir: str | None = None
    compression: str | None = None
    write_buffer_size: int = DEFAULT_WRITE_BUFFER_SIZE
    write_batch_entries: int = DEFAULT_WRITE_BATCH_ENTRIES
    write_batch_bytes: int = DEFAULT_WRITE_BATCH_BYTES

    def __call__(self, max_parallelism: int, key_groups: range) -> RocksDBKeyedStateBackend:
        return RocksDBKeyedStateBackend(max_parallelism, key_groups, base_dir=self.base_dir,
                                        compression=self.compression, write_buffer_size=self.write_buffer_size,
                                        write_batch_entries=self.write_batch_entries,
                                        write_batch_bytes=self.write_batch_bytes)
