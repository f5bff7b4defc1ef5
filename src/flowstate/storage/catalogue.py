"""The checkpoint catalogue: the ``CheckpointStorage`` port (``storage.base``) over any blob store
(``storage.blobs``). Everything a checkpoint storage does beyond keeping bytes is here, once: names
and the metadata encoding (``storage.format``), validation, the restore candidates, the reference
counts of shared files, discarding, sweeping and the inventory ``flowstate checkpoints`` shows.

Rules (the contract's rules are in ``storage.base``; these are how the catalogue keeps them):

1. ``_metadata`` is the commit point, written last with ``put_if_absent``: a complete checkpoint is
   never replaced. When the metadata is already there (a retry after a lost answer), it is read
   back: the same bytes mean the write succeeded, other bytes raise ``FileExistsError``.
2. Validation trusts nothing stored: the metadata parses, matches its checksum, has a known format
   version and names the checkpoint of its own directory, and every file it references exists with
   the recorded size and SHA-256 (hashed from the bytes, ``workers`` files at a time). Each refusal
   is a sentence naming the file. A store that cannot be reached (``ObjectStoreError``) is no
   verdict: validation, ``sweep`` and ``sweep_orphans`` raise it instead of refusing checkpoints or
   taking their files for orphans. Any other ``OSError`` reading a file is a reason to refuse it.
3. Removal (``discard``, ``sweep``) deletes ``_metadata`` first, then the rest of the directory, then
   the shared files it released: a crash half way leaves an incomplete checkpoint or orphans, never
   a checkpoint that looks complete but is not.
4. ``write_shared`` of bytes already stored under the key returns their handle without writing
   them again when a checkpoint references them; when none does, it writes them again, which
   refreshes their age for ``sweep_orphans`` (they are about to be referenced). Other bytes under a
   referenced key raise ``FileExistsError``; under an unreferenced one (debris) they replace it.
5. Temporary files (``.<name>.tmp-<hex>``, only a directory store leaves them) are debris:
   ``sweep`` removes those in valid checkpoints it does not keep, ``sweep_orphans`` those older than
   its grace period.
6. ``local_path`` hands out the store's own file when it has one (verified first); otherwise it
   downloads a copy into ``cache_dir`` under its SHA-256 (verified before it is renamed into place)
   and reuses a cached copy that still verifies. The cache is never pruned.

Not guaranteed: two catalogues writing one root (the job holds a lock on it); ``sweep`` while a
checkpoint that is not in ``keep`` is being written.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flowstate import failpoints as fpn
from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import CandidateStatus, Invalid, Valid
from flowstate.storage.base import (
    CheckpointInfo,
    CheckpointMetadata,
    CheckpointStatus,
    CorruptCheckpointError,
    ObjectStoreError,
    StateHandle,
    StoredFile,
)
from flowstate.storage.blobs import BlobStore, Body, body_size
from flowstate.storage.compression import check_codec, compress
from flowstate.storage.format import (
    METADATA_FILE,
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

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _Inspection:
    verdict: Valid[CheckpointMetadata] | Invalid
    status: CheckpointStatus
    metadata: CheckpointMetadata | None
    """The parsed metadata when it is the checkpoint's own, even if one of its files is bad."""


