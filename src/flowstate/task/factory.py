"""The task factory: the tasks of an ``AttemptPlan`` that run in this process, each restored from its
own state, the same for every executor.

A process builds its tasks from two things only: the plan (``flowstate.task.plan``, a value) and
a ``TaskSite``, what the process itself supplies: its own client of the checkpoint storage, opened
from the plan's spec, and its clock. Step by step (the order matters):

Step 1: read the state files that the plan assigns to this process's tasks (each file once), from
        the restore point's storage, opened by this process.
Step 2: assign the loaded states to the tasks (``flowstate.task.assignment``: by operator
        uid, at any parallelism); what cannot be assigned raises ``ConfigError`` naming the operator
        and the state. Keyed state files are made local (``CheckpointStorage.local_path``).
Step 3: build every task of this process: gates from the wiring, outputs to the gates of its
        consumers, operators opened from their resume state by the task when it runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from flowstate import failpoints as fpn
from flowstate.checkpoint.ids import TaskId, task_id
from flowstate.clock import Clock, SystemClock
from flowstate.connectors.base import open_reader
from flowstate.graph import JobVertex
from flowstate.operators.base import OperatorEnv
from flowstate.operators.build import build_operator
from flowstate.state.backend import BackendFactory, RestoredState
from flowstate.storage.base import CheckpointStorage
from flowstate.storage.savepoint import SnapshotTargets
from flowstate.storage.state_file import KeyedSnapshot, TaskStateFile, decode_task_state
from flowstate.task.assignment import assign_states
from flowstate.task.output import Output, OutputEdge
from flowstate.task.plan import AttemptPlan
from flowstate.task.source import SourceTask
from flowstate.task.task import StreamTask, Task, TaskEnv
from flowstate.transport.channels import InputGate, LocalWiring
from flowstate.transport.ports import ChannelWriter, Reports, Wiring

log = logging.getLogger("flowstate")


@dataclass(frozen=True, slots=True)
class TaskSite:
    """What the process that runs tasks supplies beside the plan: its own storage clients and clock."""

    checkpoints: CheckpointStorage | None
    """This process's client of the job's checkpoint storage (``None``: no checkpoints)."""
    clock: Clock
    targets: SnapshotTargets | None = None
    """Where tasks write snapshots: checkpoints to ``checkpoints``, savepoints to their directories.
    The coordinator's process shares its own (it adds the routes of savepoints)."""

    @classmethod
    def open(cls, plan: AttemptPlan, clock: Clock | None = None) -> TaskSite:
        """A site of a process of its own (a worker): it opens the storage from the plan's spec."""
        checkpoints = None
        if plan.checkpoints is not None:
            checkpoints = plan.checkpoints.open(plan.failpoints)
        return cls(checkpoints, clock or SystemClock())

    def snapshot_targets(self) -> SnapshotTargets | None:
        if self.checkpoints is None:
            return None
        return self.targets if self.targets is not None else SnapshotTargets(self.checkpoints)

    def restore_storage(self, plan: AttemptPlan) -> CheckpointStorage:
        """A client of the storage that holds the restore point's files."""
        assert plan.restore is not None
        if plan.checkpoints == plan.restore.storage and self.checkpoints is not None:
            return self.checkpoints
        return plan.restore.storage.open(plan.failpoints)


def load_resume_states(
    plan: AttemptPlan, tasks: Collection[TaskId], site: TaskSite, dropped: list[str] | None = None,
) -> dict[TaskId, TaskStateFile] | None:
    """Steps 1 and 2 for ``tasks``: the resume state of each (an empty one for a task that gets no
    state), or ``None`` when the plan restores nothing. State dropped under
    ``allow_non_restored_state`` is logged, or added to ``dropped`` when given (a worker sends it to
    the coordinator, which logs it once)."""
    restore = plan.restore
    if restore is None:
        return None
    storage = site.restore_storage(plan)
    failpoints = plan.failpoints
    loaded: dict[TaskId, TaskStateFile] = {}
    try:
        for ts in plan.reads_of(tasks):
            if loaded and failpoints:
                failpoints.hit(fpn.RECOVERY_MID_LOAD)
            assert ts.handle is not None
            loaded[ts.task] = decode_task_state(storage.read_state(ts.handle))
    except Exception as exc:  # noqa: BLE001 - named for the restart strategy's account of the failure
        raise StateLoadError(f"reading the state of {restore.what} failed: {type(exc).__name__}: {exc}") from exc
    assignment = assign_states(plan.graph, restore.metadata, loaded,
                               allow_non_restored_state=plan.config.allow_non_restored_state,
                               drop_sink_state=plan.config.drop_sink_state, what=restore.what)
    if dropped is not None:
        dropped.extend(assignment.dropped)
    else:
        for sentence in assignment.dropped:
            log.warning("dropping state (--allow-non-restored-state): %s", sentence)
    empty = TaskStateFile()
    return {tid: _restorable(assignment.states.get(tid, empty), storage) for tid in tasks}


