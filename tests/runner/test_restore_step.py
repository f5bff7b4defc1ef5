"""Step 1 of an attempt carried out (``flowstate.runner.restore``), on checkpoint storage in memory:
no threads, no files. The decision itself is ``plan_restore``'s (``tests/protocol/test_restore.py``);
these tests pin what the runner does with it: what it deletes, what it keeps, which id comes next,
and that a refusal touches nothing."""

from __future__ import annotations

import pytest

from flowstate.checkpoint.ids import CheckpointId, task_id
from flowstate.checkpoint.restore import CommittedOutput
from flowstate.clock import ManualClock
from flowstate.errors import ConfigError
from flowstate.runner.restore import choose_restore_point
from flowstate.storage.base import CheckpointMetadata, TaskState
from flowstate.storage.memory import MemoryBlobStore, MemoryCheckpointStorage

NOW = 1_700_000_100.0


def checkpoint(storage: MemoryCheckpointStorage, checkpoint_id: int, *, complete: bool = True,
               shared: str | None = None) -> CheckpointMetadata:
    cid = CheckpointId(checkpoint_id)
    handle = storage.write_state(cid, "count#0.state", f"state of {checkpoint_id}".encode())
    files = (storage.write_shared(shared, b"shared bytes"),) if shared else ()
    metadata = CheckpointMetadata(
        checkpoint_id=cid, job="count", mode="exactly_once", final=False,
        trigger_time=NOW - 10 + checkpoint_id, completion_time=NOW - 9.5 + checkpoint_id,
        max_parallelism=128, parallelism={"count": 1},
        tasks=(TaskState(task_id("count", 0), "count", 0, handle, shared=files),),
        source_records=checkpoint_id * 100,
    )
    if complete:
        storage.write_metadata(metadata)
    return metadata


def choose(storage, *, committed=(), fresh=False, first_attempt=True, next_id=1):
    return choose_restore_point(storage, where="mem://checkpoints", committed=committed, fresh=fresh,
                                first_attempt=first_attempt, savepoint=None, next_id=next_id, now_wall=NOW,
                                orphan_grace=0.0)


def directories(storage: MemoryCheckpointStorage) -> list[int]:
    return sorted(int(i) for i in storage.checkpoint_ids())


@pytest.fixture
def storage() -> MemoryCheckpointStorage:
    # Blobs are written 100 s before the restore's ``now``.
    return MemoryCheckpointStorage(MemoryBlobStore(clock=ManualClock(wall_offset=NOW - 100)))


def test_the_newest_completed_checkpoint_is_restored_and_newer_incomplete_ones_are_swept(storage):
    checkpoint(storage, 1)
    checkpoint(storage, 2)
    checkpoint(storage, 3, complete=False)  # crashed before its metadata

    choice = choose(storage)

    assert choice.metadata is not None and choice.metadata.checkpoint_id == 2
    assert directories(storage) == [1, 2]
    assert choice.next_id == 4  # ids continue after the highest ever used, also an incomplete one


def test_a_corrupt_newest_checkpoint_is_skipped_and_deleted_when_no_sink_holds_committed_output(storage):
    checkpoint(storage, 1)
    broken = checkpoint(storage, 2)
    storage.store.delete([p for p in storage.store.paths() if p.endswith("count#0.state") and "02" in p])
    assert broken.checkpoint_id in storage.checkpoint_ids()

    choice = choose(storage)

    assert choice.metadata is not None and choice.metadata.checkpoint_id == 1
    assert directories(storage) == [1]
    assert choice.next_id == 3


def test_falling_back_past_a_corrupt_checkpoint_beside_committed_output_is_refused_and_deletes_nothing(storage):
    checkpoint(storage, 1)
    checkpoint(storage, 2)
    storage.store.delete([p for p in storage.store.paths() if p.endswith("count#0.state") and "02" in p])
    before = storage.store.paths()
    committed = (CommittedOutput("out", "/data/out", ("part-0.jsonl",)),)

    with pytest.raises(ConfigError, match="out"):
        choose(storage, committed=committed)

    assert storage.store.paths() == before


def test_fresh_on_the_first_attempt_deletes_every_checkpoint_and_starts_from_scratch(storage):
    checkpoint(storage, 1)
    checkpoint(storage, 2)

    choice = choose(storage, fresh=True)

    assert choice.metadata is None
    assert directories(storage) == []
    assert choice.next_id == 3


def test_fresh_applies_to_the_first_attempt_only_a_restart_resumes_the_run(storage):
    checkpoint(storage, 1)

    choice = choose(storage, fresh=True, first_attempt=False)

    assert choice.metadata is not None and choice.metadata.checkpoint_id == 1
    assert directories(storage) == [1]


def test_shared_files_no_valid_checkpoint_references_are_swept_before_the_restore(storage):
    checkpoint(storage, 1, shared="count-0/kept.sst")
    checkpoint(storage, 2, complete=False, shared="count-0/orphan.sst")

    choose(storage)

    shared = sorted(p for p in storage.store.paths() if p.startswith("shared/"))
    assert shared == ["shared/count-0/kept.sst"]


def test_with_nothing_to_restore_the_job_starts_fresh_and_the_next_id_is_kept(storage):
    choice = choose(storage, next_id=7)

    assert choice.metadata is None and choice.next_id == 7
