"""The job runner: builds the tasks of one attempt, runs the coordinator's shell, restarts on failure.

One attempt, step by step (the order matters):

Step 1: choose the restore point (``flowstate.runner.restore``): the pure ``plan_restore`` (``flowstate.checkpoint.restore``)
        decides from the checkpoints found, newest first, and the sinks' committed output: restore
        the newest checkpoint whose metadata and files verify (every newer one that was skipped is
        logged with its reason and deleted), start from scratch, or refuse (``ConfigError``, exit 2)
        rather than write committed output again. With ``--from-savepoint``, the savepoint, unless a
        checkpoint of this job descends from it (``flowstate.storage.savepoint``). New checkpoint
        ids continue after the highest id ever used. Its state is assigned to the tasks of the job
        as it is now, by operator uid, at any parallelism (``flowstate.task.assignment``).
Step 2: make the attempt's plan (``flowstate.task.plan``): the job graph, the task-level
        configuration, the restore point and the state files each task reads, a spec of the
        checkpoint storage (never a live client), the state backend and the failpoints. The
        executor builds every task from the plan alone (``flowstate.task.factory``), in
        this process or in its workers, each process opening its own storage and loading the state
        of its own tasks: sources rewind to the stored positions, sinks commit what the snapshot
        pre-committed. State that cannot be assigned to the job as it is now stops the run with a
        ``ConfigError`` naming the operator and the state.
Step 3: start the tasks; tell the coordinator they run; then loop (``flowstate.runner.shell``): take a report (ack, decline,
        source ended, finished, failed) or a control request (``flowstate.control.endpoint``), feed it
        to the coordinator, execute the returned actions in order. The metadata is written before any
        task hears that a checkpoint completed.
Step 4: on a failure, cancel every task, wait for in-flight snapshot writes (or for the end of the
        processes that make them), and let the restart strategy decide: another attempt from Step 1,
        or ``JobFailedError``.

Where the tasks run is the executor's business (``flowstate.executors.base.Executor``): threads
of this process, worker processes started by it (``flowstate.executors.processes``) or Ray actors
(``flowstate.executors.ray_cluster``). The steps above, the coordinator and its shell are the same for
all of them: the shell sees tasks only as ``TaskHandle``s, and no executor sees the runner.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from flowstate.clock import Clock, SystemClock
from flowstate.config import JobConfig
from flowstate.control.endpoint import ControlServer, JobControl
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, JobFailedError
from flowstate.executors.base import Executor
from flowstate.executors.choice import choose_executor, new_executor
from flowstate.failpoints import Failpoints
from flowstate.graph import JobGraph, build_job_graph
from flowstate.observe.observer import Observer
from flowstate.runner.lock import CheckpointDirLock
from flowstate.runner.restore import RestoreChoice, choose_restore_point, committed_output, orphan_grace
from flowstate.runner.result import AttemptFailed, JobResult
from flowstate.runner.shell import ShellContext, serve_attempt
from flowstate.runner.status import Phase, RunStatus, status_view
from flowstate.storage.base import CheckpointMetadata, CheckpointStorage, SavepointOrigin
from flowstate.storage.factory import open_storage
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.savepoint import Savepoint, SnapshotTargets, open_savepoint
from flowstate.task.factory import StateLoadError, TaskSite
from flowstate.task.plan import BackendSpec, RestorePoint, StorageSpec, plan_attempt

if TYPE_CHECKING:
    from flowstate.executors.forkserver import ForkServerHandle

log = logging.getLogger("flowstate")

__all__ = ["JobResult", "JobRunner", "run_job"]


class JobRunner:
    """Runs one job to its end: attempts, restarts, the control endpoint and the observer."""

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
        self._backend = BackendSpec(config.state_backend, incremental=config.heap_incremental)
        self._backend.factory()  # a missing backend package is a mistake in the command: say so now
        self.control = control if control is not None else JobControl()
        """Ask the running job for a checkpoint, a savepoint or a stop (any thread)."""
        self._targets = SnapshotTargets(self.storage)
        self._lock: CheckpointDirLock | None = None
        self._forkserver: ForkServerHandle | None = None
        """The fork server of the ``processes`` executor's workers, for the run's every attempt."""
        self._savepoint: Savepoint | None = None
        self._origin: SavepointOrigin | None = None
        self._status = RunStatus()
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
        self.control.publish(self._status_view)
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
                    self._status.phase = Phase.RUNNING
                    self._attempt(result)
                    break
                except AttemptFailed as failed:
                    self._status.phase = Phase.RESTARTING
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
            self._status.phase = Phase.ENDED
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

    def _status_view(self) -> dict[str, Any]:
        """What ``flowstate status`` shows (read from any thread)."""
        assert self._result is not None
        return status_view(self.flow.name, self.config, self.graph, self._status, self._result, os.getpid())

    # ---- one attempt --------------------------------------------------------------------------------

    def _attempt(self, result: JobResult) -> None:
        restore_started = self.clock.monotonic()
        try:
            choice = self._choose_restore_point(result)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. storage unreadable: the restart strategy decides
            raise AttemptFailed(f"choosing the checkpoint to restore failed: {type(exc).__name__}: {exc}", exc) from exc
        restored = choice.metadata
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
                raise AttemptFailed(str(exc), exc.__cause__ or exc) from exc
            except Exception as exc:  # noqa: BLE001 - a failure to restore is a failure of the attempt
                raise AttemptFailed(f"building the tasks failed: {type(exc).__name__}: {exc}", exc) from exc
            # An attempt that failed before its tasks were built (and restored) restored nothing.
            result.restored_from.append(int(restored.checkpoint_id) if restored else None)
            result.count_attempt(restored)
            self.observer.attempt_started(tasks)
            self.observer.restored(result.restored_from[-1], self.clock.monotonic() - restore_started,
                                   result.restored_savepoint)
            context = ShellContext(
                job=self.flow.name, config=self.config, graph=self.graph, clock=self.clock, observer=self.observer,
                failpoints=self.failpoints, targets=self._targets, control=self.control, status=self._status,
                progress=self._progress, origin=self._origin, has_storage=self.storage is not None,
            )
            try:
                self._next_id = serve_attempt(context, tasks, executor.launch, reports, restored, result,
                                              self.storage, self._next_id)
            except AttemptFailed as failed:
                if failed.next_id is not None:
                    self._next_id = max(self._next_id, failed.next_id)
                raise
            graceful = True
        finally:
            # Returns once no task of this attempt can write: a late snapshot write must never land
            # in a checkpoint directory whose id the next attempt reuses.
            executor.stop(graceful)
            if state_dir is not None:
                # Working files of the attempt's backends, also those of killed workers.
                shutil.rmtree(state_dir, ignore_errors=True)

    def _choose_restore_point(self, result: JobResult) -> RestoreChoice:
        """Step 1 (``flowstate.runner.restore``)."""
        config = self.config
        choice = choose_restore_point(
            self.storage, where="" if config.checkpoint_dir is None else str(config.checkpoint_dir),
            committed=committed_output(self.graph), fresh=config.fresh, first_attempt=not result.restored_from,
            savepoint=self._savepoint, next_id=self._next_id, now_wall=self.clock.wall(),
            orphan_grace=orphan_grace(self.storage, config.checkpoint.timeout), failpoints=self.failpoints,
        )
        self._next_id = choice.next_id
        if choice.metadata is not None:
            self._origin = choice.origin
        if choice.savepoint is not None:
            result.restored_savepoint = choice.savepoint
        return choice

    def _attempt_state_dir(self) -> str | None:
        """A working directory for the local state of this attempt's tasks (``rocksdb``, incremental
        ``heap``), removed when the attempt ends, however it ends."""
        config = self.config
        if config.state_backend != "rocksdb" and not config.heap_incremental:
            return None
        base = config.state_dir
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        state_dir = tempfile.mkdtemp(prefix="flowstate-attempt-", dir=base)
        self._backend = BackendSpec(config.state_backend, state_dir, config.heap_incremental)
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
        """A new executor for one attempt (``flowstate.executors.choice``)."""
        hold = (self._lock.fileno(),) if self._lock is not None else ()
        if self.executor_name == "processes" and self._forkserver is None:
            from flowstate.executors.forkserver import ForkServerHandle

            self._forkserver = ForkServerHandle()  # started by the first attempt, stopped by run()
        # Tasks in this process share its storage client and the savepoint routes of its shell.
        site = TaskSite(self.storage, self.clock, self._targets)
        return new_executor(self.executor_name, self.workers, self.graph, self.clock, site=site, hold=hold,
                            forkserver=self._forkserver)


def run_job(flow: Dataflow, config: JobConfig, *, failpoints: Failpoints | None = None, clock: Clock | None = None) -> JobResult:
    return JobRunner(flow, config, failpoints=failpoints, clock=clock).run()
