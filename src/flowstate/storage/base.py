"""Checkpoint storage: the port through which tasks and the coordinator make checkpoints durable.

Layout, the same in every store (paths are POSIX, relative to the storage root)::

    chk-000001/<name>          state files of checkpoint 1, written by ``write_state``
    chk-000001/_metadata       written last; its presence completes checkpoint 1
    shared/<key>               immutable files that several checkpoints may reference
                               (incremental checkpoints), written by ``write_shared``

Contract of every implementation (the checkpoint catalogue, ``storage.catalogue``, over any blob
store):

1. ``write_state`` returns only when the bytes are durable under their final name (written to a
   temporary name, fsynced, renamed, directory fsynced; on an object store, one successful PUT).
   The bytes are compressed with ``codec`` first; the returned ``StateHandle`` carries the codec and
   the size and SHA-256 of the bytes *as stored*, so that verification never needs to decompress.
2. ``write_metadata`` is called last, after every file of the checkpoint is durable; when it
   returns, the metadata is durable and the checkpoint is complete. The metadata carries its own
   checksum and the handle (size, checksum) of every file it references. Every file a checkpoint
   references lies in its own directory or under ``shared/``; a savepoint references nothing under
   ``shared/`` (it is self-contained). ``write_metadata`` refuses (``ValueError``) metadata that
   breaks these rules, and (``CorruptCheckpointError``) metadata naming a file that is missing.
3. ``restore_candidates`` yields checkpoints newest first, each validated when it is reached: its
   metadata parses and its checksum matches, and every referenced file (state and shared) exists
   with the recorded size and checksum. An invalid one is yielded as ``Invalid`` with a reason,
   never as ``Valid``.
4. ``read_state`` verifies size and checksum again, raises ``CorruptCheckpointError`` on mismatch
   and returns the bytes decompressed (what was given to ``write_state``). ``local_path`` verifies
   in the same way and returns a readable local file holding the bytes as stored.
5. ``discard`` is idempotent. A directory without valid metadata is never restored from.
6. **Shared files.** ``write_shared(key, source)`` makes ``source`` durable as ``shared/<key>`` and
   is idempotent: when the file already holds the same bytes it is not written again. A key names
   content: writing other bytes under a key that a checkpoint references raises
   ``FileExistsError``. The storage keeps a reference count per shared file
   (``SharedStateRegistry``), rebuilt from every valid metadata when it is opened and updated by
   ``write_metadata`` (which counts the checkpoint before its metadata is written) and ``discard``.
   ``discard(n)`` deletes the metadata of ``n`` first, then its directory, then every shared file
   that no remaining checkpoint references. Hence **a shared file is deleted only after every
   checkpoint that references it has been discarded.**
7. **The caller's side of rule 6.** ``discard`` is called only for a checkpoint subsumed by a newer
   durable one, or for one that was aborted or found invalid, never for one that may still be
   restored from. Savepoints are never discarded by retention (only on request) and share no file.
   One writer per storage root (the job holds the directory lock): the reference counts know the
   checkpoints of this instance and those present when it was opened.
8. ``sweep_orphans(grace_seconds, now)`` deletes shared files that no valid metadata references
   and that are older than ``grace_seconds`` at wall-clock time ``now`` (debris of crashed uploads
   and aborted checkpoints), and stale temporary files. ``grace_seconds`` must exceed the longest
   time between the upload of a shared file and the metadata of the checkpoint that references it
   (at least the checkpoint timeout); a younger file may belong to a checkpoint in progress.
9. Errors: a failing disk or object store raises ``OSError`` (the object-store adapter raises
   ``ObjectStoreError``, an ``OSError``, once its retries are exhausted); damaged or missing data
   raises ``CorruptCheckpointError``; a caller's mistake (bad name, key or codec) ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.checkpoint.restore import Invalid, Valid
from flowstate.kinds import NodeKind


class CorruptCheckpointError(Exception):
    """A checkpoint file is missing, truncated or does not match its checksum."""


class ObjectStoreError(OSError):
    """An object store failed a request, after the retries of its client."""


@dataclass(frozen=True, slots=True)
class StateHandle:
    """One durable file of a checkpoint."""

    path: str
    """POSIX path relative to the storage root, e.g. ``chk-000003/count#0.state`` or
    ``shared/count#0/000042.sst``."""
    size: int
    """Bytes as stored (after compression)."""
    sha256: str
    """SHA-256 (lowercase hex) of the bytes as stored."""
    codec: str = "none"
    """Compression of the stored bytes: ``"none"`` or ``"zstd"`` (see ``compression``)."""


