"""The coordinator's observer: one object the job runner and its shell call at each event (a few
one-line hooks), which keeps the checkpoint history file, the Prometheus metrics and what the
dashboard shows up to date.

Threads: the hooks run on the runner's thread; ``tasks``, ``recent`` and ``snapshot`` are read by
the HTTP server's threads. Shared fields are replaced, never mutated in place, under ``_lock``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstate.observe.counters import TaskCounters
from flowstate.observe.history import (
    CheckpointRecord,
    DeclineRecord,
    Event,
    HistoryLog,
    RestartRecord,
    RestoreRecord,
    StartRecord,
    SubtaskStats,
)

if TYPE_CHECKING:
    from flowstate.checkpoint.failure import CheckpointFailureReason
    from flowstate.checkpoint.ids import TaskId
    from flowstate.clock import Clock
    from flowstate.config import JobConfig
    from flowstate.control.endpoint import JobControl
    from flowstate.graph import JobGraph
    from flowstate.observe.metrics import JobMetrics
    from flowstate.observe.server import ObserveServer
    from flowstate.storage.base import CheckpointMetadata

log = logging.getLogger("flowstate")

RECENT = 500
"""Events the dashboard of a running job keeps in memory."""


@dataclass
class _Pending:
    trigger_time: float
    """Wall clock."""
    triggered: float
    """Monotonic."""
    savepoint: bool
    acks: dict[str, float] = field(default_factory=dict)
    declines: list[DeclineRecord] = field(default_factory=list)


def settings_of(config: JobConfig, executor: str, workers: int) -> dict[str, Any]:
    """The configuration a diagnosis and the dashboard show."""
    c = config.checkpoint
    return {
        "mode": config.mode.value, "interval": c.interval, "timeout": c.timeout, "min_pause": c.min_pause,
        "max_concurrent": c.max_concurrent, "tolerable_failures": c.tolerable_failures, "retained": c.retained,
        "alignment_timeout": config.alignment_timeout, "max_inflight_bytes": config.max_inflight_bytes,
        "state_backend": config.state_backend, "incremental": config.incremental, "compression": config.compression,
        "parallelism": config.parallelism, "executor": executor, "workers": workers,
        "checkpoint_dir": str(config.checkpoint_dir) if config.checkpoint_dir is not None else None,
        "batch_size": config.batch_size, "channel_capacity": config.channel_capacity,
    }


def vertices_of(graph: JobGraph) -> tuple[dict[str, Any], ...]:
    return tuple({"name": v.name, "parallelism": v.parallelism, "chain": v.describe(),
                  "inputs": [[e.source, e.partition] for e in v.inputs]} for v in graph.vertices)


class Observer:
    """Hooks of one run (see the module). ``metrics_port`` ``None``: no HTTP server."""

    def __init__(self, job: str, config: JobConfig, graph: JobGraph, clock: Clock, *, executor: str = "threads",
                 workers: int = 0, metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> None:
        self.job = job
        self.config = config
        self.graph = graph
        self.clock = clock
        self.wall_offset = clock.wall() - clock.monotonic()
        self.settings = settings_of(config, executor, workers)
        self.vertices = vertices_of(graph)
        self.all_tasks = tuple(f"{v.name}#{i}" for v in graph.vertices for i in range(v.parallelism))
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._tasks: Mapping[TaskId, Any] = {}
        self._base: dict[str, TaskCounters] = {}
        self._state_sizes: dict[str, int] = {}
        self.recent: deque[Event] = deque(maxlen=RECENT)
        self.state = "starting"
        self.attempt = 0
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.history: HistoryLog | None = None
        self.metrics: JobMetrics | None = None
        self.server: ObserveServer | None = None

    # ---- the run ------------------------------------------------------------------------------------

    def start(self, control: JobControl | None, token: str | None) -> None:
        """The run begins: open the history file (local checkpoint directories), the metrics, the server."""
        directory = self.config.checkpoint_dir
        if isinstance(directory, Path) and self.config.mode.checkpoints:
            self.history = HistoryLog(directory, fresh=self.config.fresh)
        self._record(StartRecord(self.clock.wall(), self.job, self.settings, self.vertices))
        if self.metrics_port is None:
            return
        from flowstate.observe.metrics import JobMetrics
        from flowstate.observe.server import ObserveServer

        operators = {v.name: [n.name for n in (v.chain[1:] if v.is_source else v.chain)] for v in self.graph.vertices}
        self.metrics = JobMetrics(self.task_counters, lambda: dict(self._state_sizes), operators, self.clock.wall)
        try:
            self.server = ObserveServer(self, self.metrics_host, self.metrics_port, control=control, token=token)
        except OSError as exc:
            from flowstate.errors import ConfigError

            raise ConfigError(f"cannot serve metrics on {self.metrics_host}:{self.metrics_port}: {exc}") from None

    def close(self) -> None:
        self.state = "ended"
        if self.server is not None:
            self.server.close()
        if self.history is not None:
            self.history.close()

    # ---- hooks --------------------------------------------------------------------------------------

    def attempt_started(self, tasks: Mapping[TaskId, Any]) -> None:
        """A new attempt's task handles: what the previous attempt's tasks counted goes into the base."""
        with self._lock:
            base = dict(self._base)
            for tid, handle in self._tasks.items():
                base[tid] = base.get(tid, TaskCounters()) + handle.counters()
            self._base = base
            self._tasks = dict(tasks)
            self._pending = {}
        self.state = "running"

    def restored(self, checkpoint_id: int | None, seconds: float, savepoint: str | None = None) -> None:
        self.attempt += 1
        self._record(RestoreRecord(self.clock.wall(), self.attempt, checkpoint_id, seconds, savepoint))
        if self.metrics is not None:
            self.metrics.restored(checkpoint_id, seconds)

    def restarted(self, reason: str) -> None:
        self.state = "restarting"
        self._record(RestartRecord(self.clock.wall(), reason))
        if self.metrics is not None:
            self.metrics.restarted()

    def triggered(self, checkpoint_id: int, now: float, savepoint: bool) -> None:
        self._pending[int(checkpoint_id)] = _Pending(now + self.wall_offset, now, savepoint)

    def acknowledged(self, task: str, checkpoint_id: int, now: float) -> None:
        pending = self._pending.get(int(checkpoint_id))
        if pending is not None:
            pending.acks[task] = now - pending.triggered

    def declined(self, task: str, checkpoint_id: int, reason: CheckpointFailureReason, detail: str) -> None:
        pending = self._pending.get(int(checkpoint_id))
        if pending is not None:
            pending.declines.append(DeclineRecord(task, reason.name, detail))

    def completed(self, md: CheckpointMetadata) -> None:
        pending = self._pending.pop(int(md.checkpoint_id), None)
        acks = pending.acks if pending is not None else {}
        subtasks = tuple(SubtaskStats(t.task, acks.get(t.task), t.alignment_seconds, t.sync_seconds, t.async_seconds,
                                      t.channel_state_bytes, t.bytes_written, t.full_size) for t in md.tasks)
        record = CheckpointRecord(int(md.checkpoint_id), "completed", md.trigger_time, md.duration,
                                  md.full_size or md.state_size, md.bytes_written or md.state_size, md.savepoint, md.final,
                                  subtasks)
        if not md.savepoint:
            self._state_sizes = {t.task: t.full_size or (t.handle.size if t.handle else 0) for t in md.tasks}
        self._record(record)

    def aborted(self, checkpoint_id: int, reason: CheckpointFailureReason, now: float) -> None:
        pending = self._pending.pop(int(checkpoint_id), None)
        if pending is None:
            return  # triggered by an earlier attempt, or not at all
        acked = set(pending.acks)
        declined = {d.task for d in pending.declines}
        subtasks = tuple(SubtaskStats(t, s, 0.0, 0.0, 0.0, 0, 0, 0) for t, s in sorted(pending.acks.items()))
        record = CheckpointRecord(
            int(checkpoint_id), "failed", pending.trigger_time, now - pending.triggered, savepoint=pending.savepoint,
            subtasks=subtasks, reason=reason.name, reason_text=reason.value, declines=tuple(pending.declines),
            missing=tuple(t for t in self.all_tasks if t not in acked and t not in declined),
        )
        self._record(record)

    # ---- readers (any thread) -------------------------------------------------------------------------

    def task_counters(self) -> dict[str, TaskCounters]:
        """Every task's counters over all attempts of the run."""
        with self._lock:
            tasks, base = self._tasks, self._base
        totals = dict(base)
        for tid, handle in tasks.items():
            totals[tid] = totals.get(tid, TaskCounters()) + handle.counters()
        return totals

    def events(self) -> list[Event]:
        with self._lock:
            return list(self.recent)

    def _record(self, event: Event) -> None:
        with self._lock:
            self.recent.append(event)
        if self.history is not None:
            self.history.append(event)
        if self.metrics is not None and isinstance(event, CheckpointRecord):
            self.metrics.checkpoint(event)
