"""What every task of an attempt shares: the mode, the storage its snapshots go to, where its reports
go, the pool its snapshot writes run on, failpoints, clock and the snapshot settings."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

from flowstate.clock import Clock
from flowstate.config import Mode
from flowstate.failpoints import Failpoints
from flowstate.storage.savepoint import SnapshotTargets
from flowstate.transport.ports import Reports


@dataclass(frozen=True, slots=True)
class TaskEnv:
    mode: Mode
    storage: SnapshotTargets | None
    """Where snapshots go: the job's checkpoint storage, each savepoint to its own directory."""
    reports: Reports
    snapshot_pool: Executor
    failpoints: Failpoints
    clock: Clock
    batch_size: int
    alignment_timeout: float | None = None
    max_inflight_bytes: int = 64 * 1024 * 1024
    compression: str = "none"
    """Codec of the task's state files (recorded in their handles)."""
    incremental: bool = True
    """Files of keyed snapshots are uploaded once as shared files and referenced by later checkpoints;
    otherwise every checkpoint copies them into its own directory."""