class CheckpointCatalogue:
    """``CheckpointStorage`` (and ``InspectableStorage``) over ``store`` (see the module rules).

    One instance may be shared by threads: tasks writing state and shared files concurrently, the
    coordinator writing metadata and discarding checkpoints. The reference counts of shared files
    are guarded by a lock.
    """

    __slots__ = ("_cache", "_lock", "_registry", "_store")

    def __init__(self, store: BlobStore, *, cache_dir: str | os.PathLike[str] | None = None) -> None:
        """Count the shared files referenced by every checkpoint in ``store`` whose metadata is
        valid. ``cache_dir`` is where ``local_path`` keeps downloaded copies (rule 6)."""
        self._store = store
        self._cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "flowstate-cache"
        self._lock = threading.Lock()
        self._registry = SharedStateRegistry.from_metadata(self._valid_metadata())

    @property
    def store(self) -> BlobStore:
        return self._store

    # --- writing -------------------------------------------------------------------------------

    def write_state(
        self, checkpoint_id: CheckpointId, name: str, data: bytes, *, codec: str = "none"
    ) -> StateHandle:
        """Make ``data``, compressed with ``codec``, durable as ``chk-<id>/<name>`` (contract rule 1).
        ``ValueError``, and nothing written, for a bad name, codec or id."""
        check_state_name(name)
        check_codec(codec)
        check_checkpoint_id(checkpoint_id)
        path = f"{checkpoint_dir_name(checkpoint_id)}/{name}"
        size, sha256 = self._store.put(path, compress(codec, data), torn=fpn.STORAGE_STATE_MID_WRITE)
        return StateHandle(path, size, sha256, codec)

    def write_shared(self, key: str, source: bytes | os.PathLike[str]) -> StateHandle:
        """Make ``source`` (bytes, or the path of a file to copy) durable as ``shared/<key>``, as
        given (codec ``"none"``), and return its handle (contract rule 6, module rule 4)."""
        check_key(key)
        path = shared_path(key)
        body: Body = bytes(source) if isinstance(source, bytes | bytearray | memoryview) else Path(source)
        existing = self._store.head(path)
        if existing is not None:
            with self._lock:
                referenced = self._registry.count(path) > 0
            size = body_size(body)
            same = False
            if existing.size == size:
                sha256 = _digest(body)
                stored = existing.sha256
                if stored is None:
                    scanned = self._store.scan(path)
                    stored = scanned.sha256 if scanned is not None else None
                same = stored == sha256
            if referenced:
                if same:
                    return StateHandle(path, size, sha256)
                raise FileExistsError(
                    f"{path} already holds other bytes, referenced by a checkpoint: a shared "
                    "file is immutable, so its key must name its content"
                )
        size, sha256 = self._store.put(path, body, torn=fpn.STORAGE_SHARED_MID_UPLOAD)
        return StateHandle(path, size, sha256)

    def write_shared_many(
        self, items: Iterable[tuple[str, bytes | os.PathLike[str]]]
    ) -> list[StateHandle]:
        """``write_shared`` of every ``(key, source)``, ``workers`` at a time; the handles in the
        order given. Keys are validated (and must differ) before anything is written; when writes
        fail, the first failure is raised once every write has ended."""
        items = list(items)
        check_keys([key for key, _ in items])
        if len(items) <= 1:
            return [self.write_shared(key, source) for key, source in items]
        with ThreadPoolExecutor(min(self._store.workers, len(items)), thread_name_prefix="shared-upload") as pool:
            futures = [pool.submit(self.write_shared, key, source) for key, source in items]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return [future.result() for future in futures]

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        """Complete the checkpoint by publishing its ``_metadata`` (contract rule 2, module rule 1).

        Before anything is written: ``ValueError`` if the metadata would not read back equal (see
        ``encode_metadata``) or references a file it may not (``format.reference_problem``);
        ``CorruptCheckpointError`` if a file it references that no checkpoint counts yet is missing
        or has another size. The second check is cheap (no hashing) and keeps a caller's mistake
        from publishing a checkpoint that cannot be restored, which the coordinator would then let
        subsume the older, valid ones. The checkpoint's shared files are counted (under the same
        lock as ``discard`` deletes them) before the metadata is written: a shared file the check
        found cannot be deleted before the checkpoint that references it is discarded.
        """
        raw = encode_metadata(metadata)
        checkpoint_id = metadata.checkpoint_id
        problem = reference_problem(metadata)
        if problem is not None:
            raise ValueError(f"cannot complete checkpoint {checkpoint_id}: {problem}")
        with self._lock:
            unknown = [h for h in metadata.files() if self._registry.count(h.path) == 0]
            for handle, found in zip(unknown, self._parallel(lambda h: self._store.head(h.path), unknown), strict=True):
                if found is None:
                    raise CorruptCheckpointError(f"cannot complete checkpoint {checkpoint_id}: {handle.path} is missing")
                if found.size != handle.size:
                    raise CorruptCheckpointError(
                        f"cannot complete checkpoint {checkpoint_id}: {handle.path} has "
                        f"{found.size} bytes, its handle says {handle.size}"
                    )
            self._registry.register(checkpoint_id, shared_files(metadata))
        path = f"{checkpoint_dir_name(checkpoint_id)}/{METADATA_FILE}"
        written = self._store.put_if_absent(
            path, raw, torn=fpn.STORAGE_METADATA_TORN, before_publish=fpn.STORAGE_METADATA_BEFORE_RENAME
        )
        if not written and self._store.get(path) != raw:
            raise FileExistsError(
                f"{path} already exists with other content: checkpoint {checkpoint_id} was "
                "completed before, and a completed checkpoint is never replaced"
            )

    # --- reading -------------------------------------------------------------------------------

    def read_state(self, handle: StateHandle) -> bytes:
        """The bytes given to ``write_state`` for ``handle``, verified again (contract rule 4).
        ``CorruptCheckpointError`` naming the file when it is missing or its size or SHA-256 differs
        from the handle (or it does not decompress); ``ValueError`` for a path outside the root or
        an unknown codec."""
        return verified_state(handle, self._store.get)

    def local_path(self, handle: StateHandle) -> Path:
        """A verified local file holding ``handle``'s bytes as stored (contract rule 4, module
        rule 6); the same errors as ``read_state``."""
        problem = relative_path_problem(handle.path)
        if problem is not None:
            raise ValueError(problem)
        in_place = self._store.local_file(handle.path)
        if in_place is not None:
            problem = self.file_problem(handle)
            if problem is not None:
                raise CorruptCheckpointError(problem)
            return in_place
        cached = self._cache / handle.sha256
        if _verifies(cached, handle):
            return cached
        self._cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self._cache / f".{handle.sha256}.tmp-{secrets.token_hex(8)}"
        try:
            with open(temporary, "xb") as file:
                scanned = self._store.scan(handle.path, file.write)
            if scanned is None:
                raise CorruptCheckpointError(f"{handle.path} is missing")
            problem = hash_problem(handle, scanned.size, scanned.sha256)
            if problem is not None:
                raise CorruptCheckpointError(problem)
            os.replace(temporary, cached)
        finally:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
        return cached

    def restore_candidates(self) -> Iterator[Valid[CheckpointMetadata] | Invalid]:
        """Every checkpoint directory, newest first, each validated only when it is reached
        (contract rule 3). The directories are listed when iteration starts."""
        for checkpoint_id, directory in reversed(self._checkpoint_directories()):
            yield self._inspect(checkpoint_id, directory).verdict

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint directory, oldest first, each fully validated. ``metadata`` is set for a
        completed checkpoint and for a corrupt one whose metadata is intact but one of whose files
        is not; ``bytes_on_disk`` counts every file in the directory (temporary ones included)."""
        infos = []
        for checkpoint_id, directory in self._checkpoint_directories():
            inspection = self._inspect(checkpoint_id, directory)
            reason = inspection.verdict.reason if isinstance(inspection.verdict, Invalid) else None
            size = sum(found.size for found in self._store.list(directory))
            infos.append(CheckpointInfo(checkpoint_id, inspection.status, reason, inspection.metadata, size))
        return infos

    def highest_id(self) -> int:
        """The highest id of any checkpoint directory, complete or not; 0 when there is none."""
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
        """Why the file of ``handle`` is missing, unreadable or differs in size or SHA-256, or
        ``None``. A store that cannot be reached raises ``ObjectStoreError`` (module rule 2)."""
        try:
            scanned = self._store.scan(handle.path, expected_size=handle.size)
        except ObjectStoreError:
            raise
        except OSError as error:
            return f"cannot read {handle.path}: {error.strerror}"
        if scanned is None:
            return f"{handle.path} is missing"
        return hash_problem(handle, scanned.size, scanned.sha256)

    def list_files(self) -> list[StoredFile]:
        """Every file in the checkpoint directories and under ``shared/``, in path order (other
        files of the root, such as the job's lock file, are not the storage's)."""
        tops = [directory for _, directory in self._all_checkpoint_directories()] + [SHARED_DIR]
        return sorted((found for top in tops for found in self._store.list(top)), key=lambda f: f.path)

    # --- removing ------------------------------------------------------------------------------

    def discard(self, checkpoint_id: CheckpointId) -> None:
        """Delete the checkpoint's directory, metadata first (module rule 3), then the shared files
        no other checkpoint references (contract rules 6 and 7). Missing is fine."""
        for found_id, directory in self._all_checkpoint_directories():
            if found_id == checkpoint_id:
                self._remove_directory(directory)
        self._release(checkpoint_id)

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        """Delete every checkpoint directory not in ``keep`` whose metadata is missing or invalid,
        and temporary files in the valid ones not in ``keep``; return the deleted ids, oldest first.
        A deleted checkpoint releases its shared files as ``discard`` does.

        ``keep`` must hold every checkpoint still being written. Only the metadata is checked (no
        hashing of state files): a checkpoint with intact metadata but a damaged state file is left
        for ``discard``, as evidence of the damage.
        """
        removed: list[CheckpointId] = []
        for checkpoint_id, directory in self._checkpoint_directories():
            if checkpoint_id in keep:
                continue
            if isinstance(self._inspect(checkpoint_id, directory, verify_files=False).verdict, Valid):
                self._store.delete(self._temporary_files(directory, older_than=None))
            else:
                self._remove_directory(directory)
                removed.append(checkpoint_id)
        for checkpoint_id in removed:
            self._release(checkpoint_id)
        return removed

    def sweep_orphans(self, grace_seconds: float, now: float) -> list[str]:
        """Delete every file under ``shared/`` that no valid metadata references (nor any checkpoint
        being completed by this instance) and that was last written more than ``grace_seconds``
        before ``now`` (wall-clock seconds since the epoch), and temporary files that old in
        checkpoint directories (contract rule 8). Returns the deleted paths, sorted."""
        if grace_seconds < 0:
            raise ValueError(f"the grace period cannot be negative, not {grace_seconds!r}")
        cutoff = now - grace_seconds
        referenced = {h.path for metadata in self._valid_metadata() for h in shared_files(metadata)}
        with self._lock:
            referenced |= self._registry.referenced()
            doomed = [f.path for f in self._store.list(SHARED_DIR) if f.path not in referenced and f.modified < cutoff]
            self._store.delete(doomed)
        for _, directory in self._all_checkpoint_directories():
            temporary = self._temporary_files(directory, older_than=cutoff)
            self._store.delete(temporary)
            doomed.extend(temporary)
        return sorted(doomed)

    # --- internals -----------------------------------------------------------------------------

    def _release(self, checkpoint_id: CheckpointId) -> None:
        """Forget ``checkpoint_id``'s references and delete the shared files it held last."""
        with self._lock:
            self._store.delete(self._registry.unregister(checkpoint_id))

    def _remove_directory(self, directory: str) -> None:
        """Module rule 3: the metadata first."""
        self._store.delete([f"{directory}/{METADATA_FILE}"])
        self._store.delete_directory(directory)

    def _temporary_files(self, directory: str, *, older_than: float | None) -> list[str]:
        return [
            found.path
            for found in self._store.list(directory)
            if "/" not in found.path[len(directory) + 1:]
            and TEMPORARY_NAME.fullmatch(found.path[len(directory) + 1:])
            and (older_than is None or found.modified < older_than)
        ]

    def _parallel(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        items = list(items)
        if len(items) <= 1 or self._store.workers <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(min(self._store.workers, len(items)), thread_name_prefix="storage") as pool:
            return list(pool.map(function, items))

    def _all_checkpoint_directories(self) -> list[tuple[CheckpointId, str]]:
        found = []
        for name in self._store.directories():
            checkpoint_id = parse_checkpoint_dir_name(name)
            if checkpoint_id is not None:
                found.append((checkpoint_id, name))
        return found

    def _checkpoint_directories(self) -> list[tuple[CheckpointId, str]]:
        """One directory per id, oldest first. Should two names give the same id (``chk-7`` and
        ``chk-000007``), the one ``format`` writes wins, then the first by name."""
        chosen: dict[CheckpointId, str] = {}
        for checkpoint_id, name in sorted(
            self._all_checkpoint_directories(),
            key=lambda item: (item[1] != checkpoint_dir_name(item[0]), item[1]),
        ):
            chosen.setdefault(checkpoint_id, name)
        return sorted(chosen.items())

    def _valid_metadata(self) -> list[CheckpointMetadata]:
        # A missing, corrupt or unreadable metadata is skipped. A store that cannot be reached
        # raises: skipping a checkpoint it could not read would let its shared files look unreferenced.
        def load(item: tuple[CheckpointId, str]) -> CheckpointMetadata | None:
            try:
                return self._load_metadata(*item)
            except ObjectStoreError:
                raise
            except (OSError, CorruptCheckpointError):
                return None

        return [m for m in self._parallel(load, self._checkpoint_directories()) if m is not None]

    def _load_metadata(self, checkpoint_id: CheckpointId, directory: str) -> CheckpointMetadata:
        where = f"{directory}/{METADATA_FILE}"
        raw = self._store.get(where)
        try:
            metadata = decode_metadata(raw)
        except CorruptCheckpointError as error:
            raise CorruptCheckpointError(f"{where}: {error}") from None
        if metadata.checkpoint_id != checkpoint_id:
            raise CorruptCheckpointError(
                f"{where} names checkpoint {metadata.checkpoint_id}, not {checkpoint_id} of its directory"
            )
        return metadata

    def _inspect(self, checkpoint_id: CheckpointId, directory: str, *, verify_files: bool = True) -> _Inspection:
        def corrupt(reason: str, metadata: CheckpointMetadata | None = None) -> _Inspection:
            return _Inspection(Invalid(checkpoint_id, reason), CheckpointStatus.CORRUPT, metadata)

        try:
            metadata = self._load_metadata(checkpoint_id, directory)
        except FileNotFoundError:
            return _Inspection(
                Invalid(checkpoint_id, NO_METADATA, CandidateStatus.INCOMPLETE), CheckpointStatus.INCOMPLETE, None
            )
        except CorruptCheckpointError as error:
            return corrupt(str(error))
        except ObjectStoreError:
            raise
        except OSError as error:
            return corrupt(f"cannot read {directory}/{METADATA_FILE}: {error.strerror}")
        if verify_files:
            for problem in self._parallel(self.file_problem, metadata.files()):
                if problem is not None:
                    return corrupt(problem, metadata)
        return _Inspection(Valid(checkpoint_id, metadata), CheckpointStatus.COMPLETED, metadata)


def _digest(body: Body) -> str:
    if isinstance(body, bytes):
        return hashlib.sha256(body).hexdigest()
    with open(body, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _verifies(path: Path, handle: StateHandle) -> bool:
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size != handle.size:
                return False
            return hashlib.file_digest(file, "sha256").hexdigest() == handle.sha256
    except FileNotFoundError:
        return False
