"""The storage contract (``flowstate.storage.base``), run over every adapter: a local directory and
an S3 bucket (moto behind a proxy that can inject faults).

Checkpoints here belong to a small incremental job: two ``count`` subtasks, each with a state file
and shared files (``shared/count-<i>/<n>.sst``) that later checkpoints reference again.
"""

from __future__ import annotations

import hashlib
import random
import re
import time

import pytest

from flowstate.checkpoint.ids import CheckpointId, TaskId, task_id
from flowstate.checkpoint.restore import CandidateStatus, Chosen, Invalid, NoneValid, choose
from flowstate.failpoints import Failpoints, InjectedFailure
from flowstate.storage.base import (
    CheckpointMetadata,
    CorruptCheckpointError,
    StateHandle,
    TaskState,
)
from flowstate.storage.format import NO_METADATA

from .conftest import Harness

GRACE = 3600.0


def payload(*seed: object, size: int = 4096) -> bytes:
    return random.Random(repr(seed)).randbytes(size)


def write_checkpoint(
    storage,
    checkpoint_id: int,
    shared: dict[int, list[str]] | None = None,
    *,
    complete: bool = True,
    savepoint: bool = False,
    codec: str = "none",
) -> CheckpointMetadata:
    """State files of both subtasks, the shared files listed per subtask (uploaded, or found
    already stored), then, if ``complete``, the metadata."""
    cid = CheckpointId(checkpoint_id)
    tasks = []
    for subtask in range(2):
        handle = storage.write_state(cid, f"count#{subtask}.state", payload(checkpoint_id, subtask), codec=codec)
        files = tuple(
            storage.write_shared(f"count-{subtask}/{name}", payload("shared", subtask, name))
            for name in (shared or {}).get(subtask, [])
        )
        full = handle.size + sum(f.size for f in files)
        tasks.append(TaskState(
            task_id("count", subtask), "count", subtask, handle, 0.001, 0.02,
            shared=files, bytes_written=full, full_size=full,
        ))
    metadata = CheckpointMetadata(
        checkpoint_id=cid,
        job="incremental",
        mode="exactly_once",
        final=False,
        trigger_time=1_700_000_000.0 + checkpoint_id,
        completion_time=1_700_000_000.5 + checkpoint_id,
        max_parallelism=128,
        parallelism={"count": 2},
        tasks=tuple(tasks),
        source_records=checkpoint_id * 10,
        savepoint=savepoint,
    )
    if complete:
        storage.write_metadata(metadata)
    return metadata


def shared_paths(harness: Harness) -> list[str]:
    return [p for p in harness.paths() if p.startswith("shared/")]


def restored_id(storage) -> int | None:
    decision = choose(storage.restore_candidates())
    return decision.checkpoint_id if isinstance(decision, Chosen) else None


# --- state files and codecs --------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_state_is_read_back_as_given_and_the_handle_describes_the_stored_bytes(harness, codec):
    storage = harness.open()
    data = b"word count state " * 2000

    handle = storage.write_state(CheckpointId(3), "count#0.state", data, codec=codec)

    stored = harness.read("chk-000003/count#0.state")
    assert handle == StateHandle("chk-000003/count#0.state", len(stored), hashlib.sha256(stored).hexdigest(), codec)
    assert (stored == data) is (codec == "none")
    assert codec == "none" or len(stored) < len(data) // 10
    assert storage.read_state(handle) == data


def test_an_unknown_codec_is_refused_by_name_and_nothing_is_written(harness):
    storage = harness.open()

    with pytest.raises(ValueError, match="unknown compression codec 'lz4': use one of none, zstd"):
        storage.write_state(CheckpointId(1), "count#0.state", b"data", codec="lz4")

    assert harness.paths() == []


def test_a_compressed_state_file_altered_after_its_checkpoint_is_refused_by_read_state(harness):
    storage = harness.open()
    handle = storage.write_state(CheckpointId(1), "count#0.state", b"x" * 10_000, codec="zstd")
    stored = bytearray(harness.read(handle.path))
    stored[-1] ^= 0xFF
    harness.write(handle.path, bytes(stored))

    with pytest.raises(CorruptCheckpointError, match="chk-000001/count#0.state does not match its SHA-256"):
        storage.read_state(handle)


# --- metadata ----------------------------------------------------------------------------------


def test_metadata_with_shared_files_and_sizes_is_restored_exactly_as_written(harness):
    storage = harness.open()
    written = write_checkpoint(storage, 1, {0: ["1.sst", "2.sst"], 1: ["1.sst"]}, codec="zstd")

    decision = choose(storage.restore_candidates())

    assert decision == Chosen(CheckpointId(1), written, ())
    assert [storage.read_state(t.handle) for t in written.tasks] == [payload(1, 0), payload(1, 1)]
    assert written.tasks[0].shared[1].path == "shared/count-0/2.sst"
    assert written.full_size == written.bytes_written == written.state_size + 3 * 4096