class StateLoadError(Exception):
    """A state file of the restore point could not be read: the attempt fails, the restart strategy
    decides."""


def build_tasks(
    plan: AttemptPlan, reports: Reports, pool: ThreadPoolExecutor, site: TaskSite, wiring: Wiring | None = None,
    dropped: list[str] | None = None,
) -> dict[TaskId, Task]:
    """Step 3: the tasks of ``plan`` that run in this process (``wiring.is_local``; all of them by
    default), each restored from its state. A producer writes to the gate ``wiring`` gives for its
    consumer: the consumer's own input gate when it is local, else a writer to it."""
    graph = plan.graph
    config = plan.config
    wiring = wiring or LocalWiring(config.channel_capacity)
    local = [t for t in plan.tasks() if wiring.is_local(t)]
    states = load_resume_states(plan, local, site, dropped)
    env = TaskEnv(config.mode, site.snapshot_targets(), reports, pool, plan.failpoints, site.clock,
                  config.batch_size, config.alignment_timeout, config.max_inflight_bytes, config.compression,
                  config.incremental)
    backend = plan.backend.factory()
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
            resume = states.get(tid, TaskStateFile()) if states is not None else None
            cancelled = threading.Event()
            output = _output(plan, v, i, gates, bases, cancelled)
            tasks[tid] = _task(plan, backend, v, i, tid, output, cancelled, gates[(v.name, i)], env, resume)
    return tasks


def _output(
    plan: AttemptPlan, v: JobVertex, i: int, gates: dict[tuple[str, int], Any], bases: dict[str, list[int]],
    cancelled: threading.Event,
) -> Output:
    """Subtask ``i`` of ``v`` writes to channel ``base + i`` of every consumer subtask (one
    channel per upstream subtask), or, on a forward edge, to channel ``base`` of subtask ``i``."""
    graph = plan.graph
    edges = []
    for consumer, k in graph.consumers(v.name):
        edge = consumer.inputs[k]
        base = bases[consumer.name][k]
        if edge.partition == "forward":
            targets: list[tuple[ChannelWriter, int]] = [(gates[(consumer.name, i)], base)]
        else:
            targets = [(gates[(consumer.name, t)], base + i) for t in range(consumer.parallelism)]
        edges.append(OutputEdge(edge.partition, targets, edge.key_fn, graph.max_parallelism, cancelled))
    return Output(edges, plan.config.batch_size)


def _task(
    plan: AttemptPlan, backend: BackendFactory, v: JobVertex, i: int, tid: TaskId, output: Output,
    cancelled: threading.Event, gate: InputGate, env: TaskEnv, resume: TaskStateFile | None,
) -> Task:
    op_env = OperatorEnv(i, v.parallelism, plan.graph.max_parallelism, plan.config.mode.checkpoints,
                         plan.failpoints, backend, env.clock)
    key_fn = v.inputs[0].key_fn if v.inputs else None
    nodes = v.chain[1:] if v.is_source else v.chain
    ops = [build_operator(n, op_env, key_fn if idx == 0 and not v.is_source else None) for idx, n in enumerate(nodes)]
    if v.is_source:
        source = v.chain[0].fn
        reader = open_reader(source, i, v.parallelism, resume.source if resume is not None else None)
        return SourceTask(tid, v.name, i, ops, output, gate, env, resume, cancelled, reader=reader)
    return StreamTask(tid, v.name, i, ops, output, gate, env, resume, cancelled)


def _restorable(state: TaskStateFile, storage: CheckpointStorage) -> TaskStateFile:
    """``state`` with every keyed operator's snapshot (or the list of them a rescale assigned) as the
    backend takes it back: its data, and a readable local path for every file it references (checked
    against its size and checksum on the way). Any other state is kept as it is."""
    def restorable(value: Any) -> Any:
        if isinstance(value, list):
            return [restorable(v) for v in value]
        if not isinstance(value, KeyedSnapshot):
            return value
        return RestoredState(dict(value.data), {key: str(storage.local_path(h)) for key, h in value.files.items()})

    operators = {uid: restorable(value) for uid, value in state.operators.items()}
    return replace(state, operators=operators)
