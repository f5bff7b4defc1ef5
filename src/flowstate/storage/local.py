"""Checkpoint storage in a directory of the local file system.

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
2. ``_metadata`` is the commit point. The caller writes it after every file it references is
   durable; a directory without it is *incomplete* and is never restored from.
3. Validation trusts nothing on disk: the metadata parses, matches its checksum, has a known format
   version and names the checkpoint of its own directory, and every file it references (state
   files and shared files) exists with the recorded size and SHA-256. Each refusal is a sentence
   that names the file.
4. Removal (``discard``, ``sweep``) deletes ``_metadata`` first and fsyncs the directory, so that a
   crash half way through leaves an incomplete checkpoint, never one that looks complete but is not.
   Shared files are deleted after the metadata and directory of the checkpoint that released them.
5. The age of a file, for ``sweep_orphans``, is its modification time. ``write_shared`` of bytes
   already stored under the key, when no checkpoint references them yet, refreshes that time: the
   file is about to be referenced again and must not be swept as an old orphan meanwhile.
6. Failpoints (when a ``Failpoints`` object with actions is given): ``storage.state_mid_write``
   after half the bytes of a state file are written to its temporary file;
   ``storage.metadata_torn`` after half the bytes of ``_metadata`` are written to its temporary
   file; ``storage.metadata_before_rename`` once ``_metadata`` is complete and fsynced under its
   temporary name, before the rename. An exception raised there removes the temporary file (as any
   failed write does); a process killed there leaves it, and it is never read as metadata.

Not guaranteed: two writers of the same file name in one checkpoint (names are unique per checkpoint
by contract); ``sweep`` running while a checkpoint that is not in ``keep`` is being written; two
storage instances writing the same root (the job holds a lock on the directory).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flowstate import failpoints as fpn
from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import CandidateStatus, Invalid, Valid
from flowstate.failpoints import Failpoints
from flowstate.storage.base import (
    CheckpointInfo,
    CheckpointMetadata,
    CorruptCheckpointError,
    StateHandle,
    StoredFile,
)
from flowstate.storage.compression import check_codec, compress
from flowstate.storage.format import (
    MAX_NAME_BYTES,
    METADATA_FILE,
    METADATA_FORMAT_VERSION,
    NO_METADATA,
    SHARED_DIR,
    TEMPORARY_NAME,
    check_checkpoint_id,
    check_key,
    check_keys,
    check_state_name,
    checkpoint_dir_name,
    decode_metadata,
    encode_metadata,
    hash_problem,
    parse_checkpoint_dir_name,
    reference_problem,
    relative_path_problem,
    shared_path,
    verified_state,
)
from flowstate.storage.registry import SharedStateRegistry, shared_files

__all__ = [
    "MAX_NAME_BYTES",
    "METADATA_FILE",
    "METADATA_FORMAT_VERSION",
    "NO_METADATA",
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


def _remove_checkpoint_directory(directory: Path, *, attempts: int = 3) -> None:
    """Rule 4. Anything already gone is fine: a concurrent removal got there first.

    A task still writing its snapshot of an aborted checkpoint can drop a file into the directory
    after the walk and before the final ``rmdir`` (which then fails with ``ENOTEMPTY``): the walk
    is repeated, up to ``attempts`` times in all.
    """
    try:
        os.unlink(directory / METADATA_FILE)
    except FileNotFoundError:
        pass
    else:
        _fsync_directory(directory)
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


def _bytes_on_disk(directory: Path) -> int:
    total = 0
    for parent, _subdirectories, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _digest_of(path: Path | str) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# --- the adapter -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inspection:
    verdict: Valid[CheckpointMetadata] | Invalid
    status: Literal["completed", "incomplete", "corrupt"]
    metadata: CheckpointMetadata | None
    """The parsed metadata when it is the checkpoint's own, even if a state file is bad."""