def test_metadata_naming_a_missing_shared_file_is_refused_and_does_not_complete(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["1.sst"]})
    metadata = write_checkpoint(storage, 2, {0: ["1.sst", "2.sst"]}, complete=False)
    harness.delete("shared/count-0/2.sst")

    with pytest.raises(CorruptCheckpointError, match=r"cannot complete checkpoint 2: shared/count-0/2\.sst is missing"):
        storage.write_metadata(metadata)

    assert not harness.exists("chk-000002/_metadata")
    assert restored_id(storage) == 1


def test_a_task_state_file_outside_the_checkpoints_own_directory_is_refused(harness):
    storage = harness.open()
    first = write_checkpoint(storage, 1)
    second = write_checkpoint(storage, 2, complete=False)
    borrowed = (second.tasks[0], TaskState(TaskId("count#1"), "count", 1, first.tasks[1].handle))

    with pytest.raises(ValueError, match="chk-000001/count#1.state is not in the checkpoint's own directory chk-000002/"):
        storage.write_metadata(CheckpointMetadata(**{**fields_of(second), "tasks": borrowed}))

    assert not harness.exists("chk-000002/_metadata")


def fields_of(metadata: CheckpointMetadata) -> dict[str, object]:
    return {name: getattr(metadata, name) for name in CheckpointMetadata.__dataclass_fields__}


def test_a_savepoint_that_references_a_shared_file_is_refused(harness):
    storage = harness.open()

    with pytest.raises(ValueError, match="savepoint 1 references the shared file shared/count-0/1.sst"):
        write_checkpoint(storage, 1, {0: ["1.sst"]}, savepoint=True)

    assert not harness.exists("chk-000001/_metadata")


def test_a_self_contained_savepoint_keeps_its_files_in_its_own_directory_and_restores(harness):
    storage = harness.open()
    cid = CheckpointId(4)
    handle = storage.write_state(cid, "count#0.state", b"state")
    sst = storage.write_state(cid, "count#0-000001.sst", b"table")
    tasks = (TaskState(TaskId("count#0"), "count", 0, handle, shared=(sst,), full_size=10),)
    savepoint = CheckpointMetadata(cid, "job", "exactly_once", False, 1.0, 2.0, 8, {"count": 1}, tasks, savepoint=True)

    storage.write_metadata(savepoint)

    decision = choose(storage.restore_candidates())
    assert isinstance(decision, Chosen) and decision.metadata == savepoint
    assert decision.metadata.savepoint is True
    assert storage.read_state(decision.metadata.tasks[0].shared[0]) == b"table"


# --- shared files ------------------------------------------------------------------------------


def test_a_shared_file_is_stored_under_its_key_from_bytes_or_from_a_local_file(harness, tmp_path):
    storage = harness.open()
    source = tmp_path / "000007.sst"
    source.write_bytes(payload("file", size=100_000))

    from_bytes = storage.write_shared("count-0/000006.sst", b"six")
    from_file = storage.write_shared("count-0/000007.sst", source)

    assert from_bytes == StateHandle("shared/count-0/000006.sst", 3, hashlib.sha256(b"six").hexdigest())
    assert from_file.size == 100_000
    assert from_file.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert harness.read("shared/count-0/000007.sst") == source.read_bytes()
    assert storage.local_path(from_file).read_bytes() == source.read_bytes()


def test_writing_a_referenced_shared_file_again_returns_its_handle_without_uploading_it(harness, tmp_path):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["1.sst"]})
    assert harness.uploads("shared/count-0/1.sst") == 1
    source = tmp_path / "1.sst"
    source.write_bytes(payload("shared", 0, "1.sst"))

    again = storage.write_shared("count-0/1.sst", payload("shared", 0, "1.sst"))
    from_file = storage.write_shared("count-0/1.sst", source)

    assert again == from_file == choose(storage.restore_candidates()).metadata.tasks[0].shared[0]
    assert harness.uploads("shared/count-0/1.sst") == 1


def test_other_bytes_under_a_referenced_key_are_refused(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["1.sst"]})

    with pytest.raises(FileExistsError, match="shared/count-0/1.sst already holds other bytes"):
        storage.write_shared("count-0/1.sst", b"different")

    assert harness.read("shared/count-0/1.sst") == payload("shared", 0, "1.sst")
    assert restored_id(storage) == 1


