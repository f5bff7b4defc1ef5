"""Incremental checkpoints of RocksDB state, end to end: shared files are uploaded once and
referenced by later checkpoints, retention deletes a shared file only when no retained checkpoint
references it, and a crash in the middle of an upload leaves a checkpoint that is never restored
from and files that the next restore sweeps.

Each run is checked afterwards with the storage checker (``flowstate checkpoints verify``): every
file a checkpoint references exists with its size and checksum, no orphan is left (the grace period
is 0: the run is over), and the bytes stay within what the retained checkpoints reference."""

from __future__ import annotations

from collections import Counter

import pytest

import flowstate as fs
from flowstate.clock import SystemClock
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.verify import verify

from .jobs import (
    FAST_RESTART,
    INPUT_LINES,
    INTERVAL,
    RATE,
    assert_restored_from_a_checkpoint,
    committed_output,
    difference,
    generator_source,
    wordcount,
)

RETAINED = 2


def run(dirs, tmp_path, failpoints=None, *, retained: int = RETAINED, incremental: bool = True) -> fs.JobResult:
    flow = wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE), parallelism=2)
    return fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, retained=retained),
        state=fs.StateOptions(backend="rocksdb", directory=tmp_path / "rocksdb", incremental=incremental),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        failpoints=failpoints,
    )


def assert_storage_verifies(dirs, retained: int = RETAINED) -> None:
    report = verify(LocalCheckpointStorage(dirs.checkpoints), location=str(dirs.checkpoints), grace_seconds=0.0,
                    now=SystemClock().wall() + 1.0, retained=retained)
    assert report.ok, report


def test_later_checkpoints_reference_the_shared_files_of_earlier_ones_and_upload_only_new_ones(dirs, tmp_path, expected):
    # More checkpoints are kept here than in the other tests: a compaction between two checkpoints
    # may rewrite every file (then those two share nothing), but not between every two of them.
    kept = 2 * RETAINED
    result = run(dirs, tmp_path, retained=kept)

    assert Counter(committed_output(dirs.output)) == expected
    storage = LocalCheckpointStorage(dirs.checkpoints)
    retained = [info.metadata for info in storage.list_checkpoints() if info.metadata is not None]
    assert result.checkpoints_completed > RETAINED and len(retained) == min(kept, result.checkpoints_completed)
    sharing = []
    for older, newer in zip(retained, retained[1:]):
        shared_by_both = ({h.path for t in older.tasks for h in t.shared}
                          & {h.path for t in newer.tasks for h in t.shared})
        assert all(p.startswith("shared/") for p in shared_by_both)
        if shared_by_both:
            written = sum(t.bytes_written for t in newer.tasks)
            full = sum(t.full_size for t in newer.tasks)
            assert written < full, (written, full)
            sharing.append(newer.checkpoint_id)
    assert sharing, "every retained checkpoint uploaded every file again"
    assert_storage_verifies(dirs, retained=kept)


def test_full_checkpoints_reference_no_shared_file(dirs, tmp_path, expected):
    run(dirs, tmp_path, incremental=False)

    assert Counter(committed_output(dirs.output)) == expected
    storage = LocalCheckpointStorage(dirs.checkpoints)
    for info in storage.list_checkpoints():
        assert info.metadata is not None
        for task in info.metadata.tasks:
            assert all(h.path.startswith(f"chk-{info.checkpoint_id:06d}/") for h in task.shared), task.shared
            assert task.bytes_written == task.full_size
    shared = dirs.checkpoints / "shared"
    assert not shared.exists() or not any(shared.rglob("*")), "a full checkpoint uploaded shared files"
    assert_storage_verifies(dirs)


@pytest.mark.parametrize("point", ["storage.shared_mid_upload", "task.after_snapshot_before_ack"])
def test_a_crash_mid_upload_is_never_restored_from_and_its_files_are_swept(point, dirs, tmp_path, expected):
    # Hit for every new shared file (mid upload) or every task acknowledgement: the 9th hit comes
    # after at least two checkpoints completed (each uploads at least one file per keyed task).
    failpoints = fs.Failpoints({point: "raise@9"})

    result = run(dirs, tmp_path, failpoints)

    assert failpoints.fired(point) == 1
    assert result.failures and "failed to snapshot or write its state" in result.failures[0]
    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    actual = committed_output(dirs.output)
    assert Counter(actual) == expected, difference(actual, expected)
    assert_storage_verifies(dirs)
