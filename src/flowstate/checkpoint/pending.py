"""A checkpoint that was triggered and is collecting acknowledgements (Flink's ``PendingCheckpoint``).

A pending checkpoint knows which tasks still owe an acknowledgement. Acknowledging returns a new
value and an ``AckResult``; the old value is unchanged. When every task has acknowledged, it becomes
a ``CompletedCheckpoint`` once the runtime has made its metadata durable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from flowstate.checkpoint.completed import CompletedCheckpoint
from flowstate.checkpoint.ids import CheckpointId, TaskId


class AckResult(StrEnum):
    """What became of one acknowledgement."""

    SUCCESS = "success"
    """Recorded: the task had not acknowledged this checkpoint before."""
    DUPLICATE = "duplicate"
    """The task had already acknowledged this checkpoint; the first acknowledgement stands."""
    UNKNOWN = "unknown"
    """No checkpoint with this id was ever triggered, or the task is not part of the job."""
    DISCARDED = "discarded"
    """The checkpoint was triggered but is no longer pending (aborted or already complete). The state
    the task wrote for it must be discarded."""


def _frozen(m: Mapping[TaskId, object]) -> Mapping[TaskId, object]:
    return MappingProxyType(dict(m))


@dataclass(frozen=True, slots=True)
class PendingCheckpoint:
    checkpoint_id: CheckpointId
    trigger_time: float
    final: bool
    not_yet_acknowledged: frozenset[TaskId]
    acknowledged: Mapping[TaskId, object] = field(default_factory=lambda: _frozen({}))
    savepoint: bool = False

    @property
    def fully_acknowledged(self) -> bool:
        return not self.not_yet_acknowledged

    def acknowledge(self, task: TaskId, state: object) -> tuple[PendingCheckpoint, AckResult]:
        """Record ``task``'s acknowledgement carrying its ``state`` (an opaque handle)."""
        if task in self.acknowledged:
            return self, AckResult.DUPLICATE
        if task not in self.not_yet_acknowledged:
            return self, AckResult.UNKNOWN
        acked = dict(self.acknowledged)
        acked[task] = state
        return (
            replace(self, not_yet_acknowledged=self.not_yet_acknowledged - {task}, acknowledged=_frozen(acked)),
            AckResult.SUCCESS,
        )

    def to_completed(self, completion_time: float) -> CompletedCheckpoint:
        if not self.fully_acknowledged:
            raise ValueError(
                f"checkpoint {self.checkpoint_id} still waits for {sorted(self.not_yet_acknowledged)}"
            )
        return CompletedCheckpoint(
            checkpoint_id=self.checkpoint_id,
            trigger_time=self.trigger_time,
            completion_time=completion_time,
            final=self.final,
            task_states=self.acknowledged,
            savepoint=self.savepoint,
        )