def test_other_bytes_under_a_key_no_checkpoint_references_replace_the_debris(harness):
    storage = harness.open()
    harness.write("shared/count-0/1.sst", b"half an upload of a crashed run")

    handle = storage.write_shared("count-0/1.sst", b"the real table")

    assert handle.sha256 == hashlib.sha256(b"the real table").hexdigest()
    assert harness.read("shared/count-0/1.sst") == b"the real table"


def test_many_shared_files_are_written_together_and_their_handles_come_back_in_order(harness, tmp_path):
    storage = harness.open()
    source = tmp_path / "from-disk.sst"
    source.write_bytes(b"on disk")
    items = [(f"count-0/{n}.sst", payload("many", n)) for n in range(6)] + [("count-1/from-disk.sst", source)]

    handles = storage.write_shared_many(items)

    assert [h.path for h in handles] == [f"shared/{key}" for key, _ in items]
    assert [storage.read_state(h) for h in handles] == [payload("many", n) for n in range(6)] + [b"on disk"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [(["a/1", "a/2", "a/1"], "'a/1' is given twice"), (["a/1", "a/../2"], "shared file key 'a/../2'")],
)
def test_a_batch_with_a_bad_or_repeated_key_writes_nothing(harness, keys, message):
    storage = harness.open()

    with pytest.raises(ValueError, match=message):
        storage.write_shared_many([(key, b"x") for key in keys])

    assert harness.paths() == []


def test_a_batch_in_which_one_write_fails_raises_it_after_writing_the_others(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["1.sst"]})

    with pytest.raises(FileExistsError, match="shared/count-0/1.sst already holds other bytes"):
        storage.write_shared_many([("count-0/0.sst", b"zero"), ("count-0/1.sst", b"other"), ("count-0/2.sst", b"two")])

    assert shared_paths(harness) == ["shared/count-0/0.sst", "shared/count-0/1.sst", "shared/count-0/2.sst"]


@pytest.mark.parametrize(
    "key",
    ["", "a/b/c", "../x", "a/../b", ".hidden", "a/.b", "a b", "a//b", "/a", "a/", "é", "a#0", "x" * 201, "a\\b"],
)
def test_shared_keys_that_could_escape_collide_or_nest_are_rejected(harness, key):
    storage = harness.open()

    with pytest.raises(ValueError, match="shared file key"):
        storage.write_shared(key, b"data")

    assert harness.paths() == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda h, p: h.delete(p), r"shared/count-1/2\.sst is missing"),
        (lambda h, p: h.write(p, h.read(p)[:-1]), r"shared/count-1/2\.sst has 4095 bytes"),
        (lambda h, p: h.write(p, b"\0" + h.read(p)[1:]), r"shared/count-1/2\.sst does not match its SHA-256"),
    ],
    ids=["missing", "truncated", "altered"],
)
def test_a_checkpoint_whose_shared_file_is_damaged_is_never_restored_from(harness, damage, message):
    storage = harness.open()
    write_checkpoint(storage, 1, {1: ["1.sst"]})
    write_checkpoint(storage, 2, {1: ["1.sst", "2.sst"]})

    damage(harness, "shared/count-1/2.sst")

    decision = choose(storage.restore_candidates())
    assert isinstance(decision, Chosen) and decision.checkpoint_id == 1
    assert decision.skipped[0].checkpoint_id == 2
    assert re.search(message, decision.skipped[0].reason), decision.skipped[0].reason


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda h, p: h.delete(p), "is missing"),
        (lambda h, p: h.write(p, h.read(p)[:100]), "has 100 bytes"),
        (lambda h, p: h.write(p, b"\1" + h.read(p)[1:]), "does not match its SHA-256"),
    ],
    ids=["missing", "truncated", "altered"],
)
def test_local_path_verifies_the_file_before_handing_it_out(harness, damage, message):
    storage = harness.open()
    handle = storage.write_shared("count-0/9.sst", payload("nine"))
    assert storage.read_state(handle) == payload("nine")

    damage(harness, handle.path)

    with pytest.raises(CorruptCheckpointError, match=message):
        storage.local_path(handle)


# --- reference counting: discard ----------------------------------------------------------------


def test_a_shared_file_is_deleted_only_when_the_last_checkpoint_referencing_it_is_discarded(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["a.sst", "b.sst"]})
    write_checkpoint(storage, 2, {0: ["b.sst", "c.sst"]})
    write_checkpoint(storage, 3, {0: ["c.sst", "d.sst"]})

    storage.discard(CheckpointId(1))
    assert shared_paths(harness) == ["shared/count-0/b.sst", "shared/count-0/c.sst", "shared/count-0/d.sst"]

    storage.discard(CheckpointId(2))
    assert shared_paths(harness) == ["shared/count-0/c.sst", "shared/count-0/d.sst"]
    assert restored_id(storage) == 3

    storage.discard(CheckpointId(3))
    assert harness.paths() == []


