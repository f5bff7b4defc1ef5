"""The checkpoint history a run records: checkpoints with their subtasks, restores and restarts."""

from __future__ import annotations

import json
from pathlib import Path

import flowstate as fs
from flowstate.config import FixedDelayRestart
from flowstate.observe.history import (
    HISTORY_FILE,
    KEEP,
    CheckpointRecord,
    HistoryLog,
    RestartRecord,
    RestoreRecord,
    StartRecord,
    read_history,
)

from tests.observe.jobs import Running, keyed_count
from tests.observe.test_metrics import samples, total

RECORDS = 30_000


def test_a_run_with_a_failure_records_its_checkpoints_the_restart_and_both_restores(tmp_path: Path) -> None:
    # Four tasks acknowledge each checkpoint: the ninth acknowledgement (checkpoint 3) fails to write,
    # its task declines, and with no failed checkpoint tolerated the job restarts.
    failpoints = fs.Failpoints({"task.after_snapshot_before_ack": "raise@9"})
    job = Running(keyed_count(RECORDS, rate=10_000), tmp_path / "chk", executor="threads", interval=0.2,
                  restart=FixedDelayRestart(2, 0.0), failpoints=failpoints, tolerable_failures=0)
    result = job.join()
    assert result.restarts == 1 and result.restored_from[0] is None and result.restored_from[1] >= 1
    events = read_history(tmp_path / "chk")
    assert isinstance(events[0], StartRecord) and events[0].settings["mode"] == "exactly_once"
    assert [e.checkpoint_id for e in events if isinstance(e, RestoreRecord)] == result.restored_from
    failed = next(e for e in events if isinstance(e, CheckpointRecord) and not e.completed)
    assert failed.checkpoint_id == 3 and failed.declines[0].reason == "SNAPSHOT_FAILURE"
    assert "task.after_snapshot_before_ack" in failed.declines[0].detail
    restart = next(e for e in events if isinstance(e, RestartRecord))
    assert events.index(failed) < events.index(restart)
    assert "checkpoint" in restart.reason
    completed = [e for e in events if isinstance(e, CheckpointRecord) and e.completed]
    assert len(completed) >= 3 and completed[-1].final
    for c in completed:
        assert sorted(s.task for s in c.subtasks) == ["0-source#0", "0-source#1", "1-keyed_process#0", "1-keyed_process#1"]
        for s in c.subtasks:
            assert s.ack_seconds is not None and 0 <= s.ack_seconds <= c.duration + 0.05
            assert s.sync_seconds + s.async_seconds <= s.ack_seconds + 1e-6
    # What the metrics say about the same run: one restart, one restore from a checkpoint, and the
    # sources' counters carried over the restart (the second attempt replays from the checkpoint).
    final = samples(job.runner.observer.metrics.exposition().decode())
    assert final[("flowstate_restarts_total", ())] == 1
    assert final[("flowstate_restores_total", ())] == 1
    assert total(final, "flowstate_task_records_in_total", "0-source") >= RECORDS
    assert total(final, "flowstate_task_records_in_total", "1-keyed_process") >= RECORDS


def test_without_a_history_file_the_completed_checkpoints_on_disk_are_the_history(tmp_path: Path) -> None:
    directory = tmp_path / "chk"
    fs.run(
        keyed_count(5_000, rate=10_000),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=directory, interval=0.1, retained=3),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    recorded = [e for e in read_history(directory) if isinstance(e, CheckpointRecord)]
    (directory / HISTORY_FILE).unlink()
    from_disk = read_history(directory)
    assert all(isinstance(e, CheckpointRecord) and e.completed for e in from_disk)
    assert len(from_disk) == 3  # the retained ones
    by_id = {c.checkpoint_id: c for c in recorded}
    for c in from_disk:
        assert isinstance(c, CheckpointRecord)
        assert c.size == by_id[c.checkpoint_id].size and c.duration > 0
        assert all(s.ack_seconds is None for s in c.subtasks)


def test_a_long_history_keeps_its_newest_events_when_a_run_starts(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path)
    for i in range(KEEP + 10):
        log.append(RestartRecord(float(i), f"failure {i}"))
    log.close()
    HistoryLog(tmp_path).close()
    lines = (tmp_path / HISTORY_FILE).read_text().splitlines()
    assert len(lines) == KEEP
    assert json.loads(lines[0])["reason"] == "failure 10" and json.loads(lines[-1])["reason"] == f"failure {KEEP + 9}"
    HistoryLog(tmp_path, fresh=True).close()
    assert (tmp_path / HISTORY_FILE).read_text() == ""
