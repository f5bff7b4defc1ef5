"""What a run of a job reports: ``JobResult`` (also read by ``flowstate status`` and the tests),
per-checkpoint figures, and how a failure is described in the message of a failed job."""

from __future__ import annotations

from dataclasses import dataclass, field

from flowstate.config import Mode
from flowstate.errors import FlowstateError
from flowstate.storage.base import CheckpointMetadata


@dataclass
class JobResult:
    """What happened in a run of a job."""

    job: str
    mode: Mode
    restored_from: list[int | None] = field(default_factory=list)
    """For each attempt, the checkpoint id it restored from (``None``: from scratch)."""
    checkpoints_completed: int = 0
    last_checkpoint: int | None = None
    restarts: int = 0
    records: int = 0
    """Records read by the sources in the last attempt (``records_read[-1]``)."""
    records_read: list[int] = field(default_factory=list)
    """For each attempt, the records its sources read from the positions it restored on (for an
    attempt that failed, the last figure its tasks reported)."""
    records_restored: list[int | None] = field(default_factory=list)
    """For each attempt, the records the sources had read up to the barriers of the checkpoint it
    restored, over every attempt before it (0 from scratch; ``None`` when the checkpoint does not
    record it)."""
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    checkpoint_stats: list[CheckpointStats] = field(default_factory=list)
    """One entry per checkpoint completed in this run, oldest first."""
    checkpoints_failed: int = 0
    """Checkpoints aborted in this run (expired, declined, storage failures)."""
    restored_savepoint: str | None = None
    """The savepoint an attempt restored from (``--from-savepoint``), if one did."""
    savepoints: list[str] = field(default_factory=list)
    """Directories of the savepoints completed in this run, oldest first."""
    executor: str = "threads"
    """Where the tasks ran: ``threads``, ``processes`` or ``ray``."""
    workers: int = 0
    """Worker processes of each attempt (0: the tasks ran as threads of this process)."""
    stopped: bool = False
    """The job ended on a stop (``flowstate stop``, ``JobControl.stop``, SIGTERM under ``flowstate
    run``) after a final checkpoint that committed its output, not because its input ended."""

    def count_attempt(self, restored: CheckpointMetadata | None) -> None:
        """Opens the record counts of a new attempt that restores ``restored`` (``None``: from scratch)."""
        if restored is None:
            self.records_restored.append(0)
        else:
            self.records_restored.append(restored.source_records)
        self.records_read.append(0)
        self.records = 0

    @property
    def records_total(self) -> int | None:
        """The records processed in total by the last attempt: those up to its restored checkpoint
        plus those it read itself (``None`` when the checkpoint does not record its figure). A run
        that completes has read its whole input exactly once by this count, however often it failed."""
        restored = self.records_restored[-1] if self.records_restored else 0
        return None if restored is None else restored + self.records

    def records_summary(self) -> str:
        """What the records figures of the last attempt count, in words."""
        checkpoint = self.restored_from[-1] if self.restored_from else None
        if checkpoint is None:
            return f"{self.records:,} records read"
        total = self.records_total
        if total is None:
            return f"{self.records:,} records read since the restore of checkpoint {checkpoint}"
        return (f"{total:,} records processed in total ({total - self.records:,} up to checkpoint {checkpoint}, "
                f"{self.records:,} read since its restore)")


@dataclass(frozen=True, slots=True)
class CheckpointStats:
    checkpoint_id: int
    duration: float
    """Seconds from trigger to the last acknowledgement."""
    max_alignment: float
    """The longest time a task spent between the checkpoint's first barrier and its snapshot."""
    channel_state_bytes: int
    """In-flight bytes persisted with the checkpoint, all tasks together."""
    state_bytes: int


class AttemptFailed(Exception):
    """An attempt of the job failed; the restart strategy decides whether another one starts."""

    def __init__(self, what: str, cause: BaseException | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.cause = cause
        self.next_id: int | None = None
        """The next unused checkpoint id when the attempt failed (set by the coordinator's shell)."""


def describe_error(error: BaseException) -> str:
    """``error`` as the message of a failed job shows it: flowstate's own errors name what failed
    (operator, record, cause) in their text; any other keeps its type, which its text alone may not
    say (``KeyError: 'x'``, ``OSError: [Errno 28] …``)."""
    error_type = getattr(error, "error_type", "")  # an error sent from a worker as text
    if error_type:
        return f"{error_type}: {error}"
    if isinstance(error, FlowstateError):
        return str(error)
    return f"{type(error).__name__}: {error}"