def test_discarding_a_newer_checkpoint_keeps_the_files_an_older_one_still_references(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {1: ["a.sst"]})
    write_checkpoint(storage, 2, {1: ["a.sst", "b.sst"]})

    storage.discard(CheckpointId(2))

    assert shared_paths(harness) == ["shared/count-1/a.sst"]
    assert restored_id(storage) == 1


def test_reference_counts_are_rebuilt_from_the_metadata_when_the_storage_is_opened_again(harness):
    first = harness.open()
    write_checkpoint(first, 1, {0: ["a.sst", "b.sst"]})
    write_checkpoint(first, 2, {0: ["b.sst"]})
    write_checkpoint(first, 3, {0: ["b.sst"]}, complete=False)  # crashed before its metadata

    reopened = harness.open()
    reopened.discard(CheckpointId(1))
    reopened.discard(CheckpointId(3))

    assert shared_paths(harness) == ["shared/count-0/b.sst"]
    assert restored_id(reopened) == 2


def test_discard_is_idempotent_and_a_checkpoint_discarded_twice_releases_its_files_once(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["a.sst"]})
    write_checkpoint(storage, 2, {0: ["a.sst"]})

    storage.discard(CheckpointId(1))
    storage.discard(CheckpointId(1))
    storage.discard(CheckpointId(99))

    assert shared_paths(harness) == ["shared/count-0/a.sst"]
    assert restored_id(storage) == 2


def test_sweep_of_a_checkpoint_with_torn_metadata_releases_its_shared_files(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["a.sst"]})
    write_checkpoint(storage, 2, {0: ["a.sst", "b.sst"]})
    write_checkpoint(storage, 3, {0: ["c.sst"]}, complete=False)
    harness.write("chk-000002/_metadata", harness.read("chk-000002/_metadata")[:40])

    assert storage.sweep(keep=set()) == [2, 3]

    # b.sst was counted for checkpoint 2 when this storage wrote it; c.sst never was: an orphan.
    assert shared_paths(harness) == ["shared/count-0/a.sst", "shared/count-0/c.sst"]
    assert restored_id(storage) == 1


def test_a_random_history_of_checkpoints_and_discards_never_loses_a_referenced_file(harness):
    rng = random.Random(7)
    storage = harness.open()
    live: dict[int, set[str]] = {}
    rounds = 12 if harness.kind == "local" else 6
    for checkpoint_id in range(1, rounds + 1):
        names = sorted(rng.sample([f"{n}.sst" for n in range(6)], rng.randint(0, 3)))
        write_checkpoint(storage, checkpoint_id, {0: names})
        live[checkpoint_id] = {f"shared/count-0/{n}" for n in names}
        for old in sorted(live)[:-1]:
            if rng.random() < 0.5:
                storage.discard(CheckpointId(old))
                del live[old]
        if rng.random() < 0.3:
            storage = harness.open()  # a restart: counts rebuilt from storage

        referenced = set().union(*live.values())
        assert set(shared_paths(harness)) == referenced
        assert restored_id(storage) == max(live)


# --- orphans -----------------------------------------------------------------------------------


def test_sweep_orphans_deletes_old_unreferenced_shared_files_and_keeps_referenced_and_young_ones(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["kept.sst"]})
    write_checkpoint(storage, 2, {0: ["aborted.sst"]}, complete=False)
    harness.write("shared/count-1/crashed-upload.sst", b"debris")

    assert storage.sweep_orphans(GRACE, now=time.time()) == []  # everything is younger than the grace

    removed = storage.sweep_orphans(GRACE, now=time.time() + GRACE + 60)

    assert removed == ["shared/count-0/aborted.sst", "shared/count-1/crashed-upload.sst"]
    assert shared_paths(harness) == ["shared/count-0/kept.sst"]
    assert restored_id(storage) == 1


def test_sweep_orphans_keeps_the_files_of_a_checkpoint_this_storage_is_completing(harness):
    storage = harness.open()
    metadata = write_checkpoint(storage, 1, {0: ["new.sst"]}, complete=False)
    storage.write_metadata(metadata)
    harness.delete("chk-000001/_metadata")  # as if the metadata were still on its way

    assert storage.sweep_orphans(0.0, now=time.time() + 60) == []
    assert shared_paths(harness) == ["shared/count-0/new.sst"]


