"""Messages between tasks and the job runner (the imperative shell around the coordinator).

Mail goes to a task's mailbox and is read before any record; reports go to the runner's inbox.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.storage.base import TaskState

# ---- mail: runner → task ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trigger:
    """To a source task: snapshot your position and inject ``barrier``."""

    barrier: CheckpointBarrier


@dataclass(frozen=True, slots=True)
class Complete:
    """``checkpoint_id`` is complete. Sinks publish what it pre-committed only when ``commit`` (not
    for a savepoint that leaves the job running). After a ``final`` one, tasks end with their input."""

    checkpoint_id: CheckpointId
    final: bool
    commit: bool = True


@dataclass(frozen=True, slots=True)
class Aborted:
    checkpoint_id: CheckpointId


# ---- reports: task → runner ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    task: TaskId
    checkpoint_id: CheckpointId
    state: TaskState
    records: int = 0
    """A source task: the records it read in this attempt before the checkpoint's barrier, the
    position its state holds (0 for any other task)."""


@dataclass(frozen=True, slots=True)
class Decline:
    task: TaskId
    checkpoint_id: CheckpointId
    reason: CheckpointFailureReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SourceEnded:
    task: TaskId


CheckpointReport = Ack | Decline | SourceEnded
"""The reports the runner turns into facts for the checkpoint coordinator."""


@dataclass(frozen=True, slots=True)
class TaskFinished:
    task: TaskId


@dataclass(frozen=True, slots=True)
class TaskFailed:
    task: TaskId
    error: BaseException
