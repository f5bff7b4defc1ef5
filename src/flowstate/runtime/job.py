"""The job runner: builds the tasks of one attempt, runs the coordinator's shell, restarts on failure.

One attempt, step by step (the order matters):

Step 1: choose the restore point: the pure ``plan_restore`` (``flowstate.checkpoint.restore``)
        decides from the checkpoints found, newest first, and the sinks' committed output: restore
        the newest checkpoint whose metadata and files verify (every newer one that was skipped is
        logged with its reason and deleted), start from scratch, or refuse (``ConfigError``, exit 2)
        rather than write committed output again. With ``--from-savepoint``, the savepoint, unless a
        checkpoint of this job descends from it (``flowstate.runtime.savepoint``). New checkpoint
        ids continue after the highest id ever used. Its state is assigned to the tasks of the job
        as it is now, by operator uid, at any parallelism (``flowstate.runtime.state_assignment``).
Step 2: make the attempt's plan (``flowstate.runtime.plan``): the job graph, the task-level
        configuration, the restore point and the state files each task reads, a spec of the
        checkpoint storage (never a live client), the state backend and the failpoints. The
        executor builds every task from the plan alone (``flowstate.runtime.task_factory``), in
        this process or in its workers, each process opening its own storage and loading the state
        of its own tasks: sources rewind to the stored positions, sinks commit what the snapshot
        pre-committed. State that cannot be assigned to the job as it is now stops the run with a
        ``ConfigError`` naming the operator and the state.
Step 3: start the tasks; tell the coordinator they run; then loop: take a report (ack, decline,
        source ended, finished, failed) or a control request (``flowstate.runtime.control``), feed it
        to the coordinator, execute the returned actions in order. The metadata is written before any
        task hears that a checkpoint completed.
Step 4: on a failure, cancel every task, wait for in-flight snapshot writes (or for the end of the
        processes that make them), and let the restart strategy decide: another attempt from Step 1,
        or ``JobFailedError``.

Where the tasks run is the executor's business (``flowstate.runtime.transport.Executor``): threads
of this process, worker processes started by it (``flowstate.runtime.processes``) or Ray actors
(``flowstate.runtime.ray_cluster``). The steps above, the coordinator and its shell are the same for
all of them: the shell sees tasks only as ``TaskHandle``s, and no executor sees the runner.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, assert_never

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
from flowstate.checkpoint.ids import CheckpointId, TaskId, task_id
from flowstate.checkpoint.restore import (
    CommittedOutput,
    Refuse,
    RestoreFacts,
    RestoreFrom,
    StartFresh,
    plan_restore,
)
from flowstate.clock import Clock, SystemClock
from flowstate.config import JobConfig, Mode
from flowstate.connectors.print_sink import BatchCallbackSink, CallbackSink
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, FlowstateError, JobFailedError
from flowstate.failpoints import Failpoints
from flowstate.graph import JobGraph, build_job_graph
from flowstate.observe.observer import Observer
from flowstate.runtime.control import (
    ControlError,
    ControlRequest,
    ControlServer,
    JobControl,
    RequestKind,
)
from flowstate.runtime.messages import (
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
from flowstate.runtime.plan import BackendSpec, RestorePoint, StorageSpec, plan_attempt
from flowstate.runtime.savepoint import (
    Savepoint,
    SnapshotTargets,
    identity,
    open_savepoint,
    same_origin,
)
from flowstate.runtime.state_assignment import describe_graph
from flowstate.runtime.task_factory import StateLoadError, TaskSite, build_tasks
from flowstate.runtime.transport import Executor, TaskHandle, ThreadExecutor
from flowstate.storage.base import (
    CheckpointMetadata,
    CheckpointStorage,
    CorruptCheckpointError,
    SavepointOrigin,
    TaskState,
)
from flowstate.storage.factory import open_storage
from flowstate.storage.local import LocalCheckpointStorage

if TYPE_CHECKING:
    from flowstate.runtime.forkserver import ForkServerHandle

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
    """Records read by the sources in the last attempt (``records_read[-1]``)."""
    records_read: list[int] = field(default_factory=list)
    """For each attempt, the records its sources read from the positions it restored on (for an
    attempt that failed, the last figure its tasks reported)."""
    records_restored: list[int | None] = field(default_factory=list)
    """For each attempt, the records the sources had read up to the barriers of the checkpoint it
    restored, over every attempt before it (0 from scratch; ``None`` when the checkpoint does not
    record it)."""
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    checkpoint_stats: list[CheckpointStats] = field(default_factory=list)
    """One entry per checkpoint completed in this run, oldest first."""
    checkpoints_failed: int = 0
    """Checkpoints aborted in this run (expired, declined, storage failures)."""
    restored_savepoint: str | None = None
    """The savepoint an attempt restored from (``--from-savepoint``), if one did."""
    savepoints: list[str] = field(default_factory=list)
    """Directories of the savepoints completed in this run, oldest first."""
    executor: str = "threads"
    """Where the tasks ran: ``threads``, ``processes`` or ``ray``."""
    workers: int = 0
    """Worker processes of each attempt (0: the tasks ran as threads of this process)."""
    stopped: bool = False
    """The job ended on a stop (``flowstate stop``, ``JobControl.stop``, SIGTERM under ``flowstate
    run``) after a final checkpoint that committed its output, not because its input ended."""

    def count_attempt(self, restored: CheckpointMetadata | None) -> None:
        """Opens the record counts of a new attempt that restores ``restored`` (``None``: from scratch)."""
        if restored is None:
            self.records_restored.append(0)
        else:
            self.records_restored.append(restored.source_records)
        self.records_read.append(0)
        self.records = 0

    @property
    def records_total(self) -> int | None:
        """The records processed in total by the last attempt: those up to its restored checkpoint
        plus those it read itself (``None`` when the checkpoint does not record its figure). A run
        that completes has read its whole input exactly once by this count, however often it failed."""
        restored = self.records_restored[-1] if self.records_restored else 0
        return None if restored is None else restored + self.records

    def records_summary(self) -> str:
        """What the records figures of the last attempt count, in words."""
        checkpoint = self.restored_from[-1] if self.restored_from else None
        if checkpoint is None:
            return f"{self.records:,} records read"
        total = self.records_total
        if total is None:
            return f"{self.records:,} records read since the restore of checkpoint {checkpoint}"
        return (f"{total:,} records processed in total ({total - self.records:,} up to checkpoint {checkpoint}, "
                f"{self.records:,} read since its restore)")


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

    Worker processes hold the lock's descriptor (``fileno``, passed to each), so it is free only once
    every process of a run is gone. A run
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

    def fileno(self) -> int:
        return self._file.fileno()

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


class JobRunner:
    def __init__(
        self, flow: Dataflow, config: JobConfig, *, failpoints: Failpoints | None = None,
        clock: Clock | None = None, progress_stream: TextIO | None = None, control: JobControl | None = None,
    ) -> None:
        self.flow = flow
        self.config = config
        self.failpoints = failpoints if failpoints is not None else Failpoints.from_env()
        self.clock = clock or SystemClock()
        self.graph: JobGraph = build_job_graph(flow, config.parallelism)
        self._progress = progress_stream or sys.stderr
        self._check_sources()
        self.storage: CheckpointStorage | None = None
        if config.mode.checkpoints and config.checkpoint_dir is not None:
            try:
                self.storage = open_storage(config.checkpoint_dir, failpoints=self.failpoints)
            except ValueError as exc:
                raise ConfigError(f"checkpoint storage {config.checkpoint_dir}: {exc}") from None
        self.executor_name, self.workers = choose_executor(config, self.graph)
        self._next_id = 1
        self._backend = BackendSpec(config.state_backend, incremental=config.incremental)
        self._backend.factory()  # a missing backend package is a mistake in the command: say so now
        self.control = control if control is not None else JobControl()
        """Ask the running job for a checkpoint, a savepoint or a stop (any thread)."""
        self._targets = SnapshotTargets(self.storage)
        self._lock: CheckpointDirLock | None = None
        self._forkserver: ForkServerHandle | None = None
        """The fork server of the ``processes`` executor's workers, for the run's every attempt."""
        self._savepoint: Savepoint | None = None
        self._origin: SavepointOrigin | None = None
        self._state = "starting"
        self._running_tasks = 0
        self._result: JobResult | None = None
        self.observer = Observer(flow.name, config, self.graph, self.clock, executor=self.executor_name,
                                 workers=self.workers, metrics_port=config.metrics_port, metrics_host=config.metrics_host)

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
        self._result = result
        self.control.publish(self._status)
        started = self.clock.monotonic()
        # Object storage has no lock: two runs on one bucket prefix are the user's to avoid.
        storage = self.storage
        lock = CheckpointDirLock(storage.root, self.clock) if isinstance(storage, LocalCheckpointStorage) else None
        self._lock = lock
        server: ControlServer | None = None
        try:
            if config.from_savepoint is not None:
                if config.checkpoint_dir is not None and Path(config.from_savepoint).resolve() == Path(
                        config.checkpoint_dir).resolve():
                    raise ConfigError(
                        f"--from-savepoint names the checkpoint directory {config.checkpoint_dir} itself; run "
                        "without --from-savepoint to resume from its newest checkpoint"
                    )
                self._savepoint = open_savepoint(config.from_savepoint)
            if config.control_endpoint:
                assert config.checkpoint_dir is not None
                server = ControlServer(self.control, Path(config.checkpoint_dir), job=self.flow.name,
                                       host=config.control_host, wait=2 * config.checkpoint.timeout + 60.0)
            self.observer.start(self.control, server.token if server is not None else None)
            failures = 0
            while True:
                try:
                    self._state = "running"
                    self._attempt(result)
                    break
                except _AttemptFailed as failed:
                    self._state = "restarting"
                    self.control.fail_waiting(f"the job failed before the checkpoint completed: {failed.what}")
                    failures += 1
                    self.observer.restarted(failed.what)
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
            self._state = "ended"
            self.control.fail_all("the job ended before the request was served")
            self.observer.close()
            if server is not None:
                server.close()
            if self._forkserver is not None:  # every worker was stopped with its attempt
                self._forkserver.close()
                self._forkserver = None
            if lock is not None:
                lock.release()
        result.seconds = self.clock.monotonic() - started
        return result

    def _status(self) -> dict[str, Any]:
        """What ``flowstate status`` shows (read from any thread)."""
        result = self._result
        assert result is not None
        return {
            "job": self.flow.name,
            "mode": self.config.mode.value,
            "state": self._state,
            "pid": os.getpid(),
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
            "tasks": sum(v.parallelism for v in self.graph.vertices),
            "running_tasks": self._running_tasks,
            "parallelism": {v.name: v.parallelism for v in self.graph.vertices},
        }

    # ---- one attempt --------------------------------------------------------------------------------

    def _attempt(self, result: JobResult) -> None:
        restore_started = self.clock.monotonic()
        try:
            restored = self._choose_restore_point()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. storage unreadable: the restart strategy decides
            raise _AttemptFailed(f"choosing the checkpoint to restore failed: {type(exc).__name__}: {exc}", exc) from exc
        reports: queue.Queue[Any] = queue.Queue()
        state_dir = self._attempt_state_dir()
        plan = plan_attempt(self.graph, self.config, failpoints=self.failpoints, restore=self._restore_point(restored),
                            backend=self._backend)
        executor = self._executor()
        graceful = False
        try:
            try:
                tasks = executor.build(plan, reports)
            except ConfigError:
                raise  # state the job as it is now cannot take: the user must decide
            except StateLoadError as exc:
                raise _AttemptFailed(str(exc), exc.__cause__ or exc) from exc
            except Exception as exc:  # noqa: BLE001 - a failure to restore is a failure of the attempt
                raise _AttemptFailed(f"building the tasks failed: {type(exc).__name__}: {exc}", exc) from exc
            # An attempt that failed before its tasks were built (and restored) restored nothing.
            result.restored_from.append(int(restored.checkpoint_id) if restored else None)
            result.count_attempt(restored)
            self.observer.attempt_started(tasks)
            self.observer.restored(result.restored_from[-1], self.clock.monotonic() - restore_started,
                                   result.restored_savepoint)
            self._run_tasks(tasks, executor, reports, restored, result)
            graceful = True
        finally:
            # Returns once no task of this attempt can write: a late snapshot write must never land
            # in a checkpoint directory whose id the next attempt reuses.
            executor.stop(graceful)
            if state_dir is not None:
                # Working files of the attempt's backends, also those of killed workers.
                shutil.rmtree(state_dir, ignore_errors=True)

    def _attempt_state_dir(self) -> str | None:
        """A working directory for the local state of this attempt's tasks (``rocksdb``, incremental
        ``heap``), removed when the attempt ends, however it ends."""
        config = self.config
        if config.state_backend != "rocksdb" and not config.incremental:
            return None
        base = config.state_dir
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        state_dir = tempfile.mkdtemp(prefix="flowstate-attempt-", dir=base)
        self._backend = BackendSpec(config.state_backend, state_dir, config.incremental)
        return state_dir

    def _restore_point(self, restored: CheckpointMetadata | None) -> RestorePoint | None:
        """Where the snapshot chosen in Step 1 is: the savepoint's directory, or the checkpoint
        storage. Logs what a rescale changes."""
        if restored is None:
            return None
        savepoint = self._savepoint
        if savepoint is not None and restored is savepoint.metadata:
            point = RestorePoint(restored, StorageSpec.of(savepoint.path), f"savepoint {str(savepoint.path)!r}")
        else:
            assert self.config.checkpoint_dir is not None
            point = RestorePoint(restored, StorageSpec.of(self.config.checkpoint_dir),
                                 f"checkpoint {restored.checkpoint_id}")
        rescaled = [f"{v.name} {restored.parallelism[v.name]} -> {v.parallelism}" for v in self.graph.vertices
                    if v.name in restored.parallelism and restored.parallelism[v.name] != v.parallelism]
        if rescaled:
            log.info("rescaling from %s: %s", point.what, ", ".join(rescaled))
        return point

    def _executor(self) -> Executor:
        """A new executor for one attempt (see ``choose_executor``)."""
        if self.executor_name == "processes":
            from flowstate.runtime.processes import ProcessExecutor

            hold = (self._lock.fileno(),) if self._lock is not None else ()
            if self._forkserver is None:
                from flowstate.runtime.forkserver import ForkServerHandle

                self._forkserver = ForkServerHandle()  # started by the first attempt, stopped by run()
            return ProcessExecutor(self.graph, self.workers, self.clock, hold=hold, forkserver=self._forkserver)
        if self.executor_name == "ray":
            from flowstate.runtime.ray_cluster import RayExecutor

            return RayExecutor(self.graph, self.workers, self.clock)
        # Tasks in this process share its storage client and the savepoint routes of its shell.
        site = TaskSite(self.storage, self.clock, self._targets)
        return ThreadExecutor(lambda plan, reports, pool: build_tasks(plan, reports, pool, site), self.clock)

    def _choose_restore_point(self) -> CheckpointMetadata | None:
        """Step 1: the snapshot to restore from."""
        storage = self.storage
        savepoint = self._savepoint
        md: CheckpointMetadata | None = None
        # The decision is pure (``flowstate.checkpoint.restore``); this only gathers its facts and
        # carries it out. --fresh applies to the first attempt: a restart resumes this run.
        first = self._result is None or not self._result.restored_from
        facts = RestoreFacts(
            where="" if self.config.checkpoint_dir is None else str(self.config.checkpoint_dir),
            committed=self._committed_output(), fresh=self.config.fresh and first,
            savepoint=str(savepoint.path) if savepoint is not None else None, first_attempt=first,
        )
        decision = plan_restore(storage.restore_candidates() if storage is not None else (), facts)
        match decision:
            case Refuse(message=message):
                raise ConfigError(message)
            case RestoreFrom(metadata=metadata, discards=discards):
                md = metadata
            case StartFresh(discards=discards):
                pass
            case _:
                assert_never(decision)
        if storage is not None:
            for gone in discards:
                if not facts.fresh:
                    log.warning("skipping checkpoint %d: %s", gone.checkpoint_id, gone.reason)
                storage.discard(gone.checkpoint_id)
            if facts.fresh:
                log.info("--fresh: discarded the existing checkpoints in %s", self.config.checkpoint_dir)
            self._next_id = max(self._next_id, storage.highest_id() + 1)
        if savepoint is not None and (md is None or not same_origin(md, savepoint.metadata)):
            if storage is not None:
                self._discard_other_runs(storage, savepoint)
            md = savepoint.metadata
            self._next_id = max(self._next_id, int(md.checkpoint_id) + 1)
            self._origin = identity(md, savepoint.path)
            log.info("restoring from savepoint %s (checkpoint %d, %d task states, %d bytes)",
                     savepoint.path, md.checkpoint_id, len(md.tasks), md.state_size)
            assert self._result is not None
            self._result.restored_savepoint = str(savepoint.path)
            return md
        if md is None:
            if storage is not None:
                storage.sweep(set())
                self._sweep_orphans()
            log.info("no completed checkpoint to restore from: starting from scratch")
            return None
        assert storage is not None
        self._origin = md.origin
        log.info("restoring from checkpoint %d (completed with %d task states, %d bytes)",
                 md.checkpoint_id, len(md.tasks), md.state_size)
        storage.sweep({md.checkpoint_id})
        self._sweep_orphans()
        if self.failpoints:
            self.failpoints.hit(fpn.RECOVERY_CHECKPOINT_CHOSEN)
        return md

    def _committed_output(self) -> tuple[CommittedOutput, ...]:
        """What each sink of the job that can list its committed output (``committed_output()``,
        e.g. ``FileSink``) holds now."""
        found = []
        for vertex in self.graph.vertices:
            for node in vertex.chain:
                listing = getattr(node.fn, "committed_output", None) if node.kind == "sink" else None
                listed = listing() if callable(listing) else ()
                if isinstance(listed, CommittedOutput):  # a sink that describes its output itself
                    found.append(listed)
                    continue
                items = tuple(listed)
                if items:
                    where = getattr(node.fn, "directory", None) or node.name
                    found.append(CommittedOutput(node.name, str(where), items))
        return tuple(found)

    def _sweep_orphans(self) -> None:
        """Delete shared files that no valid checkpoint references: uploads of checkpoints that were
        aborted or crashed. A local directory is locked by this run, so nothing is uploading into it
        and no grace period is needed; object storage keeps files younger than the checkpoint
        timeout, which an upload of another run may still reference soon."""
        storage = self.storage
        assert storage is not None
        grace = 0.0 if isinstance(storage, LocalCheckpointStorage) else self.config.checkpoint.timeout
        swept = storage.sweep_orphans(grace, self.clock.wall())
        if swept:
            log.info("deleted %d orphaned shared file(s) of aborted or crashed checkpoints", len(swept))

    def _discard_other_runs(self, storage: CheckpointStorage, savepoint: Savepoint) -> None:
        """Checkpoints in the directory that do not descend from the savepoint belong to another run
        of the job: restoring from one of them later would undo the restore from the savepoint."""
        gone = [info.checkpoint_id for info in storage.list_checkpoints()
                if info.metadata is None or not same_origin(info.metadata, savepoint.metadata)]
        for checkpoint_id in gone:
            storage.discard(checkpoint_id)
        if gone:
            log.info("restoring from savepoint %s: discarded %d checkpoint(s) of an earlier run in %s",
                     savepoint.path, len(gone), self.config.checkpoint_dir)

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
            if self.storage is not None and self._result is not None and self._result.restored_savepoint is None:
                # Older completed checkpoints retained before the failure: retention goes on
                # counting them, or they would stay on storage forever (with their shared files).
                completed += [CompletedCheckpoint(info.checkpoint_id, 0.0, 0.0, False, {})
                              for info in self.storage.list_checkpoints()
                              if info.status == "completed" and info.checkpoint_id < restored.checkpoint_id]
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
                        raise _AttemptFailed(f"task {report.task} failed: {describe_error(report.error)}", report.error)
                    elif coordinator is not None:
                        shell.report(report, now)
                if coordinator is not None:
                    shell.execute(coordinator.tick(now))
                shell.serve_control(now, finished)
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


def describe_error(error: BaseException) -> str:
    """``error`` as the message of a failed job shows it: flowstate's own errors name what failed
    (operator, record, cause) in their text; any other keeps its type, which its text alone may not
    say (``KeyError: 'x'``, ``OSError: [Errno 28] …``)."""
    error_type = getattr(error, "error_type", "")  # an error sent from a worker as text
    if error_type:
        return f"{error_type}: {error}"
    if isinstance(error, FlowstateError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class _Shell:
    """Executes coordinator actions and feeds it reports and control requests, for one attempt."""

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
        self.restored_records = result.records_restored[-1] if result.records_restored else 0
        self.barrier_records: dict[CheckpointId, int] = {}
        """Per pending checkpoint, the records the sources that acknowledged it read before its barrier."""
        self.targets = runner._targets
        self.control = runner.control
        result.stopped = False  # an attempt that fails after its stop's checkpoint restarts and reads on
        self.declined: dict[CheckpointId, str] = {}
        """The first reason a task gave for declining each checkpoint not aborted yet."""
        self.abort_detail: str | None = None
        """That reason for the checkpoint aborted last: the message of a failed job keeps it."""

    def serve_control(self, now: float, finished: set[TaskId]) -> None:
        """Turn each control request into a coordinator request (``flowstate.runtime.control``)."""
        runner = self.runner
        runner._running_tasks = len(self.tasks) - len(finished)
        coordinator = self.coordinator
        if coordinator is not None:
            runner._state = "stopping" if coordinator.stopping else "running"
        for request in self.control.take():
            if coordinator is None:
                request.reply.set_exception(ControlError(
                    f"mode {runner.config.mode.value} takes no checkpoints, so no {request.kind.value} either"))
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
                runner._state = "stopping"
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
        return self.runner.config.savepoints

    def report(self, report: CheckpointReport, now: float) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        match report:
            case Ack():
                self.runner.observer.acknowledged(report.task, report.checkpoint_id, now)
                if report.records:
                    cid = report.checkpoint_id
                    self.barrier_records[cid] = self.barrier_records.get(cid, 0) + report.records
                _, actions = coordinator.acknowledge(report.task, report.checkpoint_id, report.state, now)
                fp = self.runner.failpoints
                if fp and not any(isinstance(a, StoreCheckpoint) for a in actions):
                    fp.hit(fpn.COORDINATOR_SOME_ACKS)
                self.execute(actions)
            case Decline():
                log.info("task %s declined checkpoint %d: %s %s", report.task, report.checkpoint_id,
                         report.reason.value, report.detail)
                if report.detail:
                    self.declined.setdefault(report.checkpoint_id, f"task {report.task}: {report.detail}")
                self.runner.observer.declined(report.task, report.checkpoint_id, report.reason, report.detail)
                self.execute(coordinator.decline(report.task, report.checkpoint_id, report.reason, now))
            case SourceEnded():
                self.execute(coordinator.source_ended(report.task, now))
            case _:
                assert_never(report)

    def execute(self, actions: list[CoordinatorAction]) -> None:
        runner = self.runner
        coordinator = self.coordinator
        assert coordinator is not None
        fp = runner.failpoints
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
                    runner.observer.triggered(cid, ts, savepoint)
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
                    runner.observer.completed(metadata)
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
                    path = self.targets.paths.get(cid) if savepoint else None
                    if path is not None:
                        self.result.savepoints.append(str(path))
                        log.info("savepoint %d completed: %s", cid, path)
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
                                                  "path": str(path) if path is not None else None, "stopped": final})
                case NotifyAborted(checkpoint_id=cid, reason=reason):
                    log.info("checkpoint %d aborted: %s", cid, reason.value)
                    self.abort_detail = self.declined.get(cid)
                    self.declined = {c: d for c, d in self.declined.items() if c > cid}
                    self.barrier_records.pop(cid, None)
                    self.result.checkpoints_failed += 1
                    runner.observer.aborted(cid, reason, self.clock.monotonic())
                    for t in self.tasks.values():
                        t.post(Aborted(cid))
                    request = self.control.triggered.pop(cid, None)
                    if request is not None:
                        request.reply.set_exception(ControlError(
                            f"{request.kind.value} (checkpoint {cid}) failed: {reason.value}"))
                case DiscardCheckpoint(checkpoint_id=cid):
                    if runner.storage is not None or cid in self.targets.paths:
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
                    raise _AttemptFailed(f"{reason} ({detail})" if detail else reason)
                case _:
                    assert_never(action)

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
            graph=describe_graph(runner.graph),
            savepoint=checkpoint.savepoint,
            source_records=self._source_records(checkpoint),
            origin=runner._origin,
        )

    def _source_records(self, checkpoint: CompletedCheckpoint) -> int | None:
        """The records the sources had read up to the checkpoint's barriers, over every attempt."""
        read = self.barrier_records.pop(checkpoint.checkpoint_id, 0)
        return self.restored_records + read if self.restored_records is not None else None

    def done_fraction(self) -> float | None:
        """The share of a bounded input read so far, when every source subtask knows its size
        (``TaskCounters.progress``; what was read before a restore counts)."""
        figures = [t.counters().progress for t in self.tasks.values() if t.is_source]
        if not figures or any(f is None for f in figures):
            return None
        total = sum(f[1] for f in figures)  # type: ignore[index]
        return sum(f[0] for f in figures) / total if total else None  # type: ignore[index]

    def progress(self, now: float, final: bool = False) -> None:
        runner = self.runner
        records = sum(t.records_in for t in self.tasks.values() if t.is_source)
        self.result.records = records
        self.result.records_read[-1] = records
        if not runner.config.progress or (not final and now - self.last_print < 1.0):
            return
        rate = (records - self.last_records) / max(now - self.last_print, 1e-9)
        if final:
            rate = records / max(now - self.started, 1e-9)
        self.last_print = now
        self.last_records = records
        parts = [f"[{runner.flow.name}] {self.result.records_summary()}"]
        done = self.done_fraction()
        if done is not None:
            parts.append(f"{done:.0%} of the input")
        parts.append(f"{rate:,.0f} rec/s" + (" avg" if final else ""))
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
    the widest vertex has subtasks. ``threads`` has no workers (0).

    A sink that calls a function of this process (``CallbackSink``, ``BatchCallbackSink``, or a
    callable given to ``sink``) must run in this process: in a worker it would call a copy of the
    function, and what it collects would never reach the caller. Such a job runs on ``threads``
    unless ``processes`` or ``ray`` (or ``workers``) was asked for, which is refused."""
    widest = max(v.parallelism for v in graph.vertices)
    callbacks = [n.name for v in graph.vertices for n in v.chain
                 if n.kind == "sink" and isinstance(n.fn, (CallbackSink, BatchCallbackSink))]
    asked = config.executor or ("processes" if config.workers is not None else None)
    if callbacks and asked in ("processes", "ray"):
        raise ConfigError(
            f"sink {callbacks[0]!r} calls a function of this process, but the {asked} executor would call a copy "
            "of it in a worker process, so this process would never see a record; run with executor threads, "
            "or write to a FileSink"
        )
    name = config.executor or ("processes" if (widest > 1 and not callbacks) or config.workers is not None
                               else "threads")
    if name == "threads":
        if config.workers is not None:
            raise ConfigError(
                f"workers={config.workers} needs the processes or ray executor; the threads executor runs "
                "every task in this process"
            )
        return name, 0
    if name == "processes" and os.name != "posix":
        raise ConfigError("the processes executor needs a POSIX system (Linux, macOS); use executor threads")
    default = (os.cpu_count() or 1) if name == "processes" else widest
    return name, min(config.workers or default, widest)


def run_job(flow: Dataflow, config: JobConfig, *, failpoints: Failpoints | None = None, clock: Clock | None = None) -> JobResult:
    return JobRunner(flow, config, failpoints=failpoints, clock=clock).run()

