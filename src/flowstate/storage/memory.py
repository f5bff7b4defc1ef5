"""Checkpoint storage in memory, for tests: ``MemoryBlobStore``, the blob-store port
(``storage.blobs``) over a dictionary, and ``MemoryCheckpointStorage``, the catalogue over it.

Rules:

1. A write replaces the whole blob at once, under a lock: readers see it absent or complete. Every
   blob records its SHA-256 and the wall-clock time of its write, read from the store's clock.
2. Several catalogues may share one store: that is how a test reopens storage after a "restart".
   The bytes live as long as the store; nothing is durable beyond the process.
3. Failpoints are hit immediately before the write, as on an object store.
"""

from __future__ import annotations

import builtins
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from flowstate.clock import Clock, SystemClock
from flowstate.failpoints import Failpoints
from flowstate.storage.base import StoredFile
from flowstate.storage.blobs import Blob, Body, Scanned, Sink
from flowstate.storage.catalogue import CheckpointCatalogue


@dataclass(frozen=True, slots=True)
class _Stored:
    data: bytes
    modified: float
    sha256: str


class MemoryBlobStore:
    """The blob-store port over a dictionary (see the module rules)."""

    __slots__ = ("_blobs", "_clock", "_lock", "failpoints", "puts")
    workers = 1

    def __init__(self, *, clock: Clock | None = None, failpoints: Failpoints | None = None) -> None:
        self._blobs: dict[str, _Stored] = {}
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self.failpoints = failpoints
        """Replaced by whoever opens a catalogue on the store with other failpoints."""
        self.puts: list[str] = []
        """The path of every write, in order (what a test counts uploads by)."""

    def put(self, path: str, body: Body, *, torn: str | None = None) -> tuple[int, str]:
        data = body if isinstance(body, bytes) else Path(body).read_bytes()
        self._hit(torn)
        return self._write(path, data)

    def put_if_absent(
        self, path: str, data: bytes, *, torn: str | None = None, before_publish: str | None = None
    ) -> bool:
        self._hit(torn)
        self._hit(before_publish)
        with self._lock:
            if path in self._blobs:
                return False
            self._store(path, data)
        return True

    def get(self, path: str) -> bytes:
        return self._find(path).data

    def scan(self, path: str, sink: Sink | None = None, *, expected_size: int | None = None) -> Scanned | None:
        try:
            data = self._find(path).data
        except FileNotFoundError:
            return None
        if expected_size is not None and len(data) != expected_size:
            return Scanned(len(data), None)
        if sink is not None:
            sink(data)
        return Scanned(len(data), hashlib.sha256(data).hexdigest())

    def head(self, path: str) -> Blob | None:
        try:
            found = self._find(path)
        except FileNotFoundError:
            return None
        return Blob(len(found.data), found.modified, found.sha256)

    def list(self, directory: str) -> list[StoredFile]:
        prefix = f"{directory}/"
        with self._lock:
            return [
                StoredFile(path, len(found.data), found.modified)
                for path, found in self._blobs.items()
                if path.startswith(prefix)
            ]

    def directories(self) -> builtins.list[str]:
        with self._lock:
            return sorted({path.split("/", 1)[0] for path in self._blobs if "/" in path})

    def delete(self, paths: builtins.list[str]) -> None:
        with self._lock:
            for path in paths:
                self._blobs.pop(path, None)

    def delete_directory(self, directory: str) -> None:
        self.delete([found.path for found in self.list(directory)])

    def local_file(self, path: str) -> Path | None:
        return None

    # --- what a test does around the storage ----------------------------------------------------

    def paths(self) -> builtins.list[str]:
        """Every stored path, sorted."""
        with self._lock:
            return sorted(self._blobs)

    def plant(self, path: str, data: bytes) -> None:
        """Store ``data`` under ``path`` as something other than the storage would (debris, damage):
        not counted in ``puts``."""
        with self._lock:
            self._blobs[path] = _Stored(bytes(data), self._clock.wall(), hashlib.sha256(data).hexdigest())

    def set_modified(self, path: str, modified: float) -> None:
        """Pretend the blob was last written at ``modified`` (an old orphan)."""
        with self._lock:
            found = self._blobs[path]
            self._blobs[path] = _Stored(found.data, modified, found.sha256)

    # --- internals -----------------------------------------------------------------------------

    def _hit(self, point: str | None) -> None:
        if self.failpoints and point:
            self.failpoints.hit(point)

    def _write(self, path: str, data: bytes) -> tuple[int, str]:
        with self._lock:
            found = self._store(path, data)
        return len(data), found.sha256

    def _store(self, path: str, data: bytes) -> _Stored:
        found = _Stored(bytes(data), self._clock.wall(), hashlib.sha256(data).hexdigest())
        self._blobs[path] = found
        self.puts.append(path)
        return found

    def _find(self, path: str) -> _Stored:
        with self._lock:
            found = self._blobs.get(path)
        if found is None:
            raise FileNotFoundError(f"{path} is not stored")
        return found

    def __repr__(self) -> str:
        return f"MemoryBlobStore({len(self._blobs)} blobs)"


class MemoryCheckpointStorage(CheckpointCatalogue):
    """``CheckpointStorage`` in memory: the catalogue over a ``MemoryBlobStore`` (a new one unless
    ``store`` is given, which is how a test reopens the same storage)."""

    __slots__ = ()

    def __init__(
        self, store: MemoryBlobStore | None = None, *, failpoints: Failpoints | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        store = store if store is not None else MemoryBlobStore()
        store.failpoints = failpoints
        super().__init__(store, cache_dir=cache_dir)

    def __repr__(self) -> str:
        return f"MemoryCheckpointStorage({self._store!r})"
