"""What a running job shows of itself: its phase and running tasks (``flowstate status``, read from any
thread through the control endpoint) and the progress line it prints while it runs.

Rules:

1. The runner and its coordinator's shell write a ``RunStatus``; nothing else does. Readers on
   other threads see each field as last written (single attribute writes; no field is derived from
   two others that could be read half-updated).
2. The progress line says what the figures count: records of the last attempt and, after a restore,
   those up to its checkpoint (``JobResult.records_summary``).
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


def progress_line(job: str, result: JobResult, *, rate: float, average: bool, done: float | None,
                  checkpoints: bool, last_duration: float | None) -> str:
    """One progress line (rule 2), e.g. ``[wordcount] 1,200,000 records read · 40% of the input ·
    2,400,000 rec/s · checkpoints 3 completed (last #3 in 12 ms) · restarts 0``."""
    parts = [f"[{job}] {result.records_summary()}"]
    if done is not None:
        parts.append(f"{done:.0%} of the input")
    parts.append(f"{rate:,.0f} rec/s" + (" avg" if average else ""))
    if checkpoints:
        last = result.last_checkpoint
        took = f" in {last_duration * 1000:.0f} ms" if last_duration is not None else ""
        parts.append(f"checkpoints {result.checkpoints_completed} completed" + (f" (last #{last}{took})" if last else ""))
    parts.append(f"restarts {result.restarts}")
    return " · ".join(parts)
