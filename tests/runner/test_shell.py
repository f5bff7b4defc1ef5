"""The coordinator's shell (``flowstate.runner.shell``) driven by a script of reports and clock
ticks, with task handles that record their mail and checkpoint storage in memory: no threads, no
files. It checks what the shell does with what the pure coordinator decides: the order of the
metadata write and the completion notices, an abort when the metadata cannot be written, the reason
a declined checkpoint keeps, and control requests it must refuse."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest

import flowstate as fs
from flowstate.checkpoint.coordinator import CheckpointConfig, CheckpointCoordinator
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId, TaskId, task_id
from flowstate.clock import ManualClock
from flowstate.config import JobConfig, Mode
from flowstate.control.endpoint import ControlError, JobControl
from flowstate.graph import build_job_graph
from flowstate.observe.counters import TaskCounters
from flowstate.observe.observer import Observer
from flowstate.runner.result import AttemptFailed, JobResult
from flowstate.runner.shell import CoordinatorShell, ShellContext
from flowstate.runner.status import Phase, RunStatus
from flowstate.storage.base import TaskState
from flowstate.storage.memory import MemoryBlobStore, MemoryCheckpointStorage
from flowstate.storage.savepoint import SnapshotTargets
from flowstate.task.messages import Aborted, Ack, Complete, Decline, Trigger

SOURCE = task_id("numbers", 0)
SINK = task_id("out", 0)


@dataclass
class Handle:
    """A task as the shell sees it; its mail is recorded with what storage held when it arrived."""

    task_id: TaskId
    is_source: bool
    storage: MemoryCheckpointStorage
    mail: list[tuple[Any, list[int]]] = field(default_factory=list)
    records_in: int = 0

    def counters(self) -> TaskCounters:
        return TaskCounters(self.records_in, 0, 0.0, 0, (), (), None, None)

    def post(self, mail: Any) -> None:
        completed = [int(i.checkpoint_id) for i in self.storage.list_checkpoints() if i.status == "completed"]
        self.mail.append((mail, completed))

    def received(self, kind: type) -> list[Any]:
        return [m for m, _ in self.mail if isinstance(m, kind)]


class FailingMetadata(MemoryCheckpointStorage):
    def write_metadata(self, metadata: Any) -> None:
        raise OSError("disk full")


class Script:
    def __init__(self, *, storage: MemoryCheckpointStorage | None = None, mode: Mode = Mode.EXACTLY_ONCE,
                 tolerable_failures: int = 0) -> None:
        flow = fs.Dataflow("numbers")
        flow.source(fs.GeneratorSource(lambda i: i, count=10), name="numbers").sink(fs.PrintSink(), name="out")
        self.config = JobConfig(mode=mode, checkpoint_dir="mem://checkpoints" if mode.checkpoints else None,
                                checkpoint=CheckpointConfig(interval=1.0, tolerable_failures=tolerable_failures))
        graph = build_job_graph(flow, 1)
        self.clock = ManualClock()
        self.storage = storage if storage is not None else MemoryCheckpointStorage(MemoryBlobStore())
        self.tasks = {t: Handle(t, t == SOURCE, self.storage) for t in (SOURCE, SINK)}
        self.status = RunStatus()
        self.control = JobControl()
        self.result = JobResult("numbers", mode)
        self.result.count_attempt(None)
        context = ShellContext(
            job="numbers", config=self.config, graph=graph, clock=self.clock,
            observer=Observer("numbers", self.config, graph, self.clock), failpoints=fs.Failpoints(),
            targets=SnapshotTargets(self.storage), control=self.control, status=self.status, progress=io.StringIO(),
            origin=None, has_storage=True,
        )
        self.coordinator = CheckpointCoordinator(self.config.checkpoint, self.tasks, [SOURCE],
                                                 first_id=CheckpointId(1)) if mode.checkpoints else None
        self.shell = CoordinatorShell(context, self.coordinator, self.tasks, self.result, None)
        if self.coordinator is not None:
            self.shell.execute(self.coordinator.tasks_running(self.clock.monotonic()))

    def advance(self, seconds: float) -> None:
        self.clock.sleep(seconds)
        assert self.coordinator is not None
        self.shell.execute(self.coordinator.tick(self.clock.monotonic()))

    def ack(self, task: TaskId, checkpoint_id: int) -> None:
        cid = CheckpointId(checkpoint_id)
        vertex, subtask = task.split("#")
        handle = self.storage.write_state(cid, f"{task}.state", b"state")
        self.shell.report(Ack(task, cid, TaskState(task, vertex, int(subtask), handle)), self.clock.monotonic())


def test_a_checkpoint_is_triggered_at_the_sources_only_and_completes_after_its_metadata_is_written():
    script = Script()
    script.advance(1.0)

    [trigger] = script.tasks[SOURCE].received(Trigger)
    assert trigger.barrier.checkpoint_id == 1
    assert script.tasks[SINK].received(Trigger) == []

    script.ack(SOURCE, 1)
    assert script.tasks[SOURCE].received(Complete) == []  # one ack is missing
    script.ack(SINK, 1)

    for handle in script.tasks.values():
        [(complete, completed_then)] = [(m, c) for m, c in handle.mail if isinstance(m, Complete)]
        assert complete.checkpoint_id == 1
        assert completed_then == [1]  # the metadata was durable before the notice
    assert script.result.checkpoints_completed == 1 and script.result.last_checkpoint == 1


def test_a_checkpoint_whose_metadata_cannot_be_written_is_aborted_and_never_completes():
    script = Script(storage=FailingMetadata(MemoryBlobStore()), tolerable_failures=5)
    script.advance(1.0)
    script.ack(SOURCE, 1)
    script.ack(SINK, 1)

    for handle in script.tasks.values():
        assert handle.received(Complete) == []
        assert [m.checkpoint_id for m in handle.received(Aborted)] == [1]
    assert script.result.checkpoints_completed == 0 and script.result.checkpoints_failed == 1


def test_a_declined_checkpoint_beyond_the_tolerated_failures_fails_the_attempt_with_the_tasks_reason():
    script = Script(tolerable_failures=0)
    script.advance(1.0)

    with pytest.raises(AttemptFailed, match="cannot pickle 'generator'"):
        script.shell.report(Decline(SINK, CheckpointId(1), CheckpointFailureReason.SNAPSHOT_FAILURE,
                                    "TypeError: cannot pickle 'generator' object"), script.clock.monotonic())
    assert [m.checkpoint_id for m in script.tasks[SOURCE].received(Aborted)] == [1]


def test_a_stop_request_triggers_a_final_checkpoint_and_marks_the_run_stopping():
    script = Script()
    reply = script.control.stop()
    script.shell.serve_control(script.clock.monotonic(), set())

    [trigger] = script.tasks[SOURCE].received(Trigger)
    assert trigger.barrier.final
    assert script.status.phase is Phase.STOPPING
    script.ack(SOURCE, 1)
    script.ack(SINK, 1)
    assert reply.result(timeout=0)["stopped"] is True
    assert script.result.stopped


def test_a_savepoint_asked_of_a_job_without_checkpoints_is_refused_with_the_reason():
    script = Script(mode=Mode.NONE)
    reply = script.control.savepoint()
    script.shell.serve_control(script.clock.monotonic(), set())

    with pytest.raises(ControlError, match="takes no checkpoints"):
        reply.result(timeout=0)
    assert script.tasks[SOURCE].mail == []
