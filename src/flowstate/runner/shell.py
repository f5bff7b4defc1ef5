"""The coordinator's shell: for one attempt, it feeds the checkpoint coordinator
(``flowstate.checkpoint.coordinator``, pure) the tasks' reports, the clock and the control requests,
and executes the actions it returns, in order.

Rules:

1. Every report kind and every action kind has its case; the last case of each ``match`` is
   ``assert_never`` (``tests/engine/test_protocol_dispatch.py`` holds the cases against the unions).
2. The metadata of a checkpoint is written before any task hears that it completed
   (``StoreCheckpoint`` comes before ``NotifyComplete``); a metadata write that fails aborts the
   checkpoint instead.
3. The shell knows nothing of the runner: what it works with arrives as a ``ShellContext`` and the
   tasks' handles; what it changes is the attempt's ``JobResult``, the run's ``RunStatus`` and the
   storage through ``SnapshotTargets``. A failure that ends the attempt is an ``AttemptFailed``.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, assert_never

from flowstate import failpoints as fpn
from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.completed import CompletedCheckpoint
from flowstate.checkpoint.coordinator import (
    CheckpointCoordinator,
    CoordinatorAction,
    DiscardCheckpoint,
    FailJob,
    NotifyAborted,
    NotifyComplete,
    RequestRefusal,
    StoreCheckpoint,
    TriggerCheckpoint,
)
from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.clock import Clock
from flowstate.config import JobConfig
from flowstate.control.endpoint import ControlError, ControlRequest, JobControl, RequestKind
from flowstate.executors.base import TaskHandle
from flowstate.failpoints import Failpoints
from flowstate.graph import JobGraph
from flowstate.observe.observer import Observer
from flowstate.runner.result import AttemptFailed, CheckpointStats, JobResult, describe_error
from flowstate.runner.status import JobProgress, Phase, RunStatus, progress_line
from flowstate.storage.base import CheckpointMetadata, CheckpointStorage, CorruptCheckpointError, SavepointOrigin, TaskState
from flowstate.storage.savepoint import SnapshotTargets
from flowstate.task.assignment import describe_graph
from flowstate.task.messages import (
    Aborted,
    Ack,
    CheckpointReport,
    Complete,
    Decline,
    SourceEnded,
    TaskFailed,
    TaskFinished,
    Trigger,
)

log = logging.getLogger("flowstate")


@dataclass(frozen=True, slots=True)
class ShellContext:
    """What the shell of one attempt works with, all given by the runner (rule 3)."""

    job: str
    config: JobConfig
    graph: JobGraph
    clock: Clock
    observer: Observer
    failpoints: Failpoints
    targets: SnapshotTargets
    """Where snapshots and metadata go: the job's checkpoint storage, each savepoint to its directory."""
    control: JobControl
    status: RunStatus
    progress: TextIO
    origin: SavepointOrigin | None
    """The savepoint the run descends from, recorded in every checkpoint's metadata."""
    has_storage: bool
    """Whether the job has checkpoint storage (a job without takes savepoints only on request)."""


