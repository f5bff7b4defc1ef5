"""A checkpoint whose every task acknowledged (Flink's ``CompletedCheckpoint``).

It is *complete* for the runtime only once its metadata is durable in checkpoint storage; until then
the coordinator holds it as "storing" and it must not be restored from or notified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flowstate.checkpoint.ids import CheckpointId, TaskId


@dataclass(frozen=True, slots=True)
class CompletedCheckpoint:
    checkpoint_id: CheckpointId
    trigger_time: float
    completion_time: float
    final: bool
    task_states: Mapping[TaskId, object]
    """Each task's acknowledged state handle, as the task sent it."""
    savepoint: bool = False
    """A savepoint: owned by the user, written to its own directory, never subsumed nor discarded."""

    @property
    def duration(self) -> float:
        return self.completion_time - self.trigger_time
