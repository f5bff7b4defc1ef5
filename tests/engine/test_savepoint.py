"""Savepoints, in-process: asked of a running word count through its ``JobControl``, restored with
``from_savepoint`` at another parallelism or into a changed job, never deleted by retention.

Every restore test asserts that the run restored from the savepoint (its checkpoint id ≥ 1, and the
savepoint's path) and compares the committed output with the batch reference: every ``(word, n)``
exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import flowstate as fs
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.savepoint import open_savepoint

from .jobs import (
    INPUT_LINES,
    INTERVAL,
    RATE,
    Count,
    assert_resumed,
    committed_output,
    difference,
    generator_source,
    wordcount,
)

WAIT = 60.0
"""Seconds a step may take before the test gives up: a guard against a hang, not a measurement."""


class Running:
    """A job running ``fs.run`` on a thread of its own, with its control."""

    def __init__(self, flow: fs.Dataflow, **settings: Any) -> None:
        """``settings``: the option groups of ``fs.run`` (``checkpoints=``, ``recovery=``, …)."""
        self.control = fs.JobControl()
        self.result: fs.JobResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(flow, settings), daemon=True)
        self._thread.start()

    def _run(self, flow: fs.Dataflow, settings: dict[str, Any]) -> None:
        try:
            self.result = fs.run(flow, control=self.control, **settings)
        except BaseException as exc:  # noqa: BLE001 - handed to the test by join()
            self.error = exc

    def wait_for_records(self, records: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.control.status().get("records", 0) < records:
            assert self._thread.is_alive(), f"the job ended first: {self.error!r}"
            assert time.monotonic() < deadline, f"the job never read {records} records"
            time.sleep(0.01)

    def join(self) -> fs.JobResult:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the job did not end"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def answer(future: Future[dict[str, Any]]) -> dict[str, Any]:
    return future.result(timeout=WAIT)


def assert_exactly_the_reference(output: Path, expected: Counter) -> None:
    actual = committed_output(output)
    assert Counter(actual) == expected, difference(actual, expected)


def stop_with_savepoint_mid_input(dirs, flow: fs.Dataflow) -> Path:
    """Run ``flow`` and stop it with a savepoint after a third of its input; the savepoint's path."""
    job = Running(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL))
    job.wait_for_records(INPUT_LINES // 3)
    stopped = answer(job.control.stop(savepoint=True))
    result = job.join()

    assert stopped["stopped"] and stopped["savepoint"]
    path = Path(stopped["path"])
    assert result.savepoints == [str(path)]
    assert result.records < INPUT_LINES, "the job was stopped before the end of its input"
    assert committed_output(dirs.output), "stopping committed the output up to the savepoint"
    return path


def slow_source(parallelism: int) -> fs.GeneratorSource:
    """The input at about 500 lines a second in all, whatever the parallelism."""
    return generator_source(INPUT_LINES, splits=4, rate=RATE / 2 / parallelism)


# ---- stop with a savepoint, restore at another parallelism ----------------------------------------------


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 3), (4, 1)], ids=["1-to-2", "2-to-3", "4-to-1"])
def test_a_stop_with_savepoint_restored_at_another_parallelism_gives_the_batch_result(dirs, expected, before, after):
    path = stop_with_savepoint_mid_input(dirs, wordcount(dirs.output, source=slow_source(before), parallelism=before))
    savepoint_id = open_savepoint(path).metadata.checkpoint_id
    assert savepoint_id >= 1

    result = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, splits=4), parallelism=after),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(from_savepoint=path),
    )

    assert result.restored_from == [savepoint_id]
    assert result.restored_savepoint == str(path)
    assert_exactly_the_reference(dirs.output, expected)
    assert open_savepoint(path).metadata.checkpoint_id == savepoint_id, "the savepoint is still there, intact"