def serve_attempt(
    ctx: ShellContext, tasks: Mapping[TaskId, TaskHandle], launch: Callable[[], None], reports: queue.Queue[Any],
    restored: CheckpointMetadata | None, result: JobResult, storage: CheckpointStorage | None, next_id: int,
) -> int:
    """Step 3 of ``flowstate.runner.job``: start the tasks (``launch()``), then feed the coordinator
    until every task finished. Returns the next unused checkpoint id, also when it raises
    ``AttemptFailed`` (then on the exception, as ``next_id``)."""
    config = ctx.config
    clock = ctx.clock
    sources = [t.task_id for t in tasks.values() if t.is_source]
    completed = []
    if restored is not None:
        if storage is not None and result.restored_savepoint is None:
            # Older completed checkpoints retained before the failure: retention goes on
            # counting them, or they would stay on storage forever (with their shared files).
            completed += [CompletedCheckpoint(info.checkpoint_id, 0.0, 0.0, False, {})
                          for info in storage.list_checkpoints()
                          if info.status == "completed" and info.checkpoint_id < restored.checkpoint_id]
        completed.append(CompletedCheckpoint(restored.checkpoint_id, 0.0, 0.0, restored.final, {}))
    coordinator = CheckpointCoordinator(
        config.checkpoint, tasks, sources, first_id=CheckpointId(next_id), completed=completed,
    ) if config.mode.checkpoints else None
    shell = CoordinatorShell(ctx, coordinator, tasks, result, restored)
    launch()
    finished: set[TaskId] = set()
    now = clock.monotonic()
    try:
        if coordinator is not None:
            shell.execute(coordinator.tasks_running(now))
        while len(finished) < len(tasks):
            now = clock.monotonic()
            deadline = coordinator.next_deadline(now) if coordinator is not None else None
            wait = 0.25 if deadline is None else min(0.25, max(0.0, deadline - now))
            try:
                report = reports.get(timeout=wait)
            except queue.Empty:
                report = None
            now = clock.monotonic()
            if report is not None:
                if isinstance(report, TaskFinished):
                    finished.add(report.task)
                elif isinstance(report, TaskFailed):
                    raise AttemptFailed(f"task {report.task} failed: {describe_error(report.error)}", report.error)
                elif coordinator is not None:
                    shell.report(report, now)
            if coordinator is not None:
                shell.execute(coordinator.tick(now))
            shell.serve_control(now, finished)
            shell.progress(now)
        shell.progress(clock.monotonic(), final=True)
    except AttemptFailed as failed:
        failed.next_id = _next(coordinator, next_id)
        raise
    except Exception as exc:  # noqa: BLE001 - a failure of the coordinator's shell fails the attempt
        error = AttemptFailed(f"the coordinator failed: {type(exc).__name__}: {exc}", exc)
        error.next_id = _next(coordinator, next_id)
        raise error from exc
    # Pending checkpoints of a failed attempt are left as they are: the next attempt sweeps every
    # directory without valid metadata once the snapshot writes have stopped.
    return _next(coordinator, next_id)


def _next(coordinator: CheckpointCoordinator | None, next_id: int) -> int:
    return max(next_id, int(coordinator.next_id)) if coordinator is not None else next_id