def test_a_negative_grace_period_is_refused(harness):
    with pytest.raises(ValueError, match="grace period cannot be negative"):
        harness.open().sweep_orphans(-1, now=time.time())


# --- incomplete and invalid checkpoints ---------------------------------------------------------


def test_restore_skips_incomplete_and_corrupt_checkpoints_newest_first(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["a.sst"]})
    write_checkpoint(storage, 2, {0: ["a.sst"]})
    write_checkpoint(storage, 3, {0: ["a.sst"]}, complete=False)
    harness.write("chk-000002/_metadata", harness.read("chk-000002/_metadata").replace(b'"source_records": 20', b'"source_records": 0'))

    decision = choose(storage.restore_candidates())

    assert isinstance(decision, Chosen) and decision.checkpoint_id == 1
    assert decision.skipped[0] == Invalid(CheckpointId(3), NO_METADATA, CandidateStatus.INCOMPLETE)
    assert "chk-000002/_metadata: checksum mismatch" in decision.skipped[1].reason


def test_sweep_removes_checkpoints_without_valid_metadata_except_those_kept(harness):
    storage = harness.open()
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2, complete=False)
    write_checkpoint(storage, 3, complete=False)

    assert storage.sweep(keep={CheckpointId(3)}) == [2]
    assert storage.highest_id() == 3
    assert [c.checkpoint_id for c in storage.restore_candidates()] == [3, 1]


def test_list_checkpoints_reports_status_reason_metadata_and_the_bytes_of_each_directory(harness):
    storage = harness.open()
    first = write_checkpoint(storage, 1, {0: ["a.sst"]})
    write_checkpoint(storage, 2, complete=False)

    infos = storage.list_checkpoints()

    assert [(i.checkpoint_id, i.status, i.reason) for i in infos] == [(1, "completed", None), (2, "incomplete", NO_METADATA)]
    assert infos[0].metadata == first
    own = [p for p in harness.paths() if p.startswith("chk-000001/")]
    assert infos[0].bytes_on_disk == sum(len(harness.read(p)) for p in own)
    assert infos[1].bytes_on_disk == 2 * 4096


def test_the_newest_checkpoint_without_any_valid_one_starts_fresh(harness):
    storage = harness.open()
    write_checkpoint(storage, 1, complete=False)

    assert choose(storage.restore_candidates()) == NoneValid((Invalid(CheckpointId(1), NO_METADATA, CandidateStatus.INCOMPLETE),))


# --- failpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["storage.metadata_torn", "storage.metadata_before_rename"])
def test_a_failure_while_writing_the_metadata_leaves_a_checkpoint_that_is_never_restored_from(harness, point):
    failpoints = Failpoints({point: "raise@2"})
    storage = harness.open(failpoints=failpoints)
    write_checkpoint(storage, 1, {0: ["a.sst"]})

    with pytest.raises(InjectedFailure, match=point):
        write_checkpoint(storage, 2, {0: ["a.sst", "b.sst"]})

    assert failpoints.fired(point) == 1
    assert not harness.exists("chk-000002/_metadata")
    reopened = harness.open()
    decision = choose(reopened.restore_candidates())
    assert isinstance(decision, Chosen) and decision.checkpoint_id == 1
    assert decision.skipped == (Invalid(CheckpointId(2), NO_METADATA, CandidateStatus.INCOMPLETE),)
    assert reopened.sweep(keep=set()) == [2]
    assert reopened.sweep_orphans(GRACE, now=time.time() + 2 * GRACE) == ["shared/count-0/b.sst"]
    assert restored_id(reopened) == 1


def test_a_failure_in_the_middle_of_a_state_write_leaves_a_checkpoint_that_is_never_restored_from(harness):
    failpoints = Failpoints({"storage.state_mid_write": "raise@4"})  # count#1 of checkpoint 2
    storage = harness.open(failpoints=failpoints)
    write_checkpoint(storage, 1)

    with pytest.raises(InjectedFailure, match="storage.state_mid_write"):
        write_checkpoint(storage, 2)

    assert failpoints.fired("storage.state_mid_write") == 1
    assert harness.paths() == sorted(
        ["chk-000001/_metadata", "chk-000001/count#0.state", "chk-000001/count#1.state", "chk-000002/count#0.state"]
    )
    assert restored_id(storage) == 1


def test_failpoints_that_are_not_set_are_never_hit(harness):
    failpoints = Failpoints({"operator.process": "raise"})
    storage = harness.open(failpoints=failpoints)

    write_checkpoint(storage, 1, {0: ["a.sst"]})

    assert failpoints.hits("storage.metadata_torn") == 0
    assert restored_id(storage) == 1
