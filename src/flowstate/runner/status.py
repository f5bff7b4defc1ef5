"""What a running job shows of itself: its phase and running tasks (``flowstate status``, read from any
thread through the control endpoint) and the progress line it prints while it runs.

Rules:

1. The runner and its coordinator's shell write a ``RunStatus``; nothing else does. Readers on
   other threads see each field as last written (single attribute writes; no field is derived from
   two others that could be read half-updated).
2. The progress line says what the figures count: records of the last attempt and, after a restore,
   those up to its checkpoint (``JobResult.records_summary``); ``[name] records · share of the input
   (a bar of 20) · rate · checkpoints · restarts``, from a ``JobProgress`` value.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowstate.config import JobConfig
    from flowstate.graph import JobGraph
    from flowstate.runner.result import JobResult


class Phase(StrEnum):
    """Where a run stands, as ``flowstate status`` shows it."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    ENDED = "ended"


@dataclass(slots=True)
class RunStatus:
    """The mutable part of a run's status (rule 1)."""

    phase: Phase = Phase.STARTING
    running_tasks: int = 0


def status_view(job: str, config: JobConfig, graph: JobGraph, status: RunStatus, result: JobResult,
                pid: int) -> dict[str, Any]:
    """What ``flowstate status`` shows, as JSON-ready values."""
    return {
        "job": job,
        "mode": config.mode.value,
        "state": status.phase.value,
        "pid": pid,
        "records": result.records,
        "records_restored": result.records_restored[-1] if result.records_restored else 0,
        "records_total": result.records_total,
        "checkpoints_completed": result.checkpoints_completed,
        "last_checkpoint": result.last_checkpoint,
        "checkpoints_failed": result.checkpoints_failed,
        "restarts": result.restarts,
        "restored_from": result.restored_from[-1] if result.restored_from else None,
        "restored_savepoint": result.restored_savepoint,
        "savepoints": list(result.savepoints),
        "tasks": sum(v.parallelism for v in graph.vertices),
        "running_tasks": status.running_tasks,
        "parallelism": {v.name: v.parallelism for v in graph.vertices},
    }


@dataclass(frozen=True, slots=True)
class JobProgress:
    """What the progress line of a running job shows."""

    job: str
    records: str
    """What was read, as ``JobResult.records_summary()`` says it."""
    rate: float
    """Records per second since the last line (on the final line: over the whole run)."""
    final: bool = False
    done: float | None = None
    """The share of a bounded input read so far, when every source knows its size."""
    checkpoints: int | None = None
    """Checkpoints completed; ``None`` for a job that takes none."""
    last_checkpoint: int | None = None
    last_checkpoint_seconds: float | None = None
    restarts: int = 0


_BAR_WIDTH = 20


def progress_line(progress: JobProgress) -> str:
    """Rule 2: ``[wordcount] 12,000 records · ━━━━━━━━━━╺━━━━━━━━━ 50% of the input · 9,800 rec/s ·
    checkpoints 3 completed (last #3 in 12 ms) · restarts 0``."""
    parts = [f"[{progress.job}] {progress.records}"]
    if progress.done is not None:
        filled = round(min(max(progress.done, 0.0), 1.0) * _BAR_WIDTH)
        parts.append(f"{'━' * filled}{'─' * (_BAR_WIDTH - filled)} {progress.done:.0%} of the input")
    parts.append(f"{progress.rate:,.0f} rec/s" + (" avg" if progress.final else ""))
    if progress.checkpoints is not None:
        took = (f" in {progress.last_checkpoint_seconds * 1000:.0f} ms"
                if progress.last_checkpoint_seconds is not None else "")
        parts.append(f"checkpoints {progress.checkpoints} completed"
                     + (f" (last #{progress.last_checkpoint}{took})" if progress.last_checkpoint else ""))
    parts.append(f"restarts {progress.restarts}")
    return " · ".join(parts)