class CoordinatorShell:
    """Executes coordinator actions and feeds it reports and control requests, for one attempt."""

    def __init__(
        self, context: ShellContext, coordinator: CheckpointCoordinator | None, tasks: Mapping[TaskId, TaskHandle],
        result: JobResult, restored: CheckpointMetadata | None,
    ) -> None:
        self.ctx = context
        self.coordinator = coordinator
        self.tasks = tasks
        self.result = result
        self.clock = context.clock
        self.wall_offset = self.clock.wall() - self.clock.monotonic()
        self.started = self.clock.monotonic()
        self.last_print = self.started
        self.last_records = 0
        self.last_duration: float | None = None
        self.completed_here = 0
        self.restored_records = result.records_restored[-1] if result.records_restored else 0
        self.barrier_records: dict[CheckpointId, int] = {}
        """Per pending checkpoint, the records the sources that acknowledged it read before its barrier."""
        self.targets = context.targets
        self.control = context.control
        result.stopped = False  # an attempt that fails after its stop's checkpoint restarts and reads on
        self.declined: dict[CheckpointId, str] = {}
        """The first reason a task gave for declining each checkpoint not aborted yet."""
        self.abort_detail: str | None = None
        """That reason for the checkpoint aborted last: the message of a failed job keeps it."""

    def serve_control(self, now: float, finished: set[TaskId]) -> None:
        """Turn each control request into a coordinator request (``flowstate.control.endpoint``)."""
        status = self.ctx.status
        status.running_tasks = len(self.tasks) - len(finished)
        coordinator = self.coordinator
        if coordinator is not None:
            status.phase = Phase.STOPPING if coordinator.stopping else Phase.RUNNING
        for request in self.control.take():
            if coordinator is None:
                request.reply.set_exception(ControlError(
                    f"mode {self.ctx.config.mode.value} takes no checkpoints, so no {request.kind.value} either"))
                continue
            if request.savepoint:
                problem = self._savepoint_parent_problem(request)
                if problem is not None:
                    request.reply.set_exception(ControlError(problem))
                    continue
            outcome, actions = coordinator.request(now, savepoint=request.savepoint, stop=request.kind is RequestKind.STOP)
            if isinstance(outcome, RequestRefusal):
                why = ("the job is already stopping" if outcome is RequestRefusal.STOPPING
                       else "the job is finishing: its final checkpoint is in flight or complete")
                request.reply.set_exception(ControlError(f"{request.kind.value} refused: {why}"))
                continue
            self.control.asked[outcome] = request
            if request.kind is RequestKind.STOP:
                status.phase = Phase.STOPPING
                log.info("stop requested%s", " with a savepoint" if request.savepoint else "")
            self.execute(actions)

    def _savepoint_parent_problem(self, request: ControlRequest) -> str | None:
        parent = self._savepoint_parent(request)
        if parent is None:
            return "no savepoint directory: give a target"
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the savepoint directory {parent}: {exc}"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"cannot write into the savepoint directory {parent}"
        return None

    def _savepoint_parent(self, request: ControlRequest | None) -> Path | None:
        if request is not None and request.target is not None:
            return request.target
        return self.ctx.config.savepoints

    def report(self, report: CheckpointReport, now: float) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        match report:
            case Ack():
                self.ctx.observer.acknowledged(report.task, report.checkpoint_id, now)
                if report.records:
                    cid = report.checkpoint_id
                    self.barrier_records[cid] = self.barrier_records.get(cid, 0) + report.records
                _, actions = coordinator.acknowledge(report.task, report.checkpoint_id, report.state, now)
                fp = self.ctx.failpoints
                if fp and not any(isinstance(a, StoreCheckpoint) for a in actions):
                    fp.hit(fpn.COORDINATOR_SOME_ACKS)
                self.execute(actions)
            case Decline():
                log.info("task %s declined checkpoint %d: %s %s", report.task, report.checkpoint_id,
                         report.reason.value, report.detail)
                if report.detail:
                    self.declined.setdefault(report.checkpoint_id, f"task {report.task}: {report.detail}")
                self.ctx.observer.declined(report.task, report.checkpoint_id, report.reason, report.detail)
                self.execute(coordinator.decline(report.task, report.checkpoint_id, report.reason, now))
            case SourceEnded():
                self.execute(coordinator.source_ended(report.task, now))
            case _:
                assert_never(report)

    def execute(self, actions: list[CoordinatorAction]) -> None:
        ctx = self.ctx
        coordinator = self.coordinator
        assert coordinator is not None
        fp = ctx.failpoints
        for action in actions:
            match action:
                case TriggerCheckpoint(checkpoint_id=cid, timestamp=ts, final=final, savepoint=savepoint, request=rid):
                    request = self.control.asked.pop(rid, None) if rid is not None else None
                    if request is not None:
                        self.control.triggered[cid] = request
                    target = None
                    if savepoint:
                        parent = self._savepoint_parent(request)
                        assert parent is not None
                        path = self.targets.add_savepoint(cid, parent)
                        target = str(path)
                        log.info("savepoint %d triggered into %s", cid, path)
                    barrier = CheckpointBarrier(cid, ts, final, savepoint=savepoint, target=target)
                    ctx.observer.triggered(cid, ts, savepoint)
                    for t in self.tasks.values():
                        if t.is_source:
                            t.post(Trigger(barrier))
                case StoreCheckpoint(checkpoint=checkpoint):
                    if fp:
                        fp.hit(fpn.COORDINATOR_BEFORE_METADATA)
                    now = self.clock.monotonic()
                    metadata = self._metadata(checkpoint)
                    try:
                        self.targets.write_metadata(metadata)
                    except (OSError, CorruptCheckpointError) as exc:
                        log.warning("writing the metadata of checkpoint %d failed: %s", checkpoint.checkpoint_id, exc)
                        self.execute(coordinator.store_failed(checkpoint.checkpoint_id, now))
                        continue
                    if fp:
                        fp.hit(fpn.COORDINATOR_AFTER_METADATA)
                    ctx.observer.completed(metadata)
                    if checkpoint.savepoint:
                        self.execute(coordinator.stored(checkpoint.checkpoint_id, now))
                        continue
                    self.last_duration = checkpoint.duration
                    states = [s for s in checkpoint.task_states.values() if isinstance(s, TaskState)]
                    self.result.checkpoint_stats.append(CheckpointStats(
                        int(checkpoint.checkpoint_id), checkpoint.duration,
                        max((s.alignment_seconds for s in states), default=0.0),
                        sum(s.channel_state_bytes for s in states),
                        sum(s.handle.size for s in states if s.handle is not None),
                    ))
                    self.execute(coordinator.stored(checkpoint.checkpoint_id, now))
                case NotifyComplete(checkpoint_id=cid, final=final, savepoint=savepoint):
                    saved = self.targets.paths.get(cid) if savepoint else None
                    if saved is not None:
                        self.result.savepoints.append(str(saved))
                        log.info("savepoint %d completed: %s", cid, saved)
                    else:
                        self.result.checkpoints_completed += 1
                        self.result.last_checkpoint = int(cid)
                        self.completed_here += 1
                    if final and coordinator.stopping:
                        self.result.stopped = True
                    for t in self.tasks.values():
                        t.post(Complete(cid, final, action.commit))
                    request = self.control.triggered.pop(cid, None)
                    if request is not None:
                        request.reply.set_result({"checkpoint_id": int(cid), "savepoint": savepoint,
                                                  "path": str(saved) if saved is not None else None, "stopped": final})
                case NotifyAborted(checkpoint_id=cid, reason=reason):
                    log.info("checkpoint %d aborted: %s", cid, reason.value)
                    self.abort_detail = self.declined.get(cid)
                    self.declined = {c: d for c, d in self.declined.items() if c > cid}
                    self.barrier_records.pop(cid, None)
                    self.result.checkpoints_failed += 1
                    ctx.observer.aborted(cid, reason, self.clock.monotonic())
                    for t in self.tasks.values():
                        t.post(Aborted(cid))
                    request = self.control.triggered.pop(cid, None)
                    if request is not None:
                        request.reply.set_exception(ControlError(
                            f"{request.kind.value} (checkpoint {cid}) failed: {reason.value}"))
                case DiscardCheckpoint(checkpoint_id=cid):
                    if ctx.has_storage or cid in self.targets.paths:
                        try:
                            self.targets.discard(cid)
                        except OSError as exc:
                            # An aborted checkpoint is discarded while the snapshot writes of other
                            # tasks may still land in its directory (rmdir: directory not empty).
                            # What is left has no metadata, so it is never restored from: a late
                            # ack discards it again, the next attempt sweeps it.
                            log.warning("discarding checkpoint %d failed: %s", cid, exc)
                case FailJob(reason=reason):
                    # With the cause a task gave for declining (a value that cannot be pickled, …).
                    detail = self.abort_detail
                    raise AttemptFailed(f"{reason} ({detail})" if detail else reason)
                case _:
                    assert_never(action)

    def _metadata(self, checkpoint: CompletedCheckpoint) -> CheckpointMetadata:
        ctx = self.ctx
        states = tuple(sorted((s for s in checkpoint.task_states.values() if isinstance(s, TaskState)),
                              key=lambda s: s.task))
        return CheckpointMetadata(
            checkpoint_id=checkpoint.checkpoint_id,
            job=ctx.job,
            mode=ctx.config.mode.value,
            final=checkpoint.final,
            trigger_time=checkpoint.trigger_time + self.wall_offset,
            completion_time=checkpoint.completion_time + self.wall_offset,
            max_parallelism=ctx.graph.max_parallelism,
            parallelism={v.name: v.parallelism for v in ctx.graph.vertices},
            tasks=states,
            graph=describe_graph(ctx.graph),
            savepoint=checkpoint.savepoint,
            source_records=self._source_records(checkpoint),
            origin=ctx.origin,
        )

    def _source_records(self, checkpoint: CompletedCheckpoint) -> int | None:
        """The records the sources had read up to the checkpoint's barriers, over every attempt."""
        read = self.barrier_records.pop(checkpoint.checkpoint_id, 0)
        return self.restored_records + read if self.restored_records is not None else None

    def done_fraction(self) -> float | None:
        """The share of a bounded input read so far, when every source subtask knows its size
        (``TaskCounters.progress``; what was read before a restore counts)."""
        figures = [t.counters().progress for t in self.tasks.values() if t.is_source]
        known = [f for f in figures if f is not None]
        if not known or len(known) < len(figures):
            return None
        total = sum(f[1] for f in known)
        return sum(f[0] for f in known) / total if total else None

    def progress(self, now: float, final: bool = False) -> None:
        ctx = self.ctx
        records = sum(t.records_in for t in self.tasks.values() if t.is_source)
        self.result.records = records
        self.result.records_read[-1] = records
        if not ctx.config.progress or (not final and now - self.last_print < 1.0):
            return
        rate = (records - self.last_records) / max(now - self.last_print, 1e-9)
        if final:
            rate = records / max(now - self.started, 1e-9)
        self.last_print = now
        self.last_records = records
        result = self.result
        line = progress_line(JobProgress(
            ctx.job, result.records_summary(), rate, final, self.done_fraction(),
            result.checkpoints_completed if ctx.config.mode.checkpoints else None, result.last_checkpoint,
            self.last_duration, result.restarts,
        ))
        print(line, file=ctx.progress, flush=True)
