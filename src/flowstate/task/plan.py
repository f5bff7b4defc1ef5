"""The attempt plan: everything an executor needs to build the tasks of one attempt, as one frozen,
picklable value.

Rules:

1. **No hidden channels.** Every executor (threads, worker processes, Ray actors) builds its tasks
   from an ``AttemptPlan`` and from nothing else of the job runner
   (``flowstate.task.factory``). A worker is a fresh interpreter that receives the plan
   pickled (``pack``) and builds the same tasks from it.
2. **References, not bytes.** The plan names the restore point (its metadata and a ``StorageSpec`` of
   the storage that holds its files) and, for every task, the state files (``TaskState`` handles) it
   reads. It holds no loaded state and no open storage client: each process opens its own storage
   from the spec and loads the state files of its own tasks only.
3. Which files a task reads (``plan_reads``) is decided from the metadata alone. A task reads the
   files of every old task of the vertices that held state of its operators (by uid, as the metadata
   records them) and of the old vertex of its own name (source positions, channel state); when the
   vertex, its parallelism and the parallelism of every vertex feeding it are unchanged and it is not
   a source, only the file of the old subtask with its own index. Those files hold every part of
   every state that state assignment (``flowstate.task.assignment``) can give the task.
   A file no task reads (state of an operator the job no longer has) is read by the first task of the
   job, so that the refusal, or the drop under ``allow_non_restored_state``, still happens.
4. The plan's graph holds the user's functions. ``pack`` pickles it with cloudpickle: lambdas,
   closures and everything defined in a job file that is not importable (``flowstate run job.py``)
   travel by value; functions and classes of importable modules by reference, so those modules must
   be importable where the workers run (a worker gets the coordinator's ``sys.path``). What cannot be
   pickled at all (a lock, a socket, an open file held by a function) is refused with a
   ``ConfigError`` saying to create it in ``open(ctx)``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flowstate.checkpoint.ids import TaskId, task_id
from flowstate.config import JobConfig, Mode
from flowstate.errors import ConfigError
from flowstate.failpoints import Failpoints
from flowstate.graph import JobGraph
from flowstate.state.backend import BackendFactory
from flowstate.storage.base import CheckpointMetadata, CheckpointStorage, TaskState
from flowstate.storage.factory import is_url, open_storage


@dataclass(frozen=True, slots=True)
class StorageSpec:
    """Where checkpoint storage is, as a value any process can open: an absolute local path, or a
    URL (``s3://bucket/prefix``; the endpoint and credentials come from each process's ``AWS_*``
    environment variables)."""

    location: str

    @classmethod
    def of(cls, location: str | os.PathLike[str]) -> StorageSpec:
        if is_url(location):
            return cls(str(location))
        return cls(str(Path(location).resolve()))

    @property
    def is_object_store(self) -> bool:
        return is_url(self.location) and not self.location.startswith("file:")

    def open(self, failpoints: Failpoints | None = None) -> CheckpointStorage:
        """A new client of this storage, owned by the calling process."""
        try:
            return open_storage(self.location, failpoints=failpoints)
        except ValueError as exc:
            raise ConfigError(f"checkpoint storage {self.location}: {exc}") from None


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """The keyed state backend of the tasks: ``heap``, or ``rocksdb`` with its working directory."""

    name: str = "heap"
    state_dir: str | None = None
    """Where the attempt's instances keep their working files (``None``: a temporary directory):
    RocksDB's databases, the heap's incremental chain files."""
    incremental: bool = False
    """``heap``: incremental snapshots (a chain of a base and deltas in shared files) rather than full
    ones (``heap_incremental``)."""

    def factory(self) -> BackendFactory:
        from flowstate.state.memory import HeapBackendFactory

        if self.name != "rocksdb":
            return HeapBackendFactory(self.incremental, self.state_dir)
        try:
            from flowstate.state.rocksdb import RocksDBBackendFactory
        except ImportError as exc:
            raise ConfigError(
                f"the rocksdb state backend needs the rocksdict and msgpack packages ({exc}): "
                "pip install 'flowstate[rocksdb]'"
            ) from None
        return RocksDBBackendFactory(base_dir=self.state_dir)


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """The part of a job's configuration that tasks use."""

    mode: Mode
    batch_size: int = 2048
    channel_capacity: int = 8
    alignment_timeout: float | None = None
    max_inflight_bytes: int = 64 * 1024 * 1024
    compression: str = "none"
    incremental: bool = True
    allow_non_restored_state: bool = False
    drop_sink_state: bool = False

    @classmethod
    def of(cls, config: JobConfig) -> TaskConfig:
        return cls(config.mode, config.batch_size, config.channel_capacity, config.alignment_timeout,
                   config.max_inflight_bytes, config.compression, config.incremental,
                   config.allow_non_restored_state, config.drop_sink_state)


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """The snapshot an attempt restores from: a completed checkpoint of the job's storage, or a
    savepoint in a directory of its own."""

    metadata: CheckpointMetadata
    storage: StorageSpec
    """The storage holding the snapshot's files."""
    what: str
    """How messages name it: ``checkpoint 7`` or ``savepoint '/path'``."""


