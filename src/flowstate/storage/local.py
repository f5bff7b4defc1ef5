"""Checkpoint storage in a directory of the local file system: ``LocalBlobStore``, the blob-store
port (``storage.blobs``) over a directory, and ``LocalCheckpointStorage``, the checkpoint catalogue
(``storage.catalogue``) over it.

Layout under the root directory (names and the metadata encoding: ``flowstate.storage.format``)::

    root/
      chk-000001/
        map#0.state             state files, named by the caller
        _metadata               written last; its presence completes the checkpoint
      chk-000002/
        .map#0.state.tmp-9f3a…  a write in progress, or what a crash left of one
      shared/
        map#0/000042.sst        shared files (``write_shared``), referenced by several checkpoints

Rules:

1. A file is written in three steps, in this order: (1) write and ``fsync`` it under a temporary
   name ``.<name>.tmp-<random>`` in its final directory; (2) ``os.replace`` it onto its final name;
   (3) ``fsync`` the directory. After a crash a file is absent or complete under its final name,
   never partial. A directory (checkpoint, ``shared``, a key's first segment) is made durable in
   its parent (parent fsynced) by the write that creates it, before that write returns.
2. ``put_if_absent`` tests that the file is absent, then writes it as in rule 1: the job's lock on
   the directory makes it the only writer, so nothing can appear in between.
3. Removal fsyncs every directory it removed a file from; removing a directory retries when a late
   write lands in it during the walk (``rmdir`` then fails with ``ENOTEMPTY``).
4. The age of a file, for ``sweep_orphans``, is its modification time.
5. Failpoints (when a ``Failpoints`` object with actions is given): ``torn`` is hit after half the
   bytes are written to the temporary file (a file copied: after its first chunk);
   ``before_publish`` once the file is complete and fsynced under its temporary name, before the
   rename. An exception raised there removes the temporary file (as any failed write does); a
   process killed there leaves it, and it is never read as a state file or metadata.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import secrets
from pathlib import Path

from flowstate.failpoints import Failpoints
from flowstate.storage.base import StoredFile
from flowstate.storage.blobs import Blob, Body, Scanned, Sink
from flowstate.storage.catalogue import CheckpointCatalogue
from flowstate.storage.format import (
    MAX_NAME_BYTES,
    METADATA_FILE,
    METADATA_FORMAT_VERSION,
    NO_METADATA,
    checkpoint_dir_name,
    decode_metadata,
    encode_metadata,
    parse_checkpoint_dir_name,
)

__all__ = [
    "MAX_NAME_BYTES",
    "METADATA_FILE",
    "METADATA_FORMAT_VERSION",
    "NO_METADATA",
    "LocalBlobStore",
    "LocalCheckpointStorage",
    "checkpoint_dir_name",
    "decode_metadata",
    "encode_metadata",
    "parse_checkpoint_dir_name",
]

_COPY_CHUNK = 1024 * 1024
_UPLOAD_WORKERS = 4


# --- file-system steps -------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory; NTFS journals the rename itself.
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_if_present(path: Path | str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _temporary(directory: Path, name: str) -> Path:
    return directory / f".{name}.tmp-{secrets.token_hex(8)}"


def _write_durably(
    directory: Path,
    name: str,
    data: bytes,
    *,
    failpoints: Failpoints | None = None,
    torn: str | None = None,
    before_rename: str | None = None,
) -> None:
    """Rule 1: temporary file, fsync, rename, directory fsync. ``torn`` and ``before_rename`` are
    the failpoints hit half way through the bytes and before the rename (rule 6)."""
    temporary = _temporary(directory, name)
    try:
        with open(temporary, "xb") as file:
            if failpoints and torn:
                half = len(data) // 2
                file.write(data[:half])
                file.flush()
                failpoints.hit(torn)
                file.write(data[half:])
            else:
                file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if failpoints and before_rename:
            failpoints.hit(before_rename)
        os.replace(temporary, directory / name)
    except BaseException:
        _unlink_if_present(temporary)
        raise
    _fsync_directory(directory)


def _copy_durably(
    directory: Path, name: str, source: Path, *, failpoints: Failpoints | None = None, torn: str | None = None,
) -> tuple[int, str]:
    """Rule 1 for a copy of the file ``source``; returns the size and SHA-256 of what was copied.
    ``torn`` is the failpoint hit once the first chunk is written."""
    temporary = _temporary(directory, name)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as reader, open(temporary, "xb") as file:
            while chunk := reader.read(_COPY_CHUNK):
                digest.update(chunk)
                file.write(chunk)
                if failpoints and torn and size == 0:
                    file.flush()
                    failpoints.hit(torn)
                size += len(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, directory / name)
    except BaseException:
        _unlink_if_present(temporary)
        raise
    _fsync_directory(directory)
    return size, digest.hexdigest()


def _make_directories_durably(path: Path) -> None:
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        _fsync_directory(directory.parent)


def _remove_directory(directory: Path, *, attempts: int = 3) -> None:
    """Rule 3. Anything already gone is fine: a concurrent removal got there first.

    A task still writing its snapshot of an aborted checkpoint can drop a file into the directory
    after the walk and before the final ``rmdir`` (which then fails with ``ENOTEMPTY``): the walk
    is repeated, up to ``attempts`` times in all.
    """
    for attempt in range(1, attempts + 1):
        for parent, subdirectories, files in os.walk(directory, topdown=False):
            for name in files:
                _unlink_if_present(os.path.join(parent, name))
            for name in subdirectories:
                path = os.path.join(parent, name)
                if os.path.islink(path):
                    _unlink_if_present(path)
                else:
                    _rmdir_if_present(path)
        try:
            _rmdir_if_present(directory)
            return
        except OSError as error:
            if error.errno != errno.ENOTEMPTY or attempt == attempts:
                raise


def _rmdir_if_present(path: Path | str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


class LocalBlobStore:
    """The blob-store port over the directory ``root`` (see the module rules)."""

    __slots__ = ("_failpoints", "_root")
    workers = _UPLOAD_WORKERS

    def __init__(self, root: str | os.PathLike[str], *, failpoints: Failpoints | None = None) -> None:
        """Use ``root``, creating it (and its missing parents) durably if it does not exist."""
        self._root = Path(root)
        self._failpoints = failpoints
        _make_directories_durably(self._root)
        if not self._root.is_dir():
            raise NotADirectoryError(f"checkpoint storage root {str(self._root)!r} is no directory")

    @property
    def root(self) -> Path:
        return self._root

    def put(self, path: str, body: Body, *, torn: str | None = None) -> tuple[int, str]:
        target = self._root / path
        _make_directories_durably(target.parent)
        if isinstance(body, bytes):
            _write_durably(target.parent, target.name, body, failpoints=self._failpoints, torn=torn)
            return len(body), hashlib.sha256(body).hexdigest()
        return _copy_durably(target.parent, target.name, body, failpoints=self._failpoints, torn=torn)

    def put_if_absent(
        self, path: str, data: bytes, *, torn: str | None = None, before_publish: str | None = None
    ) -> bool:
        target = self._root / path
        if os.path.lexists(target):
            return False
        _make_directories_durably(target.parent)
        _write_durably(
            target.parent, target.name, data, failpoints=self._failpoints, torn=torn, before_rename=before_publish
        )
        return True

    def get(self, path: str) -> bytes:
        return (self._root / path).read_bytes()

    def scan(self, path: str, sink: Sink | None = None, *, expected_size: int | None = None) -> Scanned | None:
        try:
            with open(self._root / path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if expected_size is not None and size != expected_size:
                    return Scanned(size, None)
                if sink is None:
                    return Scanned(size, hashlib.file_digest(file, "sha256").hexdigest())
                digest = hashlib.sha256()
                while chunk := file.read(_COPY_CHUNK):
                    digest.update(chunk)
                    sink(chunk)
                return Scanned(size, digest.hexdigest())
        except FileNotFoundError:
            return None

    def head(self, path: str) -> Blob | None:
        try:
            info = (self._root / path).stat()
        except FileNotFoundError:
            return None
        return Blob(info.st_size, info.st_mtime, None)

    def list(self, directory: str) -> list[StoredFile]:
        found = []
        for parent, _subdirectories, files in os.walk(self._root / directory):
            for name in files:
                file = Path(parent, name)
                try:
                    info = file.lstat()
                except FileNotFoundError:
                    continue
                found.append(StoredFile(file.relative_to(self._root).as_posix(), info.st_size, info.st_mtime))
        return found

    def directories(self) -> builtins.list[str]:
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return []
        return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]

    def delete(self, paths: builtins.list[str]) -> None:
        directories = set()
        for path in paths:
            file = self._root / path
            if _unlink_if_present(file):
                directories.add(file.parent)
        for directory in sorted(directories):
            _fsync_directory(directory)

    def delete_directory(self, directory: str) -> None:
        path = self._root / directory
        if os.path.lexists(path):
            _remove_directory(path)
            _fsync_directory(path.parent)

    def local_file(self, path: str) -> Path | None:
        return self._root / path

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self._root)!r})"


class LocalCheckpointStorage(CheckpointCatalogue):
    """``CheckpointStorage`` in a directory of the local file system: the catalogue over a
    ``LocalBlobStore``."""

    __slots__ = ()

    def __init__(self, root: str | os.PathLike[str], *, failpoints: Failpoints | None = None) -> None:
        """Use ``root``, creating it durably if it does not exist, and count the shared files
        referenced by every checkpoint whose metadata is valid."""
        super().__init__(LocalBlobStore(root, failpoints=failpoints))

    @property
    def root(self) -> Path:
        return self._store.root  # type: ignore[attr-defined, no-any-return]

    def __repr__(self) -> str:
        return f"LocalCheckpointStorage({str(self.root)!r})"