@dataclass(frozen=True, slots=True)
class TaskState:
    """What one task acknowledged for one checkpoint."""

    task: TaskId
    vertex: str
    subtask: int
    handle: StateHandle | None
    """``None`` when no operator of the task has state."""
    sync_seconds: float = 0.0
    """Time the task spent on the synchronous part of its snapshot."""
    async_seconds: float = 0.0
    """Time the asynchronous part (serialise, write, fsync) took."""
    alignment_seconds: float = 0.0
    """Time from the first barrier of the checkpoint at this task to its snapshot."""
    channel_state_bytes: int = 0
    """Bytes of in-flight records persisted with the checkpoint (unaligned checkpoints)."""
    shared: tuple[StateHandle, ...] = ()
    """Further files this task's state references: shared files (under ``shared/``, possibly
    uploaded for an earlier checkpoint) or, for a savepoint, files in its own directory."""
    bytes_written: int = 0
    """Bytes this task uploaded for this checkpoint: its state file and the shared files that were
    new (incremental size)."""
    full_size: int = 0
    """Bytes of this task's whole state: its state file and every file in ``shared``."""

    def files(self) -> tuple[StateHandle, ...]:
        """Every file this task's state references: ``handle`` (if any), then ``shared``."""
        return ((self.handle,) if self.handle is not None else ()) + self.shared


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    """A stateful operator of the job that wrote a checkpoint."""

    name: str
    kind: NodeKind
    vertex: str
    """The vertex (operator chain) it ran in."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What a checkpoint records of the job that wrote it, so that a restore into a changed job can
    name an operator that is gone and replay channel state only into unchanged inputs."""

    operators: Mapping[str, OperatorRecord]
    """Uid → every stateful operator."""
    inputs: Mapping[str, tuple[str, ...]]
    """Vertex → the vertices feeding it, in input order."""


@dataclass(frozen=True, slots=True)
class SavepointOrigin:
    """What identifies a savepoint wherever its directory is moved."""

    checkpoint_id: CheckpointId
    completion_time: float
    path: str | None = None
    """Where the savepoint was when the run restored it (for people: it may have moved since)."""

    def same_savepoint(self, other: SavepointOrigin) -> bool:
        """Whether both name one savepoint: the same id and completion time, wherever it was."""
        return (self.checkpoint_id, self.completion_time) == (other.checkpoint_id, other.completion_time)


@dataclass(frozen=True, slots=True)
class CheckpointMetadata:
    """Everything needed to restore a job from one completed checkpoint."""

    checkpoint_id: CheckpointId
    job: str
    mode: str
    final: bool
    trigger_time: float
    """Wall-clock time (seconds since the epoch) when the checkpoint was triggered."""
    completion_time: float
    """Wall-clock time when every task had acknowledged."""
    max_parallelism: int
    parallelism: Mapping[str, int]
    """Vertex name → parallelism of that vertex when the checkpoint was taken."""
    tasks: tuple[TaskState, ...]
    graph: JobRecord | None = None
    """The job's stateful operators and inputs; ``None`` when not recorded."""
    savepoint: bool = False
    """A savepoint is self-contained: it references no file under ``shared/``, and retention never
    discards it."""
    source_records: int | None = None
    """Records the sources had read up to the checkpoint's barriers, over every attempt that led to
    it; ``None`` when not recorded."""
    origin: SavepointOrigin | None = None
    """The savepoint the run that wrote the checkpoint was restored from, if any."""

    @property
    def state_size(self) -> int:
        """Bytes of the tasks' own state files (not counting shared files)."""
        return sum(t.handle.size for t in self.tasks if t.handle is not None)

    @property
    def duration(self) -> float:
        return self.completion_time - self.trigger_time

    @property
    def bytes_written(self) -> int:
        """Bytes the tasks reported uploading for this checkpoint (incremental size)."""
        return sum(t.bytes_written for t in self.tasks)

    @property
    def full_size(self) -> int:
        """Bytes of the whole state as the tasks reported it (state files and shared files)."""
        return sum(t.full_size for t in self.tasks)

    @property
    def max_sync_seconds(self) -> float:
        return max((t.sync_seconds for t in self.tasks), default=0.0)

    @property
    def max_async_seconds(self) -> float:
        return max((t.async_seconds for t in self.tasks), default=0.0)

    def files(self) -> tuple[StateHandle, ...]:
        """Every file the checkpoint references, each once, in task order."""
        return tuple(dict.fromkeys(h for t in self.tasks for h in t.files()))


