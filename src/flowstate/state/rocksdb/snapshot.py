"""Snapshots of the RocksDB backend: the synchronous part freezes, the asynchronous part cuts.

Step (1), the synchronous part (``Cuts.freeze``, task thread): the top layer of every state's object
cache is frozen (``cache.Column.freeze``, O(1) per state) and a ``Cut`` naming those layers is queued;
no byte is encoded, written or flushed. Its cost is O(states), whatever the size of the state.

Step (2), the asynchronous part (``RocksDBSnapshot.materialize``, any thread): the cut is made —
the cuts before it first, **in the order they were taken**, one at a time — by encoding each frozen
layer and writing it to RocksDB, flushing the memtables of every column family (RocksDB releases the
interpreter lock while it flushes) and creating a RocksDB checkpoint in ``snapshots/<n>`` of the
working directory (SST files hard-linked, small files copied). While any cut is pending the task
thread does not write to RocksDB (rule 4 of ``cache``), so the checkpoint holds exactly the state at
the barrier. Only then are the cut's layers taken out of the caches. The directory is then listed:
every SST becomes a shared file keyed ``"<uuid of the database instance that wrote it>-<file name>"``
(RocksDB never reuses a file number within one instance, so a key always names the same bytes, and
an SST that outlives several checkpoints keeps its key: the caller uploads it once); the other small
files (manifest, ``CURRENT``; not the options files, which RocksDB writes anew when it opens a
database) are inline in ``data``.

Step (3), ``release`` (any thread): deletes the checkpoint directory. A snapshot released before it
was materialized still has its layers written (they are the live state), but no checkpoint is taken
for it. A cut made for a later snapshot makes the checkpoints of the earlier ones still wanted, in
order, so overlapping snapshots each hold their own cut whatever order they end in.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rocksdict import Checkpoint, Rdict

from flowstate.state.backend import SnapshotParts, StateError
from flowstate.state.codec import ValueCodec
from flowstate.state.rocksdb.cache import Column, Layer


class Cut:
    """The frozen layers of one snapshot, and where its RocksDB checkpoint goes."""

    __slots__ = ("done", "layers", "made", "number", "path", "wanted")

    def __init__(self, number: int, layers: list[tuple[Column, Layer]], path: Path) -> None:
        self.number = number
        self.layers = layers
        self.path = path
        self.wanted = True
        """False once the snapshot was released: the layers are still written, no checkpoint taken."""
        self.done = False
        self.made = False
        """Whether the checkpoint directory was created (and is to be deleted by ``release``)."""


class Cuts:
    """The pending cuts of one backend, made one at a time in the order they were taken.

    ``lock`` guards ``pending``, every column's ``frozen`` tuple, ``outstanding`` and ``closed``
    (held for O(states) at most); ``cut_lock`` is held while a cut is made and by ``close``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cut_lock = threading.RLock()
        self.pending: deque[Cut] = deque()
        self.outstanding: set[Path] = set()
        self.closed = False
        self._codec = ValueCodec()  # the task thread's codec may be busy meanwhile

    def freeze(self, number: int, columns: list[Column], path: Path) -> Cut:
        """Step 1."""
        cut = Cut(number, [(column, column.freeze()) for column in columns], path)
        with self.lock:
            for column, layer in cut.layers:
                column.frozen = (*column.frozen, layer)
            self.pending.append(cut)
        return cut

    def join(self, column: Column) -> None:
        """A state created while cuts are pending gets an empty layer in each, so that it too
        waits for them before it writes to RocksDB."""
        with self.lock:
            for cut in self.pending:
                layer = Layer({}, {}, set())
                cut.layers.append((column, layer))
                column.frozen = (*column.frozen, layer)

    def advance(self, through: Cut, db: Rdict, columns: Callable[[], list[Column]]) -> None:
        """Step 2 for ``through`` and every cut taken before it that is still pending."""
        with self.cut_lock:
            if through.done:
                return
            if self.closed:
                raise StateError("the RocksDB state backend was closed before this snapshot was written")
            while True:
                with self.lock:
                    if not self.pending or self.pending[0].number > through.number:
                        return
                    cut = self.pending[0]
                    layers = list(cut.layers)
                self._make(cut, layers, db, columns)
                with self.lock:
                    self.pending.popleft()
                    for column, layer in cut.layers:
                        column.frozen = tuple(other for other in column.frozen if other is not layer)

    def _make(self, cut: Cut, layers: list[tuple[Column, Layer]], db: Rdict,
              columns: Callable[[], list[Column]]) -> None:
        encode = self._codec.encode
        for column, layer in layers:
            column.write_layer(layer, encode)
        if cut.wanted:
            for column in columns():
                column.cf.flush(True)  # off the interpreter lock; the checkpoint then flushes nothing
            cut.path.parent.mkdir(exist_ok=True)
            Checkpoint(db).create_checkpoint(str(cut.path))
            with self.lock:
                self.outstanding.add(cut.path)
            cut.made = True
        cut.done = True

    def release(self, cut: Cut, db: Rdict | None, columns: Callable[[], list[Column]]) -> bool:
        """Step 3; whether the backend was closed and this was the last directory it waited for."""
        with self.cut_lock:
            cut.wanted = False
            if not cut.done and not self.closed and db is not None:
                self.advance(cut, db, columns)
        if not cut.made:
            return False
        shutil.rmtree(cut.path, ignore_errors=True)
        with self.lock:
            self.outstanding.discard(cut.path)
            return self.closed and not self.outstanding

    def close(self) -> bool:
        """Drops the pending cuts (called with ``cut_lock`` held); whether no directory is outstanding."""
        with self.lock:
            self.closed = True
            self.pending.clear()
            return not self.outstanding


class RocksDBSnapshot:
    """One snapshot of a RocksDB backend: its cut, made by ``materialize`` (see the module docstring)."""

    __slots__ = ("_advance", "_cut", "_file_keys", "_header", "_instance", "_release", "_state")

    def __init__(self, cut: Cut, header: dict[str, Any], instance: str, file_keys: dict[str, str],
                 advance: Callable[[Cut], None], release: Callable[[Cut], None]) -> None:
        self._cut = cut
        self._header = header
        self._instance = instance
        self._file_keys = file_keys
        self._advance = advance
        self._release = release
        self._state = "taken"

    @property
    def path(self) -> Path:
        """The checkpoint directory (from ``materialize`` until ``release``)."""
        return self._cut.path

    def materialize(self) -> SnapshotParts:
        """Step 2."""
        if self._state != "taken":
            raise StateError(f"this snapshot was already {self._state}")
        self._state = "materialized"
        self._advance(self._cut)
        sst: dict[str, str] = {}
        inline: dict[str, bytes] = {}
        files: dict[str, str] = {}
        for entry in sorted(os.scandir(self._cut.path), key=lambda e: e.name):
            if entry.name.endswith(".sst"):
                key = self._file_keys.get(entry.name) or f"{self._instance}-{entry.name}"
                sst[entry.name] = key
                files[key] = entry.path
            elif not entry.name.startswith("OPTIONS-"):  # RocksDB writes them anew on open
                inline[entry.name] = Path(entry.path).read_bytes()
        return SnapshotParts({**self._header, "sst": sst, "inline": inline}, files)

    def release(self) -> None:
        """Step 3."""
        if self._state == "released":
            return
        self._state = "released"
        self._release(self._cut)
