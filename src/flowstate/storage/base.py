"""Checkpoint storage: the port through which tasks and the coordinator make checkpoints durable.

Contract of every adapter:

1. ``write_state`` returns only when the bytes are durable under their final name (written to a
   temporary name, fsynced, renamed, directory fsynced). The returned ``StateHandle`` carries the
   size and SHA-256 of the bytes.
2. ``write_metadata`` is called last, after every state file of the checkpoint is durable; when it
   returns, the metadata is durable and the checkpoint is complete. The metadata carries its own
   checksum and the handle (size, checksum) of every file it references.
3. ``restore_candidates`` yields checkpoints newest first, each validated when it is reached: its
   metadata parses and its checksum matches, and every referenced file exists with the recorded size
   and checksum. An invalid one is yielded as ``Invalid`` with a reason, never as ``Valid``.
4. ``read_state`` verifies size and checksum again and raises ``CorruptCheckpointError`` on mismatch.
5. ``discard`` is idempotent. A directory without valid metadata is never restored from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.checkpoint.restore import Invalid, Valid


class CorruptCheckpointError(Exception):
    """A checkpoint file is missing, truncated or does not match its checksum."""


@dataclass(frozen=True, slots=True)
class StateHandle:
    """One durable file of a checkpoint."""

    path: str
    """POSIX path relative to the storage root, e.g. ``chk-000003/count#0.state``."""
    size: int
    sha256: str


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
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def state_size(self) -> int:
        return sum(t.handle.size for t in self.tasks if t.handle is not None)

    @property
    def duration(self) -> float:
        return self.completion_time - self.trigger_time


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One line of ``flowstate checkpoints list``."""

    checkpoint_id: CheckpointId
    status: str
    """``completed``, ``incomplete`` (no metadata: in progress, aborted or crashed) or ``corrupt``."""
    reason: str | None
    metadata: CheckpointMetadata | None
    bytes_on_disk: int


class CheckpointStorage(Protocol):
    def write_state(self, checkpoint_id: CheckpointId, name: str, data: bytes) -> StateHandle:
        """Rule 1. ``name`` is a file name (no ``/``), unique within the checkpoint."""
        ...

    def read_state(self, handle: StateHandle) -> bytes:
        """Rule 4."""
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
        """Rule 5: delete every file of the checkpoint; no error if it is already gone."""
        ...

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        """Delete every checkpoint not in ``keep`` that has no valid metadata; returns their ids."""
        ...


TaskStates = Mapping[TaskId, TaskState]