@dataclass(frozen=True, slots=True)
class AttemptPlan:
    """One attempt of a job, as every executor builds its tasks from it (see the module rules)."""

    graph: JobGraph
    config: TaskConfig
    checkpoints: StorageSpec | None
    """Where the tasks write their snapshots (``None``: the job takes no checkpoints)."""
    backend: BackendSpec = field(default_factory=BackendSpec)
    failpoints: Failpoints = field(default_factory=Failpoints)
    """Pickled, only its actions travel: each process then counts its own hits (rule 4 of
    ``flowstate.executors.ray_cluster``) unless it attaches to the counts the coordinator shares
    (``Failpoints.share``, as the worker processes of ``flowstate.executors.processes`` do)."""
    restore: RestorePoint | None = None
    reads: Mapping[TaskId, tuple[TaskState, ...]] = field(default_factory=dict)
    """Task → the state files of the restore point it reads (rule 3); empty without a restore."""

    def tasks(self) -> list[TaskId]:
        """Every task of the attempt, in graph order."""
        return [task_id(v.name, i) for v in self.graph.vertices for i in range(v.parallelism)]

    def reads_of(self, tasks: Collection[TaskId]) -> list[TaskState]:
        """The state files ``tasks`` read together, each once, in the order of the metadata."""
        if self.restore is None:
            return []
        wanted = {ts.task for t in tasks for ts in self.reads.get(t, ())}
        return [ts for ts in self.restore.metadata.tasks if ts.task in wanted]


def pack(plan: AttemptPlan) -> bytes:
    """``plan`` as bytes for a worker process (rule 4)."""
    import cloudpickle

    try:
        return cloudpickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - whatever pickling raises, the cause is in the message
        raise ConfigError(
            f"job {plan.graph.name!r} cannot be sent to worker processes ({type(exc).__name__}: {exc}): create "
            "objects such as connections, clients, locks and open files in open(ctx), or run with executor threads"
        ) from exc


def unpack(job: bytes) -> AttemptPlan:
    """The plan ``pack`` made, in a worker process. A module of the job that this process cannot
    import is a ``ConfigError`` (the restart strategy could not help)."""
    try:
        plan = pickle.loads(job)
    except ImportError as exc:
        raise ConfigError(
            f"a worker process cannot load the job ({type(exc).__name__}: {exc}): the modules of the job's "
            "functions must be importable in worker processes (PYTHONPATH), or run with executor threads"
        ) from None
    if not isinstance(plan, AttemptPlan):
        raise TypeError(f"expected an AttemptPlan, got {type(plan).__name__}")
    return plan


def plan_reads(graph: JobGraph, metadata: CheckpointMetadata) -> dict[TaskId, tuple[TaskState, ...]]:
    """Which state files of ``metadata`` each task of ``graph`` reads (rule 3). Pure."""
    by_vertex: dict[str, list[TaskState]] = {}
    for ts in metadata.tasks:
        if ts.handle is not None:
            by_vertex.setdefault(ts.vertex, []).append(ts)
    owners = metadata.graph.operators if metadata.graph is not None else None
    reads: dict[TaskId, tuple[TaskState, ...]] = {}
    for v in graph.vertices:
        if owners is not None:
            related = {v.name} | {owners[n.uid].vertex for n in v.chain if n.uid in owners}
        else:
            related = set(by_vertex)  # a metadata that does not say where each uid was
        same_layout = (not v.is_source and metadata.parallelism.get(v.name) == v.parallelism
                       and all(metadata.parallelism.get(e.source) == graph.vertex(e.source).parallelism
                               for e in v.inputs))
        for i in range(v.parallelism):
            files = [ts for u in sorted(related) for ts in by_vertex.get(u, ())
                     if not (u == v.name and same_layout) or ts.subtask == i]
            reads[task_id(v.name, i)] = tuple(files)
    read = {ts.task for files in reads.values() for ts in files}
    unread = tuple(ts for files in by_vertex.values() for ts in files if ts.task not in read)
    if unread and graph.vertices:
        first = task_id(graph.vertices[0].name, 0)
        reads[first] = reads[first] + unread
    return reads


def plan_attempt(
    graph: JobGraph, config: JobConfig, *, failpoints: Failpoints, restore: RestorePoint | None,
    backend: BackendSpec,
) -> AttemptPlan:
    """The plan of one attempt of ``graph`` under ``config``, restoring from ``restore`` (or from
    scratch)."""
    checkpoints = None
    if config.mode.checkpoints and config.checkpoint_dir is not None:
        checkpoints = StorageSpec.of(config.checkpoint_dir)
    reads = plan_reads(graph, restore.metadata) if restore is not None else {}
    return AttemptPlan(graph, TaskConfig.of(config), checkpoints, backend, failpoints, restore, reads)
