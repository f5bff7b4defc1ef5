"""Identifiers shared by the checkpoint protocol and the runtime.

Each id is a ``NewType`` so that a checkpoint id cannot be passed where a channel index is wanted.
"""

from __future__ import annotations

from typing import NewType

CheckpointId = NewType("CheckpointId", int)
"""One checkpoint of a job. Ids start at 1 and increase strictly over the job's whole life, across
restarts: a restarted job continues after the highest id found in its checkpoint directory."""

TaskId = NewType("TaskId", str)
"""One parallel subtask of the job graph, written ``"<vertex>#<subtask>"``; it acknowledges checkpoints."""

ChannelIndex = NewType("ChannelIndex", int)
"""The position of one input channel within a task's input gate (0-based)."""

RequestId = NewType("RequestId", int)
"""One on-demand checkpoint, savepoint or stop asked of the coordinator while the job runs, numbered
from 1 in the order asked."""

OperatorId = NewType("OperatorId", str)
"""The stable id (uid) of one operator; its state in a checkpoint is filed under it."""


def task_id(vertex: str, subtask: int) -> TaskId:
    """The task id of subtask ``subtask`` of vertex ``vertex``."""
    return TaskId(f"{vertex}#{subtask}")