def test_a_savepoint_directory_holds_one_snapshot_in_the_checkpoint_format(dirs):
    path = stop_with_savepoint_mid_input(dirs, wordcount(dirs.output, source=slow_source(2)))

    assert path.parent == dirs.checkpoints / "savepoints"
    (info,) = LocalCheckpointStorage(path).list_checkpoints()
    assert info.status == "completed" and info.metadata is not None
    assert info.metadata.savepoint is True and info.metadata.final
    assert all(t.channel_state_bytes == 0 for t in info.metadata.tasks)


# ---- savepoints that leave the job running ---------------------------------------------------------------


def test_a_savepoint_commits_nothing_and_a_job_restored_from_it_after_a_crash_gives_the_batch_result(dirs, expected):
    crash = threading.Event()

    def words(text: str) -> list[str]:
        if crash.is_set():
            raise RuntimeError("crash after the savepoint")
        return text.split()

    def flow(parallelism: int, split: Callable[[str], list[str]]) -> fs.Dataflow:
        f = fs.Dataflow("wordcount", parallelism=parallelism)
        (f.source(slow_source(parallelism), uid="lines").flat_map(split, uid="words")
          .key_by(lambda word: word).process(Count(), uid="count").sink(fs.FileSink(dirs.output), uid="counts"))
        return f

    # No periodic checkpoints: the savepoint is the only snapshot, and nothing commits output.
    # Threads: the crash is switched on through this process's memory.
    job = Running(
        flow(2, words),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=None, mode="unaligned"),
        recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    job.wait_for_records(INPUT_LINES // 3)
    taken = answer(job.control.savepoint())
    crash.set()
    with pytest.raises(fs.JobFailedError, match="crash after the savepoint"):
        job.join()
    assert taken["savepoint"] and not taken["stopped"]
    assert committed_output(dirs.output) == [], "a savepoint that leaves the job running commits nothing"

    result = fs.run(
        flow(3, str.split),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, mode="unaligned"),
        recovery=fs.RecoveryOptions(from_savepoint=taken["path"]),
    )

    assert result.restored_from == [taken["checkpoint_id"]] and taken["checkpoint_id"] >= 1
    assert_exactly_the_reference(dirs.output, expected)


