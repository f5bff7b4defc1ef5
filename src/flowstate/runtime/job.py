"""The job runner: builds the tasks of one attempt, runs the coordinator's shell, restarts on failure.

One attempt, step by step (the order matters):

Step 1: choose the restore point: the newest checkpoint whose metadata and files verify
        (``flowstate.checkpoint.restore``); every newer one that was skipped is logged with its reason
        and deleted. New checkpoint ids continue after the highest id ever used.
Step 2: load every task's state from that checkpoint, then build all tasks: sources rewind to the
        stored positions, sinks commit what the checkpoint pre-committed.
Step 3: start the tasks; tell the coordinator they run; then loop: take a report (ack, decline,
        source ended, finished, failed), feed it to the coordinator, execute the returned actions in
        order. The metadata is written before any task hears that a checkpoint completed.
Step 4: on a failure, cancel every task, wait for in-flight snapshot writes (or for the end of the
        processes that make them), and let the restart strategy decide: another attempt from Step 1,
        or ``JobFailedError``.

Where the tasks run is the executor's business (``flowstate.runtime.transport.Executor``): threads
of this process, worker processes forked from it (``flowstate.runtime.processes``) or Ray actors
(``flowstate.runtime.ray_cluster``). The steps above, the coordinator and its shell are the same for
all of them: the shell sees tasks only as ``TaskHandle``s.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import queue
import sys
import threading
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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
    StoreCheckpoint,
    TriggerCheckpoint,
)
from flowstate.checkpoint.ids import CheckpointId, TaskId, task_id
from flowstate.checkpoint.restore import RestoreFrom, choose
from flowstate.clock import Clock, SystemClock
from flowstate.config import JobConfig, Mode
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, JobFailedError
from flowstate.failpoints import Failpoints
from flowstate.graph import JobGraph, JobVertex, build_job_graph
from flowstate.runtime.channels import InputGate
from flowstate.runtime.messages import (
    Ack,
    Aborted,
    Complete,
    Decline,
    SourceEnded,
    TaskFailed,
    TaskFinished,
    Trigger,
)
from flowstate.runtime.operators import OperatorEnv, build_operator
from flowstate.runtime.output import Output, OutputEdge
from flowstate.runtime.task import SOURCE_STATE, SourceTask, StreamTask, Task, TaskEnv
from flowstate.runtime.transport import ChannelWriter, Executor, LocalWiring, Reports, TaskHandle, ThreadExecutor, Wiring
from flowstate.storage.base import CheckpointMetadata, CheckpointStorage, CorruptCheckpointError, TaskState
from flowstate.storage.local import LocalCheckpointStorage

log = logging.getLogger("flowstate")


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
    """Records read by the sources in the last attempt."""
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    checkpoint_stats: list[CheckpointStats] = field(default_factory=list)
    """One entry per checkpoint completed in this run, oldest first."""
    checkpoints_failed: int = 0
    """Checkpoints aborted in this run (expired, declined, storage failures)."""
    executor: str = "threads"
    """Where the tasks ran: ``threads``, ``processes`` or ``ray``."""
    workers: int = 0
    """Worker processes of each attempt (0: the tasks ran as threads of this process)."""


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


class _AttemptFailed(Exception):
    def __init__(self, what: str, cause: BaseException | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.cause = cause


class CheckpointDirLock:
    """Keeps two runs from writing the same checkpoint directory.

    Worker processes inherit the lock, so it is free only once every process of a run is gone. A run
    killed with SIGKILL takes its workers with it within milliseconds; a lock still held is therefore
    tried again for up to ``wait`` seconds before the directory counts as in use."""

    def __init__(self, directory: Path, clock: Clock | None = None, wait: float = 1.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(directory / "_lock", "a+")  # noqa: SIM115 - held for the run
        clock = clock or SystemClock()
        give_up = clock.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if clock.monotonic() < give_up:
                    clock.sleep(0.02)
                    continue
                self._file.close()
                raise ConfigError(f"another flowstate run is using the checkpoint directory {directory}") from None

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


class JobRunner:
    def __init__(
        self, flow: Dataflow, config: JobConfig, *, failpoints: Failpoints | None = None,
        clock: Clock | None = None, progress_stream: TextIO | None = None,
    ) -> None:
        self.flow = flow
        self.config = config
        self.failpoints = failpoints if failpoints is not None else Failpoints.from_env()
        self.clock = clock or SystemClock()
        self.graph: JobGraph = build_job_graph(flow, config.parallelism)
        self._progress = progress_stream or sys.stderr
        self._check_sources()
        self.storage: CheckpointStorage | None = (
            LocalCheckpointStorage(Path(config.checkpoint_dir)) if config.mode.checkpoints and config.checkpoint_dir else None
        )
        self.executor_name, self.workers = choose_executor(config, self.graph)
        self._next_id = 1

    def _check_sources(self) -> None:
        for vertex in self.graph.vertices:
            node = vertex.chain[0]
            if node.kind != "source" or node.fn.replayable:
                continue
            if self.config.mode.exactly_once and not self.config.allow_non_replayable:
                raise ConfigError(
                    f"source {node.name!r} cannot replay its input, so mode {self.config.mode.value} cannot "
                    "give exactly-once results with it: after a failure the records it delivered since the "
                    "last checkpoint are lost (at-most-once for that source). Pass --allow-non-replayable "
                    "(allow_non_replayable=True) to run anyway, or use a replayable source"
                )
            log.warning(
                "source %r cannot replay: records it delivered after the last completed checkpoint are lost "
                "on a failure (at-most-once for that source)", node.name,
            )

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> JobResult:
        config = self.config
        result = JobResult(self.flow.name, config.mode, executor=self.executor_name, workers=self.workers)
        started = self.clock.monotonic()
        lock = CheckpointDirLock(Path(config.checkpoint_dir), self.clock) if self.storage is not None else None
        try:
            if config.fresh and self.storage is not None:
                for info in self.storage.list_checkpoints():
                    self.storage.discard(info.checkpoint_id)
                log.info("--fresh: discarded the existing checkpoints in %s", config.checkpoint_dir)
            failures = 0
            while True:
                try:
                    self._attempt(result)
                    break
                except _AttemptFailed as failed:
                    failures += 1
                    result.failures.append(failed.what)
                    delay = config.restart.delay(failures)
                    if delay is None:
                        raise JobFailedError(
                            f"job {self.flow.name!r} failed and its restart strategy gave up after "
                            f"{failures - 1} restart(s): {failed.what}", failed.cause,
                        ) from failed.cause
                    log.warning("job %r failed (%s); restart %d in %.2fs", self.flow.name, failed.what, failures, delay)
                    result.restarts += 1
                    self.clock.sleep(delay)
        finally:
            if lock is not None:
                lock.release()
        result.seconds = self.clock.monotonic() - started
        return result

    # ---- one attempt --------------------------------------------------------------------------------

    def _attempt(self, result: JobResult) -> None:
        restored = self._choose_restore_point()
        result.restored_from.append(int(restored.checkpoint_id) if restored else None)
        reports: queue.Queue[Any] = queue.Queue()
        executor = self._executor()
        graceful = False
        try:
            try:
                tasks = executor.build(restored, reports)
            except Exception as exc:  # noqa: BLE001 - a failure to restore is a failure of the attempt
                raise _AttemptFailed(f"building the tasks failed: {type(exc).__name__}: {exc}", exc) from exc
            self._run_tasks(tasks, executor, reports, restored, result)
            graceful = True
        finally:
            # Returns once no task of this attempt can write: a late snapshot write must never land
            # in a checkpoint directory whose id the next attempt reuses.
            executor.stop(graceful)

    def _executor(self) -> Executor:
        """A new executor for one attempt (see ``choose_executor``)."""
        if self.executor_name == "processes":
            from flowstate.runtime.processes import ProcessExecutor

            return ProcessExecutor(self, self.workers)
        if self.executor_name == "ray":
            from flowstate.runtime.ray_cluster import RayExecutor

            return RayExecutor(self, self.workers)
        return ThreadExecutor(self._build_tasks, self.clock)

    def _choose_restore_point(self) -> CheckpointMetadata | None:
        storage = self.storage
        if storage is None:
            return None
        decision = choose(storage.restore_candidates())
        for skipped in decision.skipped:
            log.warning("skipping checkpoint %d: %s", skipped.checkpoint_id, skipped.reason)
            storage.discard(skipped.checkpoint_id)
        self._next_id = max(self._next_id, storage.highest_id() + 1)
        if isinstance(decision, RestoreFrom):
            md: CheckpointMetadata = decision.metadata
            self._check_compatible(md)
            log.info("restoring from checkpoint %d (completed with %d task states, %d bytes)",
                     md.checkpoint_id, len(md.tasks), md.state_size)
            keep = {md.checkpoint_id}
            storage.sweep(keep)
            return md
        storage.sweep(set())
        log.info("no completed checkpoint to restore from: starting from scratch")
        return None

    def _check_compatible(self, md: CheckpointMetadata) -> None:
        if md.max_parallelism != self.graph.max_parallelism:
            raise ConfigError(
                f"checkpoint {md.checkpoint_id} was taken with max_parallelism {md.max_parallelism}; "
                f"the job now has {self.graph.max_parallelism}. max_parallelism cannot change"
            )
        names = {v.name: v for v in self.graph.vertices}
        for state in md.tasks:
            if state.handle is None:
                continue
            vertex = names.get(state.vertex)
            if vertex is None:
                raise ConfigError(
                    f"checkpoint {md.checkpoint_id} holds state of operator chain {state.vertex!r}, which the "
                    "job no longer has; start with --fresh or restore the operator (give operators a uid= to "
                    "keep their identity when the job changes)"
                )
            if vertex.parallelism != md.parallelism.get(state.vertex):
                raise ConfigError(
                    f"operator chain {state.vertex!r} ran with parallelism {md.parallelism.get(state.vertex)} "
                    f"in checkpoint {md.checkpoint_id} and now has {vertex.parallelism}: rescaling a checkpoint "
                    "is not supported yet; run with the same parallelism or start with --fresh"
                )

    def _load_states(self, md: CheckpointMetadata | None, only: Collection[TaskId] | None = None) -> dict[TaskId, dict[str, Any]]:
        """The state of every task in ``md`` (of the tasks in ``only``, when given)."""
        if md is None or self.storage is None:
            return {}
        states: dict[TaskId, dict[str, Any]] = {}
        for ts in md.tasks:
            if only is not None and ts.task not in only:
                continue
            states[ts.task] = pickle.loads(self.storage.read_state(ts.handle)) if ts.handle else {}
        return states

    def _build_tasks(
        self, restored: CheckpointMetadata | None, reports: Reports, pool: ThreadPoolExecutor,
        wiring: Wiring | None = None,
    ) -> dict[TaskId, Task]:
        """The tasks that run in this process (``wiring.is_local``; all of them by default), each
        restored from its state in ``restored``. A producer writes to the gate ``wiring`` gives for
        its consumer: the consumer's own input gate when it is local, else a writer to it."""
        graph = self.graph
        config = self.config
        wiring = wiring or LocalWiring(config.channel_capacity)
        local = {task_id(v.name, i) for v in graph.vertices for i in range(v.parallelism)
                 if wiring.is_local(task_id(v.name, i))}
        states = self._load_states(restored, local)
        env = TaskEnv(config.mode, self.storage, reports, pool, self.failpoints, self.clock, config.batch_size,
                      config.alignment_timeout, config.max_inflight_bytes)
        gates: dict[tuple[str, int], Any] = {}
        bases: dict[str, list[int]] = {}
        for v in graph.vertices:
            widths = [1 if e.partition == "forward" else graph.vertex(e.source).parallelism for e in v.inputs]
            bases[v.name] = [sum(widths[:k]) for k in range(len(widths))]
            for i in range(v.parallelism):
                gates[(v.name, i)] = wiring.gate(task_id(v.name, i), sum(widths))
        tasks: dict[TaskId, Task] = {}
        for v in graph.vertices:
            for i in range(v.parallelism):
                tid = task_id(v.name, i)
                if tid not in local:
                    continue
                resume = states.get(tid) if restored is not None else None
                if restored is not None and resume is None:
                    resume = {}
                cancelled = threading.Event()
                output = self._output(v, i, gates, bases, cancelled)
                tasks[tid] = self._task(v, i, tid, output, cancelled, gates[(v.name, i)], env, resume)
        return tasks

    def _output(
        self, v: JobVertex, i: int, gates: dict[tuple[str, int], Any], bases: dict[str, list[int]],
        cancelled: threading.Event,
    ) -> Output:
        """Subtask ``i`` of ``v`` writes to channel ``base + i`` of every consumer subtask (one
        channel per upstream subtask), or, on a forward edge, to channel ``base`` of subtask ``i``."""
        edges = []
        for consumer, k in self.graph.consumers(v.name):
            edge = consumer.inputs[k]
            base = bases[consumer.name][k]
            if edge.partition == "forward":
                targets: list[tuple[ChannelWriter, int]] = [(gates[(consumer.name, i)], base)]
            else:
                targets = [(gates[(consumer.name, t)], base + i) for t in range(consumer.parallelism)]
            edges.append(OutputEdge(edge.partition, targets, edge.key_fn, self.graph.max_parallelism, cancelled))
        return Output(edges, self.config.batch_size)

    def _task(
        self, v: JobVertex, i: int, tid: TaskId, output: Output, cancelled: threading.Event, gate: InputGate,
        env: TaskEnv, resume: dict[str, Any] | None,
    ) -> Task:
        op_env = OperatorEnv(i, v.parallelism, self.graph.max_parallelism, self.config.mode.checkpoints, self.failpoints)
        key_fn = v.inputs[0].key_fn if v.inputs else None
        nodes = v.chain[1:] if v.is_source else v.chain
        ops = [build_operator(n, op_env, key_fn if idx == 0 and not v.is_source else None) for idx, n in enumerate(nodes)]
        if v.is_source:
            source = v.chain[0].fn
            splits = source.splits()[i :: v.parallelism]
            reader = source.build_reader(splits, resume.get(SOURCE_STATE) if resume is not None else None)
            return SourceTask(tid, v.name, i, ops, output, gate, env, resume, cancelled, reader=reader)
        return StreamTask(tid, v.name, i, ops, output, gate, env, resume, cancelled)

    # ---- the coordinator's shell ---------------------------------------------------------------------

    def _run_tasks(
        self, tasks: Mapping[TaskId, TaskHandle], executor: Executor, reports: queue.Queue[Any],
        restored: CheckpointMetadata | None, result: JobResult,
    ) -> None:
        config = self.config
        clock = self.clock
        sources = [t.task_id for t in tasks.values() if t.is_source]
        completed = []
        if restored is not None:
            completed.append(CompletedCheckpoint(restored.checkpoint_id, 0.0, 0.0, restored.final, {}))
        coordinator = CheckpointCoordinator(
            config.checkpoint, tasks, sources, first_id=CheckpointId(self._next_id), completed=completed,
        ) if config.mode.checkpoints else None
        shell = _Shell(self, coordinator, tasks, result, restored)
        executor.launch()
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
                        raise _AttemptFailed(f"task {report.task} failed: {report.error}", report.error)
                    elif coordinator is not None:
                        shell.report(report, now)
                if coordinator is not None:
                    shell.execute(coordinator.tick(now))
                shell.progress(now)
            shell.progress(clock.monotonic(), final=True)
        except _AttemptFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - a failure of the coordinator's shell fails the attempt
            raise _AttemptFailed(f"the coordinator failed: {type(exc).__name__}: {exc}", exc) from exc
        finally:
            # Pending checkpoints of a failed attempt are left as they are: the next attempt sweeps
            # every directory without valid metadata once the snapshot writes have stopped.
            if coordinator is not None:
                self._next_id = max(self._next_id, int(coordinator.next_id))


