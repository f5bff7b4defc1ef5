"""Incremental checkpoints of RocksDB and heap state, end to end: shared files (RocksDB's SST
files, the heap's base and delta files) are uploaded once and referenced by later checkpoints,
retention deletes a shared file only when no retained checkpoint references it, a crash in the
middle of an upload leaves a checkpoint that is never restored from and files that the next restore
sweeps, and a heap restore reads the base and the deltas of its checkpoint's chain.

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
    batch_reference,
    committed_output,
    difference,
    generator_source,
    wordcount,
)

RETAINED = 2


@pytest.fixture(params=["rocksdb", "heap"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def run(dirs, tmp_path, failpoints=None, backend: str = "rocksdb", source=None, *, retained: int = RETAINED,
        incremental: bool = True) -> fs.JobResult:
    """The word count with incremental checkpoints on ``backend`` (the heap's are opt-in:
    ``heap_incremental``); ``incremental=False``: full snapshots on either."""
    source = source if source is not None else generator_source(INPUT_LINES, rate=RATE)
    flow = wordcount(dirs.output, source=source, parallelism=2)
    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, retained=retained),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "state", incremental=incremental,
                              heap_incremental=incremental and backend == "heap"),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        failpoints=failpoints,
    )
    state = tmp_path / "state"
    assert not state.exists() or not any(state.iterdir()), "a working directory of the state backend was left behind"
    return result


def assert_storage_verifies(dirs, retained: int = RETAINED) -> None:
    report = verify(LocalCheckpointStorage(dirs.checkpoints), location=str(dirs.checkpoints), grace_seconds=0.0,
                    now=SystemClock().wall() + 1.0, retained=retained)
    assert report.ok, report


def test_later_checkpoints_reference_the_shared_files_of_earlier_ones_and_upload_only_new_ones(
    backend, dirs, tmp_path, expected,
):
    # More checkpoints are kept here than in the other tests: a compaction between two checkpoints
    # may rewrite every file (then those two share nothing), but not between every two of them; a
    # heap checkpoint that writes a new base shares nothing with the one before it either, and the
    # heap writes a base whenever a tenth of its keys changed: the word count changes every key
    # between two checkpoints, so the heap runs on an input that settles.
    kept = 2 * RETAINED
    if backend == "heap":
        result = run(dirs, tmp_path, backend=backend, retained=kept, source=settling_source())
        expected = batch_reference(settling_line(i) for i in range(INPUT_LINES))
    else:
        result = run(dirs, tmp_path, backend=backend, retained=kept)

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


def test_full_checkpoints_reference_no_shared_file(backend, dirs, tmp_path, expected):
    run(dirs, tmp_path, backend=backend, incremental=False)

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
def test_a_crash_mid_upload_is_never_restored_from_and_its_files_are_swept(point, backend, dirs, tmp_path, expected):
    # Hit for every new shared file (mid upload) or every task acknowledgement: the 9th hit comes
    # after at least two checkpoints completed (each uploads at least one file per keyed task).
    failpoints = fs.Failpoints({point: "raise@9"})

    result = run(dirs, tmp_path, failpoints, backend=backend)

    assert failpoints.fired(point) == 1
    assert result.failures and "failed to snapshot or write its state" in result.failures[0]
    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    actual = committed_output(dirs.output)
    assert Counter(actual) == expected, difference(actual, expected)
    assert_storage_verifies(dirs)


SETTLING = 120
"""Lines of many new words before the input settles on one word."""


def settling_line(i: int) -> str:
    """Two new words a line, then one word again and again: once the state has settled, few keys
    change between two checkpoints, so a heap checkpoint writes a delta."""
    return f"w{i} x{i}" if i < SETTLING else "alpha"


def settling_source() -> fs.GeneratorSource:
    return fs.GeneratorSource(settling_line, INPUT_LINES, splits=4, rate=RATE / 2, name="lines")


def test_a_heap_restore_reads_the_base_and_the_deltas_of_its_checkpoints_chain(dirs, tmp_path):
    # The first checkpoints, while new words pour in, write bases; once the input has settled on
    # "alpha" (after about two checkpoints), each writes a delta. The crash comes at the first hit of
    # checkpoint 7 (each of the two source tasks hits once per checkpoint), so the restore is from
    # checkpoint 6: a base and its deltas.
    flow = wordcount(dirs.output, source=settling_source(), parallelism=2)
    failpoints = fs.Failpoints({"source.after_snapshot": "raise@13"})

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, retained=1000),
        state=fs.StateOptions(heap_incremental=True, directory=tmp_path / "state"),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        failpoints=failpoints,
    )

    assert failpoints.fired("source.after_snapshot") == 1
    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    assert result.restored_from[-1] == 6
    actual = committed_output(dirs.output)
    expected = batch_reference(settling_line(i) for i in range(INPUT_LINES))
    assert Counter(actual) == expected, difference(actual, expected)
    storage = LocalCheckpointStorage(dirs.checkpoints)
    chains = [[h.path.rsplit("-", 1)[1] for h in t.shared] for t in storage.load_metadata(6).tasks if t.shared]
    assert len(chains) == 2 and all(c[0] == "base" and c[1:] and set(c[1:]) == {"delta"} for c in chains), chains
    earlier = {h.path for t in storage.load_metadata(5).tasks for h in t.shared}
    restored = {h.path for t in storage.load_metadata(6).tasks for h in t.shared}
    assert len(restored - earlier) == 2, "checkpoint 6 uploaded more than one delta per keyed task"
    assert_storage_verifies(dirs, retained=1000)