class LocalCheckpointStorage:
    """``CheckpointStorage`` in a directory of the local file system (see the module rules).

    One instance may be shared by threads: tasks writing state and shared files concurrently, the
    coordinator writing metadata and discarding checkpoints. The reference counts of shared files
    are guarded by a lock.
    """

    __slots__ = ("_failpoints", "_lock", "_registry", "_root")

    def __init__(self, root: str | os.PathLike[str], *, failpoints: Failpoints | None = None) -> None:
        """Use ``root``, creating it (and its missing parents) durably if it does not exist, and
        count the shared files referenced by every checkpoint whose metadata is valid."""
        self._root = Path(root)
        self._failpoints = failpoints
        self._lock = threading.Lock()
        _make_directories_durably(self._root)
        if not self._root.is_dir():
            raise NotADirectoryError(f"checkpoint storage root {str(self._root)!r} is no directory")
        self._registry = SharedStateRegistry.from_metadata(self._valid_metadata())

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"LocalCheckpointStorage({str(self._root)!r})"

    # --- writing -------------------------------------------------------------------------------

    def write_state(
        self, checkpoint_id: CheckpointId, name: str, data: bytes, *, codec: str = "none"
    ) -> StateHandle:
        """Make ``data``, compressed with ``codec``, durable as ``chk-<id>/<name>`` and return its
        handle (contract rule 1).

        ``name`` must not contain ``/`` nor start with ``.`` or ``_``, and ``codec`` must be known
        (``ValueError``); nothing is written then.
        """
        check_state_name(name)
        check_codec(codec)
        check_checkpoint_id(checkpoint_id)
        stored = compress(codec, data)
        directory = self._checkpoint_directory(checkpoint_id)
        _write_durably(
            directory, name, stored, failpoints=self._failpoints, torn=fpn.STORAGE_STATE_MID_WRITE
        )
        return StateHandle(
            path=f"{directory.name}/{name}",
            size=len(stored),
            sha256=hashlib.sha256(stored).hexdigest(),
            codec=codec,
        )

    def write_shared(self, key: str, source: bytes | os.PathLike[str]) -> StateHandle:
        """Make ``source`` (bytes, or the path of a file to copy) durable as ``shared/<key>`` and
        return its handle (contract rule 6); the bytes are stored as given (codec ``"none"``).

        Idempotent: when the file already holds the same bytes it is not rewritten (rule 5 for its
        age). Other bytes under a key that a checkpoint references raise ``FileExistsError``; under
        a key that none references (debris of a crashed upload) they replace the old file.
        ``ValueError`` for a bad key.
        """
        check_key(key)
        relative = shared_path(key)
        path = self._root / relative
        data = None
        if isinstance(source, bytes | bytearray | memoryview):
            data = source if isinstance(source, bytes) else bytes(source)
        source_path = None if data is not None else Path(source)
        existing = self._existing_size(path)
        if existing is not None:
            if data is not None:
                size, sha256 = len(data), hashlib.sha256(data).hexdigest()
            else:
                size = os.stat(source_path).st_size
                sha256 = _digest_of(source_path) if size == existing else ""
            same = existing == size and _digest_of(path) == sha256
            with self._lock:
                referenced = self._registry.count(relative) > 0
            if same:
                if not referenced:
                    os.utime(path)
                return StateHandle(relative, size, sha256)
            if referenced:
                raise FileExistsError(
                    f"{relative} already holds other bytes, referenced by a checkpoint: a shared "
                    "file is immutable, so its key must name its content"
                )
        _make_directories_durably(path.parent)
        if data is not None:
            _write_durably(path.parent, path.name, data, failpoints=self._failpoints, torn=fpn.STORAGE_SHARED_MID_UPLOAD)
            return StateHandle(relative, len(data), hashlib.sha256(data).hexdigest())
        size, sha256 = _copy_durably(path.parent, path.name, source_path, failpoints=self._failpoints,
                                     torn=fpn.STORAGE_SHARED_MID_UPLOAD)
        return StateHandle(relative, size, sha256)

    def write_shared_many(
        self, items: Iterable[tuple[str, bytes | os.PathLike[str]]]
    ) -> list[StateHandle]:
        """``write_shared`` of every ``(key, source)``, four at a time; the handles in the
        order given. Keys are validated (and must differ) before anything is written; when writes
        fail, the first failure is raised once every write has ended."""
        items = list(items)
        check_keys([key for key, _ in items])
        if len(items) <= 1:
            return [self.write_shared(key, source) for key, source in items]
        with ThreadPoolExecutor(min(_UPLOAD_WORKERS, len(items)), thread_name_prefix="shared-upload") as pool:
            futures = [pool.submit(self.write_shared, key, source) for key, source in items]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return [future.result() for future in futures]

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        """Complete the checkpoint by writing its ``_metadata`` durably (contract rule 2).

        Before anything is written: ``ValueError`` if the metadata would not read back equal (see
        ``encode_metadata``) or references a file it may not (``format.reference_problem``);
        ``CorruptCheckpointError`` if a file it references is missing or has another size. The
        second check is cheap (no hashing) and keeps a caller's mistake from publishing a
        checkpoint that cannot be restored, which the coordinator would then let subsume the older,
        valid ones. The checkpoint's shared files are counted (under the same lock as ``discard``
        deletes them) before the metadata is written: a shared file the check found cannot be
        deleted before the checkpoint that references it is discarded.
        """
        raw = encode_metadata(metadata)
        problem = reference_problem(metadata)
        if problem is not None:
            raise ValueError(f"cannot complete checkpoint {metadata.checkpoint_id}: {problem}")
        with self._lock:
            for handle in metadata.files():
                size = self._existing_size(self._root / handle.path)
                if size is None:
                    raise CorruptCheckpointError(
                        f"cannot complete checkpoint {metadata.checkpoint_id}: {handle.path} is missing"
                    )
                if size != handle.size:
                    raise CorruptCheckpointError(
                        f"cannot complete checkpoint {metadata.checkpoint_id}: {handle.path} has "
                        f"{size} bytes, its handle says {handle.size}"
                    )
            self._registry.register(metadata.checkpoint_id, shared_files(metadata))
        # When tasks write concurrently, a write_state may find the directory made by another one
        # that has not yet fsynced the root. That is fine: the metadata is written only after every
        # write_state has returned, the creating one included, so the directory is durable by now.
        directory = self._checkpoint_directory(metadata.checkpoint_id)
        _write_durably(
            directory,
            METADATA_FILE,
            raw,
            failpoints=self._failpoints,
            torn=fpn.STORAGE_METADATA_TORN,
            before_rename=fpn.STORAGE_METADATA_BEFORE_RENAME,
        )

    # --- reading -------------------------------------------------------------------------------

    def read_state(self, handle: StateHandle) -> bytes:
        """The bytes given to ``write_state`` for ``handle``, verified again (contract rule 4).

        Raises ``CorruptCheckpointError`` naming the file when it is missing or its size or SHA-256
        differs from the handle (or it does not decompress); ``ValueError`` when the handle's path
        leaves the storage root or its codec is unknown.
        """
        return verified_state(handle, lambda path: (self._root / path).read_bytes())

    def local_path(self, handle: StateHandle) -> Path:
        """The file of ``handle`` in place, verified first (contract rule 4); the same errors as
        ``read_state``. Its bytes are as stored (compressed with ``handle.codec``)."""
        problem = relative_path_problem(handle.path)
        if problem is not None:
            raise ValueError(problem)
        problem = self.file_problem(handle)
        if problem is not None:
            raise CorruptCheckpointError(problem)
        return self._root / handle.path

    def restore_candidates(self) -> Iterator[Valid[CheckpointMetadata] | Invalid]:
        """Every checkpoint directory, newest first, each validated only when it is reached
        (contract rule 3). The directory is listed when iteration starts."""
        for checkpoint_id, directory in reversed(self._checkpoint_directories()):
            yield self._inspect(checkpoint_id, directory).verdict

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint directory, oldest first, each fully validated.

        ``metadata`` is set for a completed checkpoint and for a corrupt one whose metadata is
        intact but one of whose files is not; ``bytes_on_disk`` counts every file in the directory.
        """
        infos: list[CheckpointInfo] = []
        for checkpoint_id, directory in self._checkpoint_directories():
            inspection = self._inspect(checkpoint_id, directory)
            reason = inspection.verdict.reason if isinstance(inspection.verdict, Invalid) else None
            infos.append(
                CheckpointInfo(
                    checkpoint_id=checkpoint_id,
                    status=inspection.status,
                    reason=reason,
                    metadata=inspection.metadata,
                    bytes_on_disk=_bytes_on_disk(directory),
                )
            )
        return infos

    def highest_id(self) -> int:
        """The highest id of any ``chk-N`` directory, complete or not; 0 when there is none."""
        return max((found_id for found_id, _ in self._checkpoint_directories()), default=0)

    # --- inspection (``flowstate checkpoints verify``) ------------------------------------------

    def checkpoint_ids(self) -> list[CheckpointId]:
        """The id of every checkpoint directory, oldest first."""
        return [checkpoint_id for checkpoint_id, _ in self._checkpoint_directories()]

    def load_metadata(self, checkpoint_id: CheckpointId) -> CheckpointMetadata:
        """The decoded metadata of ``checkpoint_id``: ``FileNotFoundError`` when it has none,
        ``CorruptCheckpointError`` naming the file when it does not decode or names another
        checkpoint, another ``OSError`` when it cannot be read."""
        directory = dict(self._checkpoint_directories()).get(checkpoint_id)
        if directory is None:
            raise FileNotFoundError(f"checkpoint {checkpoint_id} has no directory")
        return self._load_metadata(checkpoint_id, directory)

    def file_problem(self, handle: StateHandle) -> str | None:
        """Why the file of ``handle`` is missing, unreadable or differs in size or SHA-256."""
        try:
            with open(self._root / handle.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                sha256 = (
                    hashlib.file_digest(file, "sha256").hexdigest() if size == handle.size else None
                )
        except FileNotFoundError:
            return f"{handle.path} is missing"
        except OSError as error:
            return f"cannot read {handle.path}: {error.strerror}"
        return hash_problem(handle, size, sha256)

    def list_files(self) -> list[StoredFile]:
        """Every file in the checkpoint directories and under ``shared/``, in path order (other
        files in the root, such as the job's lock file, are not the storage's)."""
        found: list[StoredFile] = []
        tops = [directory for _, directory in self._all_checkpoint_directories()]
        tops.append(self._root / SHARED_DIR)
        for top in tops:
            for parent, _subdirectories, files in os.walk(top):
                for name in files:
                    path = Path(parent, name)
                    try:
                        info = path.lstat()
                    except FileNotFoundError:
                        continue
                    relative = path.relative_to(self._root).as_posix()
                    found.append(StoredFile(relative, info.st_size, info.st_mtime))
        return sorted(found, key=lambda f: f.path)

    # --- removing ------------------------------------------------------------------------------

    def discard(self, checkpoint_id: CheckpointId) -> None:
        """Delete the checkpoint's directory, metadata first (rule 4), then the shared files no
        other checkpoint references (contract rules 6 and 7). Missing is fine."""
        removed = False
        for found_id, directory in self._all_checkpoint_directories():
            if found_id == checkpoint_id:
                _remove_checkpoint_directory(directory)
                removed = True
        if removed:
            _fsync_directory(self._root)
        self._release(checkpoint_id)

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        """Delete every checkpoint directory not in ``keep`` whose metadata is missing or invalid,
        and stray temporary files in the valid ones not in ``keep``; return the deleted ids, oldest
        first. A deleted checkpoint releases its shared files as ``discard`` does.

        ``keep`` must hold every checkpoint still being written. Only the metadata is checked (no
        hashing of state files): a checkpoint with intact metadata but a damaged state file is left
        for ``discard``, as evidence of the damage.
        """
        removed: list[CheckpointId] = []
        for checkpoint_id, directory in self._checkpoint_directories():
            if checkpoint_id in keep:
                continue
            inspection = self._inspect(checkpoint_id, directory, verify_files=False)
            if isinstance(inspection.verdict, Valid):
                self._remove_temporary_files(directory, older_than=None)
            else:
                _remove_checkpoint_directory(directory)
                removed.append(checkpoint_id)
        if removed:
            _fsync_directory(self._root)
        for checkpoint_id in removed:
            self._release(checkpoint_id)
        return removed

    def sweep_orphans(self, grace_seconds: float, now: float) -> list[str]:
        """Delete every file under ``shared/`` that no valid metadata references (nor any
        checkpoint being completed by this instance) and that was last modified more than
        ``grace_seconds`` before ``now`` (wall-clock seconds since the epoch), and temporary files
        that old in checkpoint directories (contract rule 8). Returns the deleted paths, sorted.
        """
        if grace_seconds < 0:
            raise ValueError(f"the grace period cannot be negative, not {grace_seconds!r}")
        cutoff = now - grace_seconds
        referenced = {h.path for metadata in self._valid_metadata() for h in shared_files(metadata)}
        deleted: list[str] = []
        with self._lock:
            referenced |= self._registry.referenced()
            shared_root = self._root / SHARED_DIR
            for parent, _subdirectories, files in os.walk(shared_root):
                for name in files:
                    path = Path(parent, name)
                    relative = path.relative_to(self._root).as_posix()
                    if relative in referenced or not self._older_than(path, cutoff):
                        continue
                    if _unlink_if_present(path):
                        deleted.append(relative)
                if files:
                    _fsync_directory(Path(parent))
        for _, directory in self._all_checkpoint_directories():
            deleted.extend(self._remove_temporary_files(directory, older_than=cutoff))
        return sorted(deleted)

    # --- internals -----------------------------------------------------------------------------

    def _release(self, checkpoint_id: CheckpointId) -> None:
        """Forget ``checkpoint_id``'s references and delete the shared files it held last."""
        with self._lock:
            released = self._registry.unregister(checkpoint_id)
            directories = set()
            for relative in released:
                path = self._root / relative
                if _unlink_if_present(path):
                    directories.add(path.parent)
            for directory in directories:
                _fsync_directory(directory)

    @staticmethod
    def _existing_size(path: Path) -> int | None:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    @staticmethod
    def _older_than(path: Path, cutoff: float) -> bool:
        try:
            return path.lstat().st_mtime < cutoff
        except FileNotFoundError:
            return False

    def _checkpoint_directory(self, checkpoint_id: CheckpointId) -> Path:
        """The directory of ``checkpoint_id``, created durably (root fsynced) if it is new."""
        check_checkpoint_id(checkpoint_id)
        directory = self._root / checkpoint_dir_name(checkpoint_id)
        try:
            directory.mkdir()
        except FileExistsError:
            return directory
        _fsync_directory(self._root)
        return directory

    def _all_checkpoint_directories(self) -> list[tuple[CheckpointId, Path]]:
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return []
        found: list[tuple[CheckpointId, Path]] = []
        for entry in entries:
            checkpoint_id = parse_checkpoint_dir_name(entry.name)
            if checkpoint_id is not None and entry.is_dir(follow_symlinks=False):
                found.append((checkpoint_id, Path(entry.path)))
        return found

    def _checkpoint_directories(self) -> list[tuple[CheckpointId, Path]]:
        """One directory per id, oldest first. Should two names give the same id (``chk-7`` and
        ``chk-000007``), the one this module writes wins, then the first by name."""
        chosen: dict[CheckpointId, Path] = {}
        for checkpoint_id, directory in sorted(
            self._all_checkpoint_directories(),
            key=lambda item: (item[1].name != checkpoint_dir_name(item[0]), item[1].name),
        ):
            chosen.setdefault(checkpoint_id, directory)
        return sorted(chosen.items())

    def _valid_metadata(self) -> Iterator[CheckpointMetadata]:
        """The metadata of every checkpoint whose metadata is valid (files not verified)."""
        for checkpoint_id, directory in self._checkpoint_directories():
            try:
                yield self._load_metadata(checkpoint_id, directory)
            except (OSError, CorruptCheckpointError):
                continue

    def _load_metadata(self, checkpoint_id: CheckpointId, directory: Path) -> CheckpointMetadata:
        where = f"{directory.name}/{METADATA_FILE}"
        raw = (directory / METADATA_FILE).read_bytes()
        try:
            metadata = decode_metadata(raw)
        except CorruptCheckpointError as error:
            raise CorruptCheckpointError(f"{where}: {error}") from None
        if metadata.checkpoint_id != checkpoint_id:
            raise CorruptCheckpointError(
                f"{where} names checkpoint {metadata.checkpoint_id}, "
                f"not {checkpoint_id} of its directory"
            )
        return metadata

    def _inspect(
        self, checkpoint_id: CheckpointId, directory: Path, *, verify_files: bool = True
    ) -> _Inspection:
        def corrupt(reason: str, metadata: CheckpointMetadata | None = None) -> _Inspection:
            return _Inspection(Invalid(checkpoint_id, reason), "corrupt", metadata)

        try:
            metadata = self._load_metadata(checkpoint_id, directory)
        except FileNotFoundError:
            return _Inspection(Invalid(checkpoint_id, NO_METADATA, CandidateStatus.INCOMPLETE), "incomplete", None)
        except CorruptCheckpointError as error:
            return corrupt(str(error))
        except OSError as error:
            return corrupt(f"cannot read {directory.name}/{METADATA_FILE}: {error.strerror}")
        if verify_files:
            for handle in metadata.files():
                problem = self.file_problem(handle)
                if problem is not None:
                    return corrupt(problem, metadata)
        return _Inspection(Valid(checkpoint_id, metadata), "completed", metadata)

    def _remove_temporary_files(self, directory: Path, *, older_than: float | None) -> list[str]:
        """Delete the temporary files in ``directory`` (only those last modified before
        ``older_than`` when it is given); return their paths relative to the root."""
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        removed = []
        for entry in entries:
            if not (TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            if older_than is not None and not self._older_than(Path(entry.path), older_than):
                continue
            if _unlink_if_present(entry.path):
                removed.append(f"{directory.name}/{entry.name}")
        return removed