class _Shell:
    """Executes coordinator actions and feeds it reports, for one attempt."""

    def __init__(
        self, runner: JobRunner, coordinator: CheckpointCoordinator | None, tasks: Mapping[TaskId, TaskHandle],
        result: JobResult, restored: CheckpointMetadata | None,
    ) -> None:
        self.runner = runner
        self.coordinator = coordinator
        self.tasks = tasks
        self.result = result
        self.clock = runner.clock
        self.wall_offset = self.clock.wall() - self.clock.monotonic()
        self.started = self.clock.monotonic()
        self.last_print = self.started
        self.last_records = 0
        self.last_duration: float | None = None
        self.completed_here = 0

    def report(self, report: Any, now: float) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        if isinstance(report, Ack):
            _, actions = coordinator.acknowledge(report.task, report.checkpoint_id, report.state, now)
            self.execute(actions)
        elif isinstance(report, Decline):
            log.info("task %s declined checkpoint %d: %s %s", report.task, report.checkpoint_id,
                     report.reason.value, report.detail)
            self.execute(coordinator.decline(report.task, report.checkpoint_id, report.reason, now))
        elif isinstance(report, SourceEnded):
            self.execute(coordinator.source_ended(report.task, now))
        else:
            raise TypeError(f"unexpected report {report!r}")

    def execute(self, actions: list[CoordinatorAction]) -> None:
        runner = self.runner
        coordinator = self.coordinator
        assert coordinator is not None
        fp = runner.failpoints
        for action in actions:
            match action:
                case TriggerCheckpoint(checkpoint_id=cid, timestamp=ts, final=final):
                    barrier = CheckpointBarrier(cid, ts, final)
                    for t in self.tasks.values():
                        if t.is_source:
                            t.post(Trigger(barrier))
                case StoreCheckpoint(checkpoint=checkpoint):
                    if fp:
                        fp.hit(fpn.COORDINATOR_BEFORE_METADATA)
                    now = self.clock.monotonic()
                    try:
                        assert runner.storage is not None
                        runner.storage.write_metadata(self._metadata(checkpoint))
                    except (OSError, CorruptCheckpointError) as exc:
                        log.warning("writing the metadata of checkpoint %d failed: %s", checkpoint.checkpoint_id, exc)
                        self.execute(coordinator.store_failed(checkpoint.checkpoint_id, now))
                        continue
                    if fp:
                        fp.hit(fpn.COORDINATOR_AFTER_METADATA)
                    self.last_duration = checkpoint.duration
                    states = [s for s in checkpoint.task_states.values() if isinstance(s, TaskState)]
                    self.result.checkpoint_stats.append(CheckpointStats(
                        int(checkpoint.checkpoint_id), checkpoint.duration,
                        max((s.alignment_seconds for s in states), default=0.0),
                        sum(s.channel_state_bytes for s in states),
                        sum(s.handle.size for s in states if s.handle is not None),
                    ))
                    self.execute(coordinator.stored(checkpoint.checkpoint_id, now))
                case NotifyComplete(checkpoint_id=cid, final=final):
                    self.result.checkpoints_completed += 1
                    self.result.last_checkpoint = int(cid)
                    self.completed_here += 1
                    for t in self.tasks.values():
                        t.post(Complete(cid, final))
                case NotifyAborted(checkpoint_id=cid, reason=reason):
                    log.info("checkpoint %d aborted: %s", cid, reason.value)
                    self.result.checkpoints_failed += 1
                    for t in self.tasks.values():
                        t.post(Aborted(cid))
                case DiscardCheckpoint(checkpoint_id=cid):
                    if runner.storage is not None:
                        try:
                            runner.storage.discard(cid)
                        except OSError as exc:
                            # An aborted checkpoint is discarded while the snapshot writes of other
                            # tasks may still land in its directory (rmdir: directory not empty).
                            # What is left has no metadata, so it is never restored from: a late
                            # ack discards it again, the next attempt sweeps it.
                            log.warning("discarding checkpoint %d failed: %s", cid, exc)
                case FailJob(reason=reason):
                    raise _AttemptFailed(reason)

    def _metadata(self, checkpoint: CompletedCheckpoint) -> CheckpointMetadata:
        runner = self.runner
        states = tuple(sorted((s for s in checkpoint.task_states.values() if isinstance(s, TaskState)),
                              key=lambda s: s.task))
        return CheckpointMetadata(
            checkpoint_id=checkpoint.checkpoint_id,
            job=runner.flow.name,
            mode=runner.config.mode.value,
            final=checkpoint.final,
            trigger_time=checkpoint.trigger_time + self.wall_offset,
            completion_time=checkpoint.completion_time + self.wall_offset,
            max_parallelism=runner.graph.max_parallelism,
            parallelism={v.name: v.parallelism for v in runner.graph.vertices},
            tasks=states,
        )

    def progress(self, now: float, final: bool = False) -> None:
        runner = self.runner
        records = sum(t.records_in for t in self.tasks.values() if t.is_source)
        self.result.records = records
        if not runner.config.progress or (not final and now - self.last_print < 1.0):
            return
        rate = (records - self.last_records) / max(now - self.last_print, 1e-9)
        if final:
            rate = records / max(now - self.started, 1e-9)
        self.last_print = now
        self.last_records = records
        parts = [f"[{runner.flow.name}] {records:,} records", f"{rate:,.0f} rec/s" + (" avg" if final else "")]
        if runner.config.mode.checkpoints:
            last = self.result.last_checkpoint
            took = f" in {self.last_duration * 1000:.0f} ms" if self.last_duration is not None else ""
            parts.append(f"checkpoints {self.result.checkpoints_completed} completed"
                         + (f" (last #{last}{took})" if last else ""))
        parts.append(f"restarts {self.result.restarts}")
        print(" · ".join(parts), file=runner._progress, flush=True)


