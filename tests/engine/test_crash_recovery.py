"""Crashes injected at named failpoints while the word count runs in-process; the job restarts from
its latest completed checkpoint and the committed output is compared with the batch reference.

The job runs at parallelism 2: two source tasks (``lines -> words``) and two keyed tasks
(``count -> counts``, the FileSink chained to the counting function), so every keyed task has two
input channels and aligns barriers in exactly-once mode. How often each failpoint is hit per
checkpoint follows from that; each failure is placed on the first hit of checkpoint 3, after two
checkpoints completed (``operator.process``, hit per batch, two thirds into the input), and every
test asserts that

- the failpoint fired exactly once and the run recorded the failure (a failpoint that is never hit
  fails the test: the run would trivially be correct);
- the job restarted, and its last attempt restored a checkpoint with id ≥ 1 and resumed from it: its
  sources read fewer lines than the input, the lines up to the checkpoint and the lines it read are
  the input exactly (a restart from scratch, or tasks that ignore their resume state, also give the
  right answer, and prove nothing about recovery);
- in ``exactly_once`` (also with an alignment timeout), ``unaligned`` and ``stop_the_world`` the
  committed output equals the batch reference; in ``at_least_once`` every expected record is present
  (duplicates are allowed).

Every test runs under both executors of one machine: ``threads`` (every task a thread of the test's
process) and ``processes`` (two worker processes started for each attempt, records crossing between
them in frames; a failpoint's ``@N`` counts the hits of the whole job, across processes, and a
failure raised in a worker fails the attempt from there).

A checkpoint that fails without a crash (a task declines it) is different: within
``tolerable_failures`` the job goes on. Discarding the declined checkpoint races with the snapshot
writes other tasks still make into its directory; the last two tests pin that such a race does not
fail the job.
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import dataclass

import pytest

import flowstate as fs
from flowstate.runner import job as job_module
from flowstate.storage.local import LocalCheckpointStorage

from .conftest import Dirs
from .jobs import (
    FAST_RESTART,
    INPUT_LINES,
    INTERVAL,
    RATE,
    WORDS_PER_LINE,
    assert_restored_from_a_checkpoint,
    assert_resumed,
    committed_output,
    difference,
    generator_source,
    wordcount,
)

PARALLELISM = 2
TASKS = 2 * PARALLELISM
"""Source tasks plus keyed tasks."""
COMPLETED_BEFORE_CRASH = 2

SWITCHING = "exactly_once+alignment_timeout"
"""Not a mode of its own: ``exactly_once`` whose alignments turn unaligned after ``ALIGNMENT_TIMEOUT``."""
ALIGNMENT_TIMEOUT = "1ms"
EXACT_MODES = ("exactly_once", "stop_the_world", "unaligned", SWITCHING)
ALL_CHECKPOINTING_MODES = (*EXACT_MODES, "at_least_once")
EXECUTORS = ("threads", "processes")


def mode_settings(mode: str) -> dict[str, str]:
    """The ``fs.CheckpointOptions`` settings of ``mode`` (one of ``ALL_CHECKPOINTING_MODES``)."""
    if mode == SWITCHING:
        return {"mode": "exactly_once", "alignment_timeout": ALIGNMENT_TIMEOUT}
    return {"mode": mode}


def first_hit_after(checkpoints: int, hits_per_checkpoint: int) -> str:
    """The action that raises on the first hit after ``checkpoints`` checkpoints hit the failpoint."""
    return f"raise@{checkpoints * hits_per_checkpoint + 1}"


@dataclass(frozen=True)
class Crash:
    failpoint: str
    hits_per_checkpoint: int | None
    """``None`` for a failpoint hit per batch rather than per checkpoint."""
    modes: tuple[str, ...]
    fixed: str | None = None
    """An action that does not follow from ``hits_per_checkpoint`` (a point hit once per run)."""

    @property
    def action(self) -> str:
        if self.fixed is not None:
            return self.fixed
        if self.hits_per_checkpoint is None:
            # The failpoint is hit once per batch a task processes. With batch_size=1 every batch is
            # one record: a line is one batch of its source task, each of its words one batch of a
            # keyed task. Two thirds of the input in, the rate limit guarantees that more than
            # 0.25 s passed: several checkpoint intervals.
            per_line = 1 + WORDS_PER_LINE
            return f"raise@{per_line * (2 * INPUT_LINES // 3) + 1}"
        return first_hit_after(COMPLETED_BEFORE_CRASH, self.hits_per_checkpoint)


CRASHES = [
    # Only aligned barriers block a channel: stop_the_world pauses the sources instead, and
    # at_least_once only counts barriers (see the test after this list); unaligned blocks only for
    # its final checkpoint. With an alignment timeout, the first barrier still blocks its channel.
    Crash("alignment.channel_blocked", PARALLELISM, ("exactly_once", SWITCHING)),
    Crash("task.before_snapshot", TASKS, ALL_CHECKPOINTING_MODES),
    Crash("task.snapshot_before_forward", TASKS, ALL_CHECKPOINTING_MODES),
    # Each keyed task meets the first barrier of every checkpoint once.
    Crash("barrier.first_received", PARALLELISM, ALL_CHECKPOINTING_MODES),
    Crash("source.before_snapshot", PARALLELISM, ALL_CHECKPOINTING_MODES),
    Crash("sink.pre_committed_before_ack", PARALLELISM, ALL_CHECKPOINTING_MODES),
    # Per checkpoint every acknowledgement but the last leaves the coordinator with some acks.
    Crash("coordinator.some_acks", TASKS - 1, ALL_CHECKPOINTING_MODES),
    # Hit only by a sink that wrote since the previous checkpoint: at the rate of the input, both
    # sinks write between any two checkpoints, and the final checkpoint pre-commits again.
    Crash("sink.mid_pre_commit", PARALLELISM, ALL_CHECKPOINTING_MODES),
    Crash("sink.mid_commit", PARALLELISM, ALL_CHECKPOINTING_MODES),
    # Hit by every task during the final checkpoint only, long after the first ones completed.
    Crash("task.final_snapshot", None, ALL_CHECKPOINTING_MODES, fixed="raise@2"),
    Crash("task.after_snapshot_before_ack", TASKS, ALL_CHECKPOINTING_MODES),
    Crash("source.after_snapshot", PARALLELISM, ALL_CHECKPOINTING_MODES),
    Crash("coordinator.all_acks_before_metadata", 1, ALL_CHECKPOINTING_MODES),
    # Checkpoint storage: a state file half written (one per task and checkpoint), the metadata torn
    # or complete under its temporary name. None of them may ever be restored from.
    Crash("storage.state_mid_write", TASKS, ALL_CHECKPOINTING_MODES),
    Crash("storage.metadata_torn", 1, ALL_CHECKPOINTING_MODES),
    Crash("storage.metadata_before_rename", 1, ALL_CHECKPOINTING_MODES),
    Crash("coordinator.metadata_before_notify", 1, ALL_CHECKPOINTING_MODES),
    Crash("sink.before_commit", PARALLELISM, ALL_CHECKPOINTING_MODES),
    Crash("sink.after_commit", PARALLELISM, ALL_CHECKPOINTING_MODES),
    Crash("operator.process", None, ALL_CHECKPOINTING_MODES),
]


CASES = [
    pytest.param(crash, mode, executor, id=f"{crash.failpoint}-{mode}-{executor}")
    for crash in CRASHES for mode in crash.modes for executor in EXECUTORS
]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    return request.param


def run_wordcount(dirs, mode: str, failpoints: fs.Failpoints, executor: str, *, batch_size: int = 2048,
                  tolerable_failures: int = 0, state: fs.StateOptions | None = None,
                  rate: float = RATE) -> fs.JobResult:
    flow = wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=rate), parallelism=PARALLELISM)
    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL,
                                         tolerable_failures=tolerable_failures, **mode_settings(mode)),
        state=state,
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(executor=executor, batch_size=batch_size),
        failpoints=failpoints,
    )
    assert result.executor == executor
    assert result.workers == (PARALLELISM if executor == "processes" else 0)
    return result


def assert_output(mode: str, dirs, expected: Counter) -> None:
    actual = committed_output(dirs.output)
    if mode in EXACT_MODES:
        assert Counter(actual) == expected, difference(actual, expected)
    else:
        missing = expected - Counter(actual)
        assert not missing, difference(actual, expected)


@pytest.mark.parametrize(("crash", "mode", "executor"), CASES)
def test_a_crash_at_a_failpoint_restarts_from_a_checkpoint_and_loses_nothing(crash, mode, executor, dirs, expected):
    check_a_crash(crash, mode, executor, dirs, expected)


ROCKSDB_CASES = [
    pytest.param(crash, mode, id=f"{crash.failpoint}-{mode}")
    for crash in CRASHES for mode in ("exactly_once", "unaligned") if mode in crash.modes
    # State files are not the only files written with the RocksDB backend: its SST files are too.
    and crash.failpoint != "storage.state_mid_write"
]


@pytest.mark.parametrize(("crash", "mode"), ROCKSDB_CASES)
def test_with_rocksdb_state_a_crash_at_a_failpoint_restarts_from_a_checkpoint_and_loses_nothing(
    crash, mode, dirs, expected, tmp_path,
):
    # Under the default executor for parallelism 2: worker processes.
    check_a_crash(crash, mode, "processes", dirs, expected,
                  state=fs.StateOptions(backend="rocksdb", directory=tmp_path / "rocksdb"))
    assert not any((tmp_path / "rocksdb").iterdir()), "a RocksDB working directory was left behind"


def check_a_crash(crash, mode, executor, dirs, expected, state: fs.StateOptions | None = None):
    action = crash.action
    if crash.failpoint == "alignment.channel_blocked" and mode == SWITCHING:
        # An alignment that times out after 1 ms may switch to unaligned before a second input
        # blocks: fewer than two hits per checkpoint. Checkpoints never overlap, so the third hit
        # still comes after the first checkpoint completed.
        action = first_hit_after(1, PARALLELISM)
    batch_size = 1 if crash.hits_per_checkpoint is None else 2048
    # The failpoint's hit is drawn to land after a checkpoint completed, in a run that lasts about
    # 0.4 s. On a loaded machine the input can end first (the failpoint never fires), or the crash can
    # come before a checkpoint completed (the restore starts from scratch): either run proves nothing
    # about recovery, so it is run once more with a four times slower input, in fresh directories,
    # under the same assertions. A bug that restores nothing fails the second run as well.
    for slower, rate in enumerate((RATE, RATE / 4)):
        if slower:
            dirs = Dirs(dirs.output.with_name("output-slower"), dirs.checkpoints.with_name("checkpoints-slower"))
        failpoints = fs.Failpoints({crash.failpoint: action})
        result = run_wordcount(dirs, mode, failpoints, executor, batch_size=batch_size, state=state, rate=rate)
        if failpoints.fired(crash.failpoint) and result.restored_from and (result.restored_from[-1] or 0) >= 1:
            break

    assert failpoints.fired(crash.failpoint) == 1, f"{crash.failpoint} was hit {failpoints.hits(crash.failpoint)} times"
    assert result.failures, "the run recorded no failure"
    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    assert_output(mode, dirs, expected)


RECOVERY_POINTS = ("recovery.checkpoint_chosen", "recovery.mid_state_load", "recovery.state_loaded")


@pytest.mark.parametrize("point", RECOVERY_POINTS)
@pytest.mark.parametrize("mode", ALL_CHECKPOINTING_MODES)
def test_a_crash_while_restoring_is_followed_by_another_restore_from_the_same_checkpoint(
    point, mode, executor, dirs, expected,
):
    failpoints = fs.Failpoints({
        "task.before_snapshot": first_hit_after(COMPLETED_BEFORE_CRASH, TASKS),
        # Hit only when restoring from a checkpoint: the first restore raises there.
        point: "raise@1",
    })

    result = run_wordcount(dirs, mode, failpoints, executor)

    assert failpoints.fired("task.before_snapshot") == 1
    assert failpoints.fired(point) == 1
    assert result.restarts == 2, result.failures
    assert "task.before_snapshot" in result.failures[0]
    assert point in result.failures[1]
    # An attempt that failed while choosing its checkpoint restored nothing and is not listed.
    restores = result.restored_from[1:]
    assert len(restores) == (2 if point == "recovery.state_loaded" else 1), restores
    assert all(r is not None and r >= COMPLETED_BEFORE_CRASH for r in restores), restores
    assert restores == sorted(restores), restores
    assert_resumed(result, INPUT_LINES)
    assert_output(mode, dirs, expected)


@pytest.mark.parametrize("mode", ["stop_the_world", "at_least_once"])
def test_only_exactly_once_blocks_channels_for_alignment(mode, executor, dirs, expected):
    failpoints = fs.Failpoints({"alignment.channel_blocked": "raise"})

    result = run_wordcount(dirs, mode, failpoints, executor)

    assert failpoints.hits("alignment.channel_blocked") == 0
    assert result.failures == [] and result.restarts == 0
    assert result.checkpoints_completed > COMPLETED_BEFORE_CRASH
    assert Counter(committed_output(dirs.output)) == expected


@pytest.mark.parametrize("mode", ALL_CHECKPOINTING_MODES)
def test_a_declined_checkpoint_within_the_tolerable_failures_does_not_restart_the_job(mode, executor, dirs, expected):
    failpoints = fs.Failpoints({"task.after_snapshot_before_ack": first_hit_after(COMPLETED_BEFORE_CRASH, TASKS)})

    result = run_wordcount(dirs, mode, failpoints, executor, tolerable_failures=1)

    assert failpoints.fired("task.after_snapshot_before_ack") == 1
    assert result.restarts == 0, result.failures
    assert result.restored_from == [None]
    assert result.checkpoints_completed > COMPLETED_BEFORE_CRASH
    assert Counter(committed_output(dirs.output)) == expected


class _RacingDiscard(LocalCheckpointStorage):
    """Checkpoint storage whose first removal of an incomplete (aborted) checkpoint fails as it does
    when another task's snapshot write lands in the directory while it is being removed: ``rmdir``
    finds it not empty. The removal of completed checkpoints is untouched."""

    __slots__ = ()
    raced: list[int] = []

    def discard(self, checkpoint_id):
        directory = self.root / f"chk-{checkpoint_id:06d}"
        incomplete = directory.is_dir() and not (directory / "_metadata").exists()
        super().discard(checkpoint_id)
        if incomplete and not type(self).raced:
            type(self).raced.append(checkpoint_id)
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(directory))


def test_a_failed_removal_of_an_aborted_checkpoint_does_not_fail_the_job(monkeypatch, executor, dirs, expected):
    monkeypatch.setattr(_RacingDiscard, "raced", [])
    monkeypatch.setattr(job_module, "open_storage", lambda location, **options: _RacingDiscard(location, **options))
    failpoints = fs.Failpoints({"task.after_snapshot_before_ack": first_hit_after(COMPLETED_BEFORE_CRASH, TASKS)})

    result = run_wordcount(dirs, "exactly_once", failpoints, executor, tolerable_failures=1)

    assert _RacingDiscard.raced == [COMPLETED_BEFORE_CRASH + 1]
    assert result.restarts == 0, result.failures
    assert Counter(committed_output(dirs.output)) == expected