def test_retention_never_deletes_a_savepoint(dirs, expected):
    job = Running(
        wordcount(dirs.output, source=slow_source(2)),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, retained=1),
    )
    job.wait_for_records(INPUT_LINES // 4)
    taken = answer(job.control.savepoint())
    result = job.join()

    assert result.checkpoints_completed >= 3, "checkpoints completed after the savepoint"
    assert [info.checkpoint_id for info in LocalCheckpointStorage(dirs.checkpoints).list_checkpoints()] == [
        result.last_checkpoint]
    assert open_savepoint(taken["path"]).metadata.checkpoint_id == taken["checkpoint_id"]
    assert result.savepoints == [taken["path"]]
    assert_exactly_the_reference(dirs.output, expected)


def test_a_checkpoint_on_request_completes_without_periodic_checkpoints(dirs, expected):
    job = Running(
        wordcount(dirs.output, source=slow_source(2)),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=None),
    )
    job.wait_for_records(INPUT_LINES // 4)
    taken = answer(job.control.checkpoint())
    result = job.join()

    assert taken == {"checkpoint_id": 1, "savepoint": False, "path": None, "stopped": False}
    assert result.checkpoints_completed == 2, "the requested one and the final one"
    assert_exactly_the_reference(dirs.output, expected)


def test_a_second_stop_is_refused_while_the_first_is_under_way(dirs):
    job = Running(
        wordcount(dirs.output, source=slow_source(2)),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )
    job.wait_for_records(INPUT_LINES // 4)
    first, second = job.control.stop(), job.control.stop(savepoint=True)

    with pytest.raises(fs.ControlError, match="already stopping"):
        answer(second)
    assert answer(first)["stopped"]
    assert job.join().savepoints == []


# ---- the job's code changed ------------------------------------------------------------------------------


def changed_wordcount(output: Path, *, count_uid: str = "count") -> fs.Dataflow:
    """The word count with an operator added before ``words`` and the counter at parallelism 3."""
    flow = fs.Dataflow("wordcount", parallelism=2)
    (flow.source(generator_source(INPUT_LINES, splits=4), uid="lines")
         .map(str.lower, uid="lower")
         .flat_map(str.split, uid="words")
         .key_by(lambda word: word)
         .process(Count(), uid=count_uid, parallelism=3)
         .sink(fs.FileSink(output), uid="counts"))
    return flow


def test_state_maps_by_uid_into_a_job_with_an_operator_added_and_another_rescaled(dirs, expected):
    path = stop_with_savepoint_mid_input(dirs, wordcount(dirs.output, source=slow_source(2)))

    result = fs.run(
        changed_wordcount(dirs.output),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(from_savepoint=path),
    )

    assert result.restored_savepoint == str(path) and result.restored_from[0] >= 1
    assert_exactly_the_reference(dirs.output, expected)


def test_state_that_maps_to_no_operator_is_refused_naming_operator_and_state_unless_allowed(dirs, expected, caplog):
    path = stop_with_savepoint_mid_input(dirs, wordcount(dirs.output, source=slow_source(2)))
    before = committed_output(dirs.output)

    with pytest.raises(fs.ConfigError) as refused:
        fs.run(
            changed_wordcount(dirs.output, count_uid="tally"),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(from_savepoint=path),
        )
    message = str(refused.value)
    assert f"savepoint {str(path)!r}" in message
    assert "keyed state 'count' of operator 'Count' (uid 'count'), which the job no longer has" in message
    assert "--allow-non-restored-state" in message
    assert committed_output(dirs.output) == before, "a refused restore changes nothing"

    with caplog.at_level(logging.WARNING, logger="flowstate"):
        result = fs.run(
            changed_wordcount(dirs.output, count_uid="tally"),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(from_savepoint=path, allow_non_restored_state=True),
        )

    assert result.restored_savepoint == str(path)
    assert any("dropping state" in r.message and "(uid 'count')" in r.message for r in caplog.records)
    # The counter started empty: the words after the savepoint were counted from 1 again.
    counted = Counter(committed_output(dirs.output))
    assert counted != expected and max(counted.values()) == 2


def test_running_again_with_the_same_savepoint_after_a_crash_resumes_from_the_runs_own_checkpoint(dirs, expected):
    path = stop_with_savepoint_mid_input(dirs, wordcount(dirs.output, source=slow_source(2)))
    savepoint_id = open_savepoint(path).metadata.checkpoint_id

    with pytest.raises(fs.JobFailedError):
        fs.run(
            wordcount(dirs.output, source=slow_source(3), parallelism=3),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(from_savepoint=path, restart=fs.NoRestart()),
            failpoints=fs.Failpoints({"coordinator.metadata_before_notify": "raise@2"}),
        )
    again = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, splits=4), parallelism=3),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(from_savepoint=path),
    )

    assert again.restored_from == [savepoint_id + 2], "the newest checkpoint of the run restored from the savepoint"
    assert again.restored_savepoint is None
    assert_resumed(again, INPUT_LINES)
    assert_exactly_the_reference(dirs.output, expected)


def test_a_path_that_holds_no_savepoint_is_refused(dirs, tmp_path):
    with pytest.raises(fs.ConfigError, match="is not a directory"):
        fs.run(
            wordcount(dirs.output, source=generator_source(10)),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints),
            recovery=fs.RecoveryOptions(from_savepoint=tmp_path / "missing"),
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(fs.ConfigError, match="holds no snapshot"):
        fs.run(
            wordcount(dirs.output, source=generator_source(10)),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints),
            recovery=fs.RecoveryOptions(from_savepoint=tmp_path / "empty"),
        )
    with pytest.raises(fs.ConfigError, match="names the checkpoint directory"):
        fs.run(
            wordcount(dirs.output, source=generator_source(10)),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints),
            recovery=fs.RecoveryOptions(from_savepoint=dirs.checkpoints),
        )