def choose_executor(config: JobConfig, graph: JobGraph) -> tuple[str, int]:
    """The executor of a job and its number of workers.

    Rules: ``config.executor`` when set, else ``processes`` when some vertex runs more than one
    subtask (or ``config.workers`` is set) and ``threads`` otherwise. ``processes`` defaults to one
    worker per core, ``ray`` to one per subtask of the widest vertex; neither uses more workers than
    the widest vertex has subtasks. ``threads`` has no workers (0)."""
    widest = max(v.parallelism for v in graph.vertices)
    name = config.executor or ("processes" if widest > 1 or config.workers is not None else "threads")
    if name == "threads":
        if config.workers is not None:
            raise ConfigError(
                f"workers={config.workers} needs the processes or ray executor; the threads executor runs "
                "every task in this process"
            )
        return name, 0
    if name == "processes" and not hasattr(os, "fork"):
        raise ConfigError("the processes executor forks its workers, which this platform cannot; use executor threads")
    default = (os.cpu_count() or 1) if name == "processes" else widest
    return name, min(config.workers or default, widest)


def run_job(flow: Dataflow, config: JobConfig, *, failpoints: Failpoints | None = None, clock: Clock | None = None) -> JobResult:
    return JobRunner(flow, config, failpoints=failpoints, clock=clock).run()

