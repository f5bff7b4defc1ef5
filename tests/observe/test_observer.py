"""The coordinator's observer, fed events by hand on a manual clock."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.clock import ManualClock
from flowstate.config import JobConfig
from flowstate.graph import build_job_graph
from flowstate.observe.counters import TaskCounters
from flowstate.observe.history import CheckpointRecord, read_history
from flowstate.observe.observer import Observer
from flowstate.storage.base import CheckpointMetadata, TaskState

from tests.observe.jobs import keyed_count

TASKS = ["0-source#0", "0-source#1", "1-keyed_process#0", "1-keyed_process#1"]


@dataclass
class Handle:
    counted: TaskCounters

    def counters(self) -> TaskCounters:
        return self.counted


def observer(tmp_path: Path) -> tuple[Observer, ManualClock]:
    clock = ManualClock(start=100.0)
    config = JobConfig(checkpoint_dir=tmp_path)
    obs = Observer("observed", config, build_job_graph(keyed_count(10, rate=10.0)), clock)
    obs.start(None, None)
    return obs, clock


def test_a_failed_checkpoint_names_its_declines_and_the_subtasks_that_never_acknowledged(tmp_path: Path) -> None:
    obs, clock = observer(tmp_path)
    obs.triggered(CheckpointId(4), clock.monotonic(), False)
    clock.advance(0.2)
    obs.acknowledged(TaskId("0-source#0"), CheckpointId(4), clock.monotonic())
    obs.acknowledged(TaskId("0-source#1"), CheckpointId(4), clock.monotonic())
    obs.declined(TaskId("1-keyed_process#1"), CheckpointId(4), CheckpointFailureReason.IN_FLIGHT_LIMIT, "too much")
    clock.advance(0.1)
    obs.aborted(CheckpointId(4), CheckpointFailureReason.IN_FLIGHT_LIMIT, clock.monotonic())
    obs.aborted(CheckpointId(5), CheckpointFailureReason.EXPIRED, clock.monotonic())  # never triggered here: ignored
    obs.close()
    failed = [e for e in read_history(tmp_path) if isinstance(e, CheckpointRecord)]
    assert len(failed) == 1
    record = failed[0]
    assert record.checkpoint_id == 4 and record.status == "failed" and record.reason == "IN_FLIGHT_LIMIT"
    assert abs(record.duration - 0.3) < 1e-9 and abs(record.trigger_time - (100.0 + 1_700_000_000.0)) < 1e-6
    assert [d.task for d in record.declines] == ["1-keyed_process#1"] and record.declines[0].detail == "too much"
    assert record.missing == ("1-keyed_process#0",)
    assert sorted(s.task for s in record.subtasks) == ["0-source#0", "0-source#1"]


def test_a_completed_checkpoint_keeps_each_subtasks_acknowledgement_time(tmp_path: Path) -> None:
    obs, clock = observer(tmp_path)
    obs.triggered(CheckpointId(1), clock.monotonic(), False)
    for task in TASKS:
        clock.advance(0.05)
        obs.acknowledged(TaskId(task), CheckpointId(1), clock.monotonic())
    md = CheckpointMetadata(CheckpointId(1), "observed", "exactly_once", False, 1.0, 1.2, 128,
                            {"0-source": 2, "1-keyed_process": 2},
                            tuple(TaskState(TaskId(t), t.split("#")[0], int(t[-1]), None, 0.001, 0.01, 0.02, 0, (), 7, 70)
                                  for t in TASKS))
    obs.completed(md)
    obs.close()
    record = next(e for e in read_history(tmp_path) if isinstance(e, CheckpointRecord))
    assert [round(s.ack_seconds or 0, 3) for s in record.subtasks] == [0.05, 0.1, 0.15, 0.2]
    assert record.size == 280 and record.bytes_written == 28 and record.max_alignment == 0.02


def test_counters_carry_over_attempts(tmp_path: Path) -> None:
    obs, _ = observer(tmp_path)
    first = {"0-source#0": Handle(TaskCounters(100, 100, 1.5, 0))}
    obs.attempt_started(first)
    first["0-source#0"].counted = TaskCounters(250, 240, 2.0, 0)
    assert obs.task_counters()["0-source#0"] == TaskCounters(250, 240, 2.0, 0)
    obs.attempt_started({"0-source#0": Handle(TaskCounters(30, 30, 0.5, 9))})
    assert obs.task_counters()["0-source#0"] == TaskCounters(280, 270, 2.5, 9)  # entries: the newest
    obs.close()

