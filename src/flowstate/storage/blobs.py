"""The blob-store port: the few operations the checkpoint catalogue needs from a place that keeps
bytes under names. Adapters: a local directory (``local.LocalBlobStore``), an S3-compatible object
store (``s3.S3BlobStore``) and memory (``memory.MemoryBlobStore``, for tests).

A path is a POSIX path relative to the store's root (``chk-000001/_metadata``,
``shared/count#0/000042.sst``); its first segment is its *directory*. The catalogue checks every path
before it reaches the store (``format.relative_path_problem``); a store does not check them again.

Contract of every adapter:

1. ``put(path, body)`` returns only when ``body`` is durable under ``path`` (replacing what was
   there), and never leaves a partial blob under ``path``: after a crash it is absent or complete. It
   creates the directories it needs, durably. It returns the size and SHA-256 of the bytes stored.
2. ``put_if_absent(path, data)`` is ``put`` unless ``path`` exists, in which case it writes nothing
   and returns ``False``. It is what publishes a checkpoint's metadata: once a checkpoint is
   complete, it is never replaced. (An object store makes the test and the write one request; a
   directory tests, then renames: the job's lock on the directory makes it the only writer.)
3. Reading a missing blob (``get``) raises ``FileNotFoundError``; ``scan`` and ``head`` answer
   ``None`` for it. ``scan`` hashes the bytes it reads; ``head``'s ``sha256`` is the digest the store
   recorded when the blob was written, if it keeps one (never trusted for validation, only to avoid
   writing the same bytes again).
4. ``delete`` and ``delete_directory`` are idempotent: what is already gone is fine.
5. Failures: a store that fails a request raises ``OSError`` (``ObjectStoreError`` from an object
   store, once its client's retries are exhausted). ``ObjectStoreError`` means "unreachable", never
   "missing" nor "damaged": the catalogue lets it through rather than judge a checkpoint by it.
6. Failpoints: ``put`` hits ``torn`` while (a directory: half way through the bytes) or before (an
   object store: the request cannot be torn) writing; ``put_if_absent`` also hits
   ``before_publish`` once the bytes are complete, before they become visible under ``path``.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flowstate.storage.base import StoredFile

Body = bytes | Path
"""What ``put`` takes: the bytes, or a local file whose bytes to store."""
Sink = Callable[[bytes], object]


@dataclass(frozen=True, slots=True)
class Blob:
    """What ``head`` tells of a stored blob."""

    size: int
    modified: float
    """Wall-clock time (seconds since the epoch) of its last write."""
    sha256: str | None
    """The digest recorded when it was written, when the store keeps one (rule 3)."""


@dataclass(frozen=True, slots=True)
class Scanned:
    """What ``scan`` read: the size of the blob and, unless the size was not the expected one, the
    SHA-256 of its bytes."""

    size: int
    sha256: str | None


class BlobStore(Protocol):
    workers: int
    """How many requests at once are worth making (uploads, validation of a checkpoint's files)."""

    def put(self, path: str, body: Body, *, torn: str | None = None) -> tuple[int, str]:
        """Rules 1 and 6: ``(size, sha256)`` of what was stored."""
        ...

    def put_if_absent(
        self, path: str, data: bytes, *, torn: str | None = None, before_publish: str | None = None
    ) -> bool:
        """Rule 2: whether ``data`` was written."""
        ...

    def get(self, path: str) -> bytes:
        """Every byte of the blob (rule 3)."""
        ...

    def scan(self, path: str, sink: Sink | None = None, *, expected_size: int | None = None) -> Scanned | None:
        """Stream the blob into ``sink`` while hashing it; without reading it when its size is not
        ``expected_size``. ``None`` when it is missing."""
        ...

    def head(self, path: str) -> Blob | None: ...

    def list(self, directory: str) -> list[StoredFile]:
        """Every blob whose path starts with ``directory + "/"``, at any depth, in no order."""
        ...

    def directories(self) -> builtins.list[str]:
        """The name of every directory of the root, in no order."""
        ...

    def delete(self, paths: builtins.list[str]) -> None: ...

    def delete_directory(self, directory: str) -> None:
        """Delete every blob under ``directory`` (rule 4)."""
        ...

    def local_file(self, path: str) -> Path | None:
        """The local file that holds the blob in place (a directory store), or ``None`` (the
        catalogue then downloads a copy)."""
        ...


def body_size(body: Body) -> int:
    return len(body) if isinstance(body, bytes) else os.stat(body).st_size
