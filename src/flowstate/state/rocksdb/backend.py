"""The RocksDB keyed state backend: the database, its states, snapshots and restore.

See ``flowstate.state.rocksdb`` for the layout and the restore, ``cache`` for the object cache and
``snapshot`` for the two parts of a snapshot.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
)

from flowstate.state.api import KeyContext
from flowstate.state.backend import (
    RestoredState,
    StateError,
    StateKind,
    check_header,
    check_key_groups,
)
from flowstate.state.codec import ValueCodec
from flowstate.state.rocksdb.cache import CF_PREFIX, Column, rows_from, write_options
from flowstate.state.rocksdb.layout import RocksKeyContext, split_prefix
from flowstate.state.rocksdb.snapshot import Cut, Cuts, RocksDBSnapshot
from flowstate.state.rocksdb.states import (
    RocksListState,
    RocksMapState,
    RocksReducingState,
    RocksValueState,
    Sequence,
)

FORMAT = "rocksdb-v1"
DEFAULT_WRITE_BUFFER_SIZE = 32 << 20
DEFAULT_WRITE_BATCH_ENTRIES = 16_384
DEFAULT_WRITE_BATCH_BYTES = 8 << 20
COMPRESSIONS = ("zstd", "lz4", "none")
PREFETCH_MODES = ("auto", "always", "never")
"""``prefetch``: as each state's ``PrefetchPolicy`` decides, before every batch, or never."""
_COMPRESSION_TYPES: dict[str, Callable[[], DBCompressionType]] = {
    "zstd": DBCompressionType.zstd, "lz4": DBCompressionType.lz4, "none": DBCompressionType.none,
}
_RESTORE_BATCH_ROWS = 10_000
_BLOOM_BITS_PER_KEY = 10