class CheckpointStatus(StrEnum):
    """What ``flowstate checkpoints list`` says of a checkpoint directory."""

    COMPLETED = "completed"
    """Its metadata and every file it references verify."""
    INCOMPLETE = "incomplete"
    """No metadata: in progress, aborted or crashed."""
    CORRUPT = "corrupt"
    """Its metadata, or a file it references, fails verification."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One line of ``flowstate checkpoints list``."""

    checkpoint_id: CheckpointId
    status: CheckpointStatus
    reason: str | None
    metadata: CheckpointMetadata | None
    bytes_on_disk: int
    """Bytes of the checkpoint's own directory (shared files are not counted)."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file found in storage (for verification and orphan detection)."""

    path: str
    """POSIX path relative to the storage root."""
    size: int
    modified: float
    """Wall-clock time (seconds since the epoch) of its last modification."""


class CheckpointStorage(Protocol):
    def write_state(
        self, checkpoint_id: CheckpointId, name: str, data: bytes, *, codec: str = "none"
    ) -> StateHandle:
        """Rule 1. ``name`` is a file name (no ``/``), unique within the checkpoint."""
        ...

    def write_shared(self, key: str, source: bytes | os.PathLike[str]) -> StateHandle:
        """Rule 6. ``key`` is one or two segments of ``[A-Za-z0-9._-]`` joined by ``/``."""
        ...

    def write_shared_many(
        self, items: Iterable[tuple[str, bytes | os.PathLike[str]]]
    ) -> list[StateHandle]:
        """``write_shared`` of every ``(key, source)``, several at a time; the handles in the order
        given. Keys are validated (and must differ) before anything is written; when writes fail,
        the first failure is raised once every write has ended."""
        ...

    def read_state(self, handle: StateHandle) -> bytes:
        """Rule 4: the verified, decompressed bytes."""
        ...

    def local_path(self, handle: StateHandle) -> Path:
        """Rule 4: a verified local file holding the bytes as stored (read it, do not change it)."""
        ...

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        """Rule 2."""
        ...

    def restore_candidates(self) -> Iterator[Valid[CheckpointMetadata] | Invalid]:
        """Rule 3, newest first, lazily validated."""
        ...

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint directory, oldest first, each validated."""
        ...

    def highest_id(self) -> int:
        """The highest checkpoint id present, complete or not; 0 when there is none."""
        ...

    def discard(self, checkpoint_id: CheckpointId) -> None:
        """Rules 5-7: delete every file of the checkpoint and the shared files no other checkpoint
        references; no error if it is already gone."""
        ...

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        """Delete every checkpoint not in ``keep`` that has no valid metadata; returns their ids."""
        ...

    def sweep_orphans(self, grace_seconds: float, now: float) -> list[str]:
        """Rule 8; returns the paths deleted, sorted."""
        ...


class InspectableStorage(CheckpointStorage, Protocol):
    """What ``flowstate checkpoints verify`` needs beyond the port: the raw view of the storage."""

    def checkpoint_ids(self) -> list[CheckpointId]:
        """Every checkpoint directory's id, oldest first."""
        ...

    def load_metadata(self, checkpoint_id: CheckpointId) -> CheckpointMetadata:
        """The decoded metadata of ``checkpoint_id``. ``FileNotFoundError`` without metadata,
        ``CorruptCheckpointError`` when it does not decode or names another checkpoint."""
        ...

    def file_problem(self, handle: StateHandle) -> str | None:
        """Why the stored file does not match ``handle`` (missing, size, SHA-256), or ``None``."""
        ...

    def list_files(self) -> list[StoredFile]:
        """Every file under the root, in path order."""
        ...


TaskStates = Mapping[TaskId, TaskState]
