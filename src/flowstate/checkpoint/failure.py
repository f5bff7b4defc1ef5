"""Why a checkpoint did not complete. A decline or an abort always carries one of these reasons."""

from __future__ import annotations

from enum import Enum


class CheckpointFailureReason(Enum):
    """The reason a checkpoint was declined or aborted; the value is the sentence shown to users."""

    SUBSUMED_BY_NEWER_BARRIER = "a barrier of a newer checkpoint arrived before this one was aligned"
    SUBSUMED = "a newer checkpoint completed first"
    EXPIRED = "the checkpoint was not acknowledged by every task before the timeout"
    TASK_FAILURE = "a task failed while the checkpoint was pending"
    SNAPSHOT_FAILURE = "a task failed to snapshot or write its state"
    STORAGE_FAILURE = "writing the checkpoint metadata failed"
    JOB_RESTARTING = "the job is restarting from an earlier checkpoint"
    CANCELLED_BY_COORDINATOR = "the coordinator aborted the checkpoint"
    IN_FLIGHT_LIMIT = "the in-flight data to persist exceeded the configured bound (max_inflight_bytes)"