class RocksDBKeyedStateBackend:
    """Keyed state in an embedded RocksDB database (see the module docstring).

    ``directory`` is the working directory (it must not exist or be empty; it is created); without
    it, a new temporary directory under ``base_dir`` (the system's temporary directory by default).
    Either way the backend owns it and deletes it on ``close``. ``compression`` is one of
    ``COMPRESSIONS`` or ``None`` for the best one available. ``prefetch`` is one of ``PREFETCH_MODES``
    (rule 8 of ``cache``)."""

    def __init__(self, max_parallelism: int, key_groups: range, directory: str | os.PathLike[str] | None = None,
                 *, base_dir: str | os.PathLike[str] | None = None, compression: str | None = None,
                 write_buffer_size: int = DEFAULT_WRITE_BUFFER_SIZE,
                 write_batch_entries: int = DEFAULT_WRITE_BATCH_ENTRIES,
                 write_batch_bytes: int = DEFAULT_WRITE_BATCH_BYTES, prefetch: str = "auto") -> None:
        check_key_groups(max_parallelism, key_groups)
        if prefetch not in PREFETCH_MODES:
            raise ValueError(f"prefetch must be one of {', '.join(PREFETCH_MODES)}, not {prefetch!r}")
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
        self._keys = RocksKeyContext(max_parallelism)
        self._codec = ValueCodec()
        self._sequence = Sequence()
        self._instance = uuid.uuid4().hex
        self._db: Rdict | None = None
        self._columns: dict[str, Column] = {}
        self._point_columns: list[Column] = []
        """The columns of value and reducing states (the ones ``prefetch`` reads)."""
        self._prefetch_mode = prefetch
        self._prefetch_now: list[Column] = []
        """The columns to prefetch for the next batch (``wants_prefetch``)."""
        self._families: set[str] = set()
        self._file_keys: dict[str, str] = {}
        self._snapshots_taken = 0
        self._cuts = Cuts()
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
        # Bloom filters spare a point lookup the SST files that cannot hold its row: most files,
        # since every checkpoint flushes the memtables into a new one. They stay in the table
        # readers' memory (not in the block cache, where a 1 MiB filter block of a large file would
        # be read again and again once the cache is full).
        table = BlockBasedOptions()
        table.set_bloom_filter(_BLOOM_BITS_PER_KEY, False)
        options.set_block_based_table_factory(table)
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
                db.set_write_options(write_options())
                self._families = set(families)
            return db
        raise StateError(f"no SST compression of {COMPRESSIONS} is available: {error}")

    def _database(self) -> Rdict:
        if self._closed:
            raise StateError("the RocksDB state backend is closed")
        if self._db is None:
            self._db = self._open_db(self._dir / "db")
        return self._db

    def _column(self, name: str, kind: StateKind) -> Column:
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
        column = Column(db, name, kind, self._batch_entries, self._batch_bytes, self._codec)
        self._cuts.join(column)
        self._columns[name] = column
        if kind is StateKind.VALUE or kind is StateKind.REDUCING:
            self._point_columns.append(column)
        return column

    # ---- state objects (rule 1) ------------------------------------------------------------------

    def value_state(self, name: str, default: Any = None) -> RocksValueState:
        return RocksValueState(self._column(name, StateKind.VALUE), self._keys, default)

    def list_state(self, name: str) -> RocksListState:
        return RocksListState(self._column(name, StateKind.LIST), self._keys, self._sequence)

    def map_state(self, name: str) -> RocksMapState:
        return RocksMapState(self._column(name, StateKind.MAP), self._keys)

    def reducing_state(self, name: str, reduce_fn: Callable[[Any, Any], Any]) -> RocksReducingState:
        return RocksReducingState(self._column(name, StateKind.REDUCING), self._keys, reduce_fn)

    def state_keys(self, name: str) -> Iterator[Any]:
        column = self._columns.get(name)
        if column is None:
            return iter(())
        if self._cuts.pending:  # a tool's call, O(entries) anyway: the pending cuts are made here
            self._advance(self._cuts.pending[-1])
        column.flush(evict=False)
        keys = []
        last = b""
        for row, _ in rows_from(column.cf, b""):
            if not last or not row.startswith(last):
                last, key = split_prefix(row)
                keys.append(key)
        return iter(keys)

    # ---- snapshots (rules 3 to 5) ----------------------------------------------------------------

    def snapshot(self, full: bool = False) -> RocksDBSnapshot:
        """Step 1 (``flowstate.state.rocksdb.snapshot``): freezes the object caches, O(states).
        ``full`` is recorded in the data; the files are the same (the caller copies them all into a
        savepoint)."""
        self._database()
        self._used = True
        self._snapshots_taken += 1
        path = self._dir / "snapshots" / f"{self._snapshots_taken:08d}"
        cut = self._cuts.freeze(self._snapshots_taken, list(self._columns.values()), path)
        header = {
            "format": FORMAT, "max_parallelism": self._maxp,
            "key_groups": [self._key_groups.start, self._key_groups.stop],
            "states": {name: column.kind.value for name, column in self._columns.items()},
            "next_sequence": self._sequence.next, "full": full,
        }
        return RocksDBSnapshot(cut, header, self._instance, self._file_keys, self._advance, self._release)

    def _live_columns(self) -> list[Column]:
        return list(self._columns.values())

    def _advance(self, cut: Cut) -> None:
        """Step 2 (any thread)."""
        if cut.done:  # made for a later snapshot, or by close()
            return
        db = self._db
        if db is None:
            raise StateError("the RocksDB state backend was closed before this snapshot was written")
        self._cuts.advance(cut, db, self._live_columns)

    def _release(self, cut: Cut) -> None:
        """Step 3 (any thread)."""
        if self._cuts.release(cut, self._db, self._live_columns):
            shutil.rmtree(self._dir, ignore_errors=True)

    def maybe_fold(self) -> None:
        """Flushes the object cache of a state once it holds more than its ``cache_limit`` rows (at
        most ``write_batch_entries``, fewer for values that encode to more than about
        ``write_batch_bytes`` in all); between batches, so never while a call may still change an
        object it read. While a cut is pending nothing is written (rule 4 of ``cache``)."""
        for column in self._columns.values():
            if len(column.objects) > column.cache_limit and not column.frozen:
                column.flush()

    def wants_prefetch(self, size: int) -> bool:
        """Rule 8 of ``flowstate.state.backend``: asks the ``PrefetchPolicy`` of every value and
        reducing state about the next batch (of ``size`` records), unless the ``prefetch`` mode
        says ``always`` or ``never``; whether any of them wants it."""
        wanted = self._prefetch_now
        wanted.clear()
        if self._prefetch_mode != "auto":
            if self._prefetch_mode == "always":
                wanted.extend(self._point_columns)
            return bool(wanted)
        for column in self._point_columns:
            misses = column.misses
            column.misses = 0
            if column.policy.before_batch(size, misses):
                wanted.append(column)
        return bool(wanted)

    def prefetch(self, keys: list[Any]) -> None:
        """Rule 8 of ``flowstate.state.backend``: reads the rows of ``keys`` of the states that
        ``wants_prefetch`` chose into their object caches, one multi-get per state (rule 8 of
        ``cache``)."""
        if not keys or not self._prefetch_now:
            return
        rows = self._keys.prefixes(keys)
        for column in self._prefetch_now:
            column.prefetch(rows)

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
                rows = rows_from(source.get_column_family(CF_PREFIX + name), common.start.to_bytes(2, "big"))
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
        with self._cuts.cut_lock:  # waits for a cut being made on another thread
            if self._cuts.pending and self._db is not None:
                # Rule 6: a snapshot not released yet keeps its files, so its cut is made now.
                self._cuts.advance(self._cuts.pending[-1], self._db, self._live_columns)
            self._close()

    def _close(self) -> None:
        last = self._cuts.close()
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
        self._point_columns.clear()
        self._prefetch_now.clear()
        shutil.rmtree(self._dir / "db", ignore_errors=True)
        self._closed = True
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
        compaction may be counted. Plus the rows cached in the top and frozen layers."""
        return self._property_sum("rocksdb.estimate-num-keys") + sum(
            column.pending_rows() for column in self._columns.values())

    def state_size_bytes(self) -> int:
        """The size of the live SST files plus the memtables."""
        return self._property_sum("rocksdb.live-sst-files-size") + self._property_sum(
            "rocksdb.cur-size-all-mem-tables")


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
    prefetch: str = "auto"

    def __call__(self, max_parallelism: int, key_groups: range) -> RocksDBKeyedStateBackend:
        return RocksDBKeyedStateBackend(max_parallelism, key_groups, base_dir=self.base_dir,
                                        compression=self.compression, write_buffer_size=self.write_buffer_size,
                                        write_batch_entries=self.write_batch_entries,
                                        write_batch_bytes=self.write_batch_bytes, prefetch=self.prefetch)
