"""Local checkpoint storage (``flowstate.storage.local``): the storage contract, the on-disk format,
and a corruption sweep showing that no damaged checkpoint is ever restored from.

Checkpoints here belong to a small job: two ``count`` subtasks with 16 KiB of state each and a
stateless ``source``. State bytes are pseudo-random, so a zeroed block really changes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowstate.checkpoint.ids import CheckpointId, TaskId, task_id
from flowstate.checkpoint.restore import (
    CandidateStatus,
    Chosen,
    CommittedOutput,
    Invalid,
    NoneValid,
    RefusalReason,
    Refuse,
    RestoreFacts,
    Valid,
    choose,
    plan_restore,
)
from flowstate.kinds import NodeKind
from flowstate.storage.base import (
    CheckpointMetadata,
    CorruptCheckpointError,
    JobRecord,
    OperatorRecord,
    SavepointOrigin,
    StateHandle,
    TaskState,
)
from flowstate.storage.local import (
    NO_METADATA,
    LocalCheckpointStorage,
    decode_metadata,
    encode_metadata,
)

STATE_SIZE = 16 * 1024


def state_bytes(checkpoint_id: int, subtask: int) -> bytes:
    return random.Random(checkpoint_id * 1000 + subtask).randbytes(STATE_SIZE)


@pytest.fixture
def storage(tmp_path: Path) -> LocalCheckpointStorage:
    return LocalCheckpointStorage(tmp_path / "checkpoints")


def write_checkpoint(
    storage: LocalCheckpointStorage, checkpoint_id: int, *, complete: bool = True
) -> CheckpointMetadata:
    """Write the state files of ``checkpoint_id`` and, if ``complete``, then its metadata."""
    cid = CheckpointId(checkpoint_id)
    tasks = []
    for subtask in range(2):
        task = task_id("count", subtask)
        handle = storage.write_state(cid, f"{task}.state", state_bytes(checkpoint_id, subtask))
        tasks.append(TaskState(task, "count", subtask, handle, 0.001 * subtask, 0.015))
    tasks.append(TaskState(task_id("source", 0), "source", 0, None))
    metadata = CheckpointMetadata(
        checkpoint_id=cid,
        job="word-count",
        mode="exactly_once",
        final=False,
        trigger_time=1_700_000_000.0 + checkpoint_id,
        completion_time=1_700_000_000.125 + checkpoint_id,
        max_parallelism=128,
        parallelism={"count": 2, "source": 1},
        tasks=tuple(tasks),
        source_records=checkpoint_id * 100,
    )
    if complete:
        storage.write_metadata(metadata)
    return metadata


def checkpoint_dir(storage: LocalCheckpointStorage, checkpoint_id: int) -> Path:
    return storage.root / f"chk-{checkpoint_id:06d}"


def state_file(storage: LocalCheckpointStorage, checkpoint_id: int, subtask: int = 0) -> Path:
    return checkpoint_dir(storage, checkpoint_id) / f"count#{subtask}.state"


def metadata_file(storage: LocalCheckpointStorage, checkpoint_id: int) -> Path:
    return checkpoint_dir(storage, checkpoint_id) / "_metadata"


def newest(storage: LocalCheckpointStorage) -> Valid[CheckpointMetadata] | Invalid:
    return next(storage.restore_candidates())


def assert_refused(verdict: object, checkpoint_id: int, *in_reason: str) -> None:
    assert isinstance(verdict, Invalid), verdict
    assert verdict.checkpoint_id == checkpoint_id
    for text in in_reason:
        assert text in verdict.reason, verdict.reason


def file_layout(document: dict[str, object]) -> bytes:
    """The ``_metadata`` encoding, as the format defines it (see the module docstring)."""
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def checksum_of(body: dict[str, object]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- round trip and format ---------------------------------------------------------------------


def test_state_is_read_back_byte_for_byte_and_its_handle_describes_the_file(storage):
    data = state_bytes(3, 0)

    handle = storage.write_state(CheckpointId(3), "map#0.state", data)

    sha256 = hashlib.sha256(data).hexdigest()
    assert handle == StateHandle("chk-000003/map#0.state", len(data), sha256)
    assert (storage.root / "chk-000003" / "map#0.state").read_bytes() == data
    assert storage.read_state(handle) == data


def test_metadata_read_back_from_disk_equals_the_metadata_written(storage):
    written = write_checkpoint(storage, 1)

    verdict = newest(storage)

    assert verdict == Valid(CheckpointId(1), written)
    assert [storage.read_state(t.handle) for t in written.tasks if t.handle] == [
        state_bytes(1, 0),
        state_bytes(1, 1),
    ]


def test_the_metadata_file_is_sorted_utf8_json_whose_checksum_covers_every_other_field(storage):
    write_checkpoint(storage, 1)
    raw = metadata_file(storage, 1).read_bytes()

    keys_in_file_order: list[list[str]] = []
    document = json.loads(
        raw.decode("utf-8"),
        object_pairs_hook=lambda pairs: keys_in_file_order.append([k for k, _ in pairs])
        or dict(pairs),
    )

    assert all(keys == sorted(keys) for keys in keys_in_file_order)
    assert document["format_version"] == 1
    checksum = document.pop("checksum")
    assert checksum == checksum_of(document)
    assert document["tasks"][0]["handle"] == {
        "path": "chk-000001/count#0.state",
        "size": STATE_SIZE,
        "sha256": hashlib.sha256(state_bytes(1, 0)).hexdigest(),
    }
    assert document["tasks"][2]["handle"] is None
    assert raw == file_layout({**document, "checksum": checksum})


_names = st.text("abcxyz#0123456789.-_ é", min_size=1, max_size=12).filter(
    lambda name: name.strip(".") != "" and not name.startswith(".")
)
_handles = st.none() | st.builds(
    StateHandle,
    path=_names.map(lambda name: f"chk-000007/{name}"),
    size=st.integers(min_value=0, max_value=2**40),
    sha256=st.binary(max_size=4).map(lambda b: hashlib.sha256(b).hexdigest()),
)
_times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_metadata = st.builds(
    CheckpointMetadata,
    checkpoint_id=st.integers(min_value=1, max_value=10**9).map(CheckpointId),
    job=st.text(max_size=10),
    mode=st.sampled_from(["exactly_once", "at_least_once"]),
    final=st.booleans(),
    trigger_time=_times,
    completion_time=_times,
    max_parallelism=st.integers(min_value=1, max_value=2**15),
    parallelism=st.dictionaries(st.text(max_size=6), st.integers(min_value=1, max_value=64)),
    tasks=st.lists(
        st.builds(
            TaskState,
            task=_names.map(TaskId),
            vertex=st.text(max_size=6),
            subtask=st.integers(min_value=0, max_value=63),
            handle=_handles,
            sync_seconds=_times,
            async_seconds=_times,
        ),
        max_size=4,
    ).map(tuple),
    graph=st.none() | st.builds(
        JobRecord,
        operators=st.dictionaries(_names, st.builds(OperatorRecord, st.text(max_size=6), st.sampled_from(NodeKind),
                                                    st.text(max_size=6)), max_size=3),
        inputs=st.dictionaries(st.text(max_size=6), st.lists(st.text(max_size=6), max_size=2).map(tuple), max_size=3),
    ),
    savepoint=st.booleans(),
    source_records=st.none() | st.integers(min_value=0, max_value=10**12),
    origin=st.none() | st.builds(SavepointOrigin, st.integers(min_value=1, max_value=10**9).map(CheckpointId), _times,
                                 st.none() | st.text(max_size=10)),
)


@settings(max_examples=150, deadline=None)
@given(_metadata)
def test_any_metadata_of_json_values_decodes_to_exactly_what_was_encoded(metadata):
    assert decode_metadata(encode_metadata(metadata)) == metadata


@pytest.mark.parametrize(
    "change",
    [
        {"graph": JobRecord({}, {"count": ["source"]})},  # type: ignore[dict-item]
        {"parallelism": {7: 2}},
        {"trigger_time": float("nan")},
        {"completion_time": float("inf")},
    ],
    ids=["a list", "an int key", "NaN", "infinity"],
)
def test_metadata_that_would_not_read_back_equal_is_refused_before_anything_is_written(
    storage, change
):
    metadata = write_checkpoint(storage, 1, complete=False)
    bad = CheckpointMetadata(**{**_fields_of(metadata), **change})

    with pytest.raises(ValueError, match="checkpoint 1"):
        storage.write_metadata(bad)

    assert sorted(p.name for p in checkpoint_dir(storage, 1).iterdir()) == [
        "count#0.state",
        "count#1.state",
    ]


def _fields_of(metadata: CheckpointMetadata) -> dict[str, object]:
    return {name: getattr(metadata, name) for name in CheckpointMetadata.__dataclass_fields__}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), r"chk-000002/count#1\.state is missing"),
        (lambda p: p.write_bytes(b"short"), r"chk-000002/count#1\.state has 5 bytes"),
    ],
    ids=["missing", "another size"],
)
def test_metadata_referring_to_a_damaged_state_file_is_refused_and_does_not_complete(
    storage, damage, message
):
    write_checkpoint(storage, 1)
    metadata = write_checkpoint(storage, 2, complete=False)
    damage(state_file(storage, 2, 1))

    with pytest.raises(CorruptCheckpointError, match=message):
        storage.write_metadata(metadata)

    assert not metadata_file(storage, 2).exists()
    assert choose(storage.restore_candidates()).checkpoint_id == 1


def test_directories_are_zero_padded_to_six_digits_and_longer_ids_keep_every_digit(storage):
    small = storage.write_state(CheckpointId(42), "a#0.state", b"x")
    large = storage.write_state(CheckpointId(12_345_678), "a#0.state", b"x")

    assert small.path == "chk-000042/a#0.state"
    assert large.path == "chk-12345678/a#0.state"
    assert sorted(p.name for p in storage.root.iterdir()) == ["chk-000042", "chk-12345678"]


def test_the_root_directory_and_its_missing_parents_are_created(tmp_path):
    root = tmp_path / "a" / "b" / "checkpoints"

    storage = LocalCheckpointStorage(root)

    assert root.is_dir()
    assert storage.highest_id() == 0
    assert list(storage.restore_candidates()) == []
    assert storage.list_checkpoints() == []


# --- durability order --------------------------------------------------------------------------


def test_each_file_is_fsynced_renamed_and_then_its_directory_fsynced(storage, monkeypatch):
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(info.st_mode) else "file", str(info.st_ino)))
        real_fsync(fd)

    def replace(source: os.PathLike[str], target: os.PathLike[str]) -> None:
        events.append(("replace", Path(source).name, Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    directory = checkpoint_dir(storage, 1)

    def inode(path: Path) -> str:
        return str(path.stat().st_ino)

    def expected_write(name: str) -> list[tuple[str, ...]]:
        return [
            ("fsync", "file", inode(directory / name)),  # rename keeps the inode fsynced before it
            ("replace", events[-2][1], name),
            ("fsync", "dir", inode(directory)),
        ]

    storage.write_state(CheckpointId(1), "count#0.state", b"first")
    assert events[0] == ("fsync", "dir", inode(storage.root))  # the new directory, before any file
    assert events[1:] == expected_write("count#0.state")
    assert re.fullmatch(r"\.count#0\.state\.tmp-[0-9a-f]+", events[2][1])

    events.clear()
    handle = storage.write_state(CheckpointId(1), "count#1.state", b"second")
    assert events == expected_write("count#1.state")  # the directory exists: no root fsync

    events.clear()
    task = TaskState(task_id("count", 1), "count", 1, handle)
    storage.write_metadata(
        CheckpointMetadata(CheckpointId(1), "j", "exactly_once", False, 1.0, 2.0, 8, {}, (task,))
    )
    assert events == expected_write("_metadata")
    assert re.fullmatch(r"\._metadata\.tmp-[0-9a-f]+", events[1][1])


def test_a_checkpoint_directory_without_metadata_is_incomplete_and_never_yielded_as_valid(storage):
    write_checkpoint(storage, 1, complete=False)

    assert list(storage.restore_candidates()) == [Invalid(CheckpointId(1), NO_METADATA, CandidateStatus.INCOMPLETE)]
    assert choose(storage.restore_candidates()) == NoneValid(
        (Invalid(CheckpointId(1), NO_METADATA, CandidateStatus.INCOMPLETE),)
    )


def test_complete_metadata_left_under_its_temporary_name_does_not_complete_the_checkpoint(storage):
    write_checkpoint(storage, 1)
    metadata = write_checkpoint(storage, 2, complete=False)
    (checkpoint_dir(storage, 2) / "._metadata.tmp-0123abcd").write_bytes(encode_metadata(metadata))

    decision = choose(storage.restore_candidates())

    assert decision == Chosen(
        CheckpointId(1), metadata_on_disk(storage, 1), (Invalid(CheckpointId(2), NO_METADATA, CandidateStatus.INCOMPLETE),)
    )


def metadata_on_disk(storage: LocalCheckpointStorage, checkpoint_id: int) -> CheckpointMetadata:
    return decode_metadata(metadata_file(storage, checkpoint_id).read_bytes())


def test_a_crash_while_renaming_the_metadata_leaves_an_incomplete_checkpoint_and_no_debris(
    storage, monkeypatch
):
    write_checkpoint(storage, 1)
    metadata = write_checkpoint(storage, 2, complete=False)
    real_replace = os.replace

    def replace(source: os.PathLike[str], target: os.PathLike[str]) -> None:
        if Path(target).name == "_metadata":
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)

    with pytest.raises(OSError, match="Input/output error"):
        storage.write_metadata(metadata)

    assert sorted(p.name for p in checkpoint_dir(storage, 2).iterdir()) == [
        "count#0.state",
        "count#1.state",
    ]
    decision = choose(storage.restore_candidates())
    assert isinstance(decision, Chosen) and decision.checkpoint_id == 1
    assert decision.skipped == (Invalid(CheckpointId(2), NO_METADATA, CandidateStatus.INCOMPLETE),)


# --- choosing a restore point ------------------------------------------------------------------


def test_restore_picks_the_newest_valid_checkpoint_and_reports_the_newer_ones_it_skipped(storage):
    write_checkpoint(storage, 1)
    second = write_checkpoint(storage, 2)
    write_checkpoint(storage, 3)
    write_checkpoint(storage, 4, complete=False)
    state_file(storage, 3, 1).write_bytes(b"\0" * STATE_SIZE)

    decision = choose(storage.restore_candidates())

    assert isinstance(decision, Chosen)
    assert (decision.checkpoint_id, decision.metadata) == (2, second)
    assert [s.checkpoint_id for s in decision.skipped] == [4, 3]
    assert decision.skipped[0].reason == NO_METADATA
    assert_refused(decision.skipped[1], 3, "chk-000003/count#1.state", "SHA-256")


def test_candidates_come_newest_first_each_validated_only_when_it_is_reached(storage):
    for checkpoint_id in (1, 2, 3):
        write_checkpoint(storage, checkpoint_id)
    candidates = storage.restore_candidates()

    first = next(candidates)
    state_file(storage, 2).unlink()  # damaged after the newest was validated, before the next one
    rest = list(candidates)

    assert isinstance(first, Valid) and first.checkpoint_id == 3
    assert_refused(rest[0], 2, "chk-000002/count#0.state is missing")
    assert isinstance(rest[1], Valid) and rest[1].checkpoint_id == 1
    assert len(rest) == 2


def test_with_no_valid_checkpoint_the_job_starts_fresh_and_says_why_for_each(storage):
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2, complete=False)
    metadata_file(storage, 1).write_bytes(b"")

    decision = choose(storage.restore_candidates())

    assert isinstance(decision, NoneValid)
    assert decision.skipped[0] == Invalid(CheckpointId(2), NO_METADATA, CandidateStatus.INCOMPLETE)
    assert_refused(decision.skipped[1], 1, "chk-000001/_metadata", "empty")


# --- corruption sweep --------------------------------------------------------------------------


@pytest.fixture
def two_checkpoints(storage: LocalCheckpointStorage) -> LocalCheckpointStorage:
    """Checkpoint 1, valid, to fall back to; checkpoint 2, the newest, to damage."""
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2)
    return storage


SINK_OUTPUT = (CommittedOutput("out", "/output", ("part-0-0.jsonl",)),)


def assert_falls_back_to_the_first(storage: LocalCheckpointStorage, *in_reason: str) -> None:
    """Checkpoint 2 is refused with the reason and counts as completed (its metadata was written):
    the newest valid one is checkpoint 1, and the restore decision refuses to go back to it past
    checkpoint 2 while a sink holds committed output."""
    decision = choose(storage.restore_candidates())
    assert isinstance(decision, Chosen), decision
    assert decision.checkpoint_id == 1
    assert len(decision.skipped) == 1
    assert_refused(decision.skipped[0], 2, *in_reason)
    assert decision.skipped[0].status is CandidateStatus.CORRUPT
    planned = plan_restore(storage.restore_candidates(), RestoreFacts("chk", committed=SINK_OUTPUT))
    assert isinstance(planned, Refuse) and planned.reason is RefusalReason.FALLBACK_PAST_COMMITTED, planned
    assert "checkpoint 2: " in planned.message


def test_metadata_truncated_at_every_byte_offset_is_refused_and_restore_falls_back(two_checkpoints):
    storage = two_checkpoints
    path = metadata_file(storage, 2)
    whole = path.read_bytes()

    for length in range(len(whole)):
        path.write_bytes(whole[:length])
        assert_falls_back_to_the_first(storage, "chk-000002/_metadata")

    path.write_bytes(whole)
    assert isinstance(newest(storage), Valid)  # the damage, not the test, made it invalid


def test_every_single_bit_flip_in_the_metadata_is_refused_by_its_decoder(two_checkpoints):
    whole = metadata_file(two_checkpoints, 2).read_bytes()
    undetected = []

    for offset in range(len(whole)):
        for bit in range(8):
            flipped = bytearray(whole)
            flipped[offset] ^= 1 << bit
            try:
                decode_metadata(bytes(flipped))
            except CorruptCheckpointError:
                continue
            undetected.append((offset, bit))

    assert undetected == []
    assert decode_metadata(whole).checkpoint_id == 2


def test_a_bit_flipped_in_any_byte_of_the_metadata_file_makes_restore_fall_back(two_checkpoints):
    storage = two_checkpoints
    path = metadata_file(storage, 2)
    whole = path.read_bytes()

    for offset in range(len(whole)):
        flipped = bytearray(whole)
        flipped[offset] ^= 1 << (offset % 8)
        path.write_bytes(flipped)
        assert_refused(newest(storage), 2, "chk-000002/_metadata")

    path.write_bytes(whole)
    assert isinstance(newest(storage), Valid)


def test_a_flipped_bit_in_the_checksum_letters_case_is_refused_though_json_would_accept_it(
    two_checkpoints,
):
    path = metadata_file(two_checkpoints, 2)
    text = path.read_text("utf-8")
    checksum = json.loads(text)["checksum"]
    letter = next(i for i, c in enumerate(checksum) if c in "abcdef")
    upper = checksum[:letter] + checksum[letter].upper() + checksum[letter + 1 :]

    path.write_text(text.replace(checksum, upper), "utf-8")

    assert_falls_back_to_the_first(two_checkpoints, "chk-000002/_metadata", "checksum mismatch")


def test_single_bit_flips_at_many_offsets_of_a_state_file_are_refused(two_checkpoints):
    storage = two_checkpoints
    path = state_file(storage, 2, 1)
    whole = path.read_bytes()
    offsets = [*range(0, len(whole), 257), len(whole) - 1]

    for offset in offsets:
        flipped = bytearray(whole)
        flipped[offset] ^= 1 << (offset % 8)
        path.write_bytes(flipped)
        assert_refused(newest(storage), 2, "chk-000002/count#1.state", "SHA-256")

    path.write_bytes(whole)
    assert isinstance(newest(storage), Valid)


def test_a_zeroed_4_kib_block_in_a_state_file_is_refused(two_checkpoints):
    path = state_file(two_checkpoints, 2, 0)
    data = bytearray(path.read_bytes())
    data[4096:8192] = bytes(4096)
    path.write_bytes(data)

    assert_falls_back_to_the_first(two_checkpoints, "chk-000002/count#0.state", "SHA-256")


def test_a_deleted_state_file_is_refused(two_checkpoints):
    state_file(two_checkpoints, 2, 1).unlink()

    assert_falls_back_to_the_first(two_checkpoints, "chk-000002/count#1.state is missing")


def test_a_truncated_state_file_is_refused_for_its_size(two_checkpoints):
    path = state_file(two_checkpoints, 2, 0)
    path.write_bytes(path.read_bytes()[:-1])

    assert_falls_back_to_the_first(
        two_checkpoints, f"chk-000002/count#0.state has {STATE_SIZE - 1} bytes"
    )


def test_metadata_naming_another_checkpoint_than_its_directory_is_refused(two_checkpoints):
    storage = two_checkpoints
    write_checkpoint(storage, 3, complete=False)
    metadata_file(storage, 3).write_bytes(metadata_file(storage, 2).read_bytes())

    assert_refused(newest(storage), 3, "chk-000003/_metadata names checkpoint 2, not 3")


def test_metadata_whose_content_changed_under_its_checksum_is_refused(two_checkpoints):
    path = metadata_file(two_checkpoints, 2)
    document = json.loads(path.read_bytes())
    document["extra"]["source_records"] = 0  # replay from the start: silently wrong

    path.write_bytes(file_layout(document))

    assert_falls_back_to_the_first(two_checkpoints, "chk-000002/_metadata", "checksum mismatch")


def test_metadata_reformatted_without_changing_its_content_is_refused(two_checkpoints):
    path = metadata_file(two_checkpoints, 2)
    path.write_text(json.dumps(json.loads(path.read_bytes()), indent=4, sort_keys=True), "utf-8")

    assert_falls_back_to_the_first(two_checkpoints, "chk-000002/_metadata", "exact encoding")


def test_metadata_of_an_unknown_format_version_is_refused_even_with_a_correct_checksum(
    two_checkpoints,
):
    path = metadata_file(two_checkpoints, 2)
    document = json.loads(path.read_bytes())
    del document["checksum"]
    document["format_version"] = 2

    path.write_bytes(file_layout({**document, "checksum": checksum_of(document)}))

    assert_falls_back_to_the_first(two_checkpoints, "chk-000002/_metadata", "format version 2")


def test_metadata_pointing_outside_the_storage_root_is_refused_even_with_a_correct_checksum(
    two_checkpoints,
):
    path = metadata_file(two_checkpoints, 2)
    document = json.loads(path.read_bytes())
    del document["checksum"]
    document["tasks"][0]["handle"]["path"] = "../../etc/passwd"

    path.write_bytes(file_layout({**document, "checksum": checksum_of(document)}))

    assert_falls_back_to_the_first(two_checkpoints, "chk-000002/_metadata", "../../etc/passwd")


# --- read_state --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b"\xff" + p.read_bytes()[1:]), r"count#0\.state does not match"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), r"count#0\.state has 100 bytes"),
        (lambda p: p.unlink(), r"count#0\.state is missing"),
    ],
    ids=["altered", "truncated", "deleted"],
)
def test_read_state_refuses_a_file_damaged_after_the_checkpoint_was_validated(
    storage, damage, message
):
    write_checkpoint(storage, 1)
    verdict = newest(storage)
    assert isinstance(verdict, Valid)
    handle = verdict.metadata.tasks[0].handle
    assert storage.read_state(handle) == state_bytes(1, 0)

    damage(state_file(storage, 1, 0))

    with pytest.raises(CorruptCheckpointError, match=message):
        storage.read_state(handle)


@pytest.mark.parametrize("path", ["../outside.state", "/etc/passwd", "chk-000001/../x", ""])
def test_read_state_refuses_a_handle_whose_path_leaves_the_storage_root(storage, path):
    with pytest.raises(ValueError, match="relative path|non-empty"):
        storage.read_state(StateHandle(path, 0, hashlib.sha256(b"").hexdigest()))


# --- discard, sweep, highest_id ----------------------------------------------------------------


def test_discard_removes_the_whole_checkpoint_and_is_idempotent(storage):
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2)

    storage.discard(CheckpointId(2))
    storage.discard(CheckpointId(2))
    storage.discard(CheckpointId(99))

    assert [p.name for p in storage.root.iterdir()] == ["chk-000001"]
    assert [c.checkpoint_id for c in storage.restore_candidates()] == [1]


def test_discard_deletes_the_metadata_first_so_a_crash_midway_leaves_an_incomplete_checkpoint(
    storage, monkeypatch
):
    write_checkpoint(storage, 1)
    unlinked: list[str] = []
    real_unlink = os.unlink

    def unlink(path: os.PathLike[str] | str) -> None:
        unlinked.append(Path(path).name)
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)

    storage.discard(CheckpointId(1))

    assert unlinked[0] == "_metadata"
    assert sorted(unlinked) == ["_metadata", "count#0.state", "count#1.state"]


def test_discard_succeeds_when_a_late_snapshot_write_lands_in_the_directory_being_removed(
    storage, monkeypatch
):
    write_checkpoint(storage, 1, complete=False)
    directory = checkpoint_dir(storage, 1)
    real_rmdir = os.rmdir
    landed: list[str] = []

    def rmdir(path: os.PathLike[str] | str) -> None:
        if Path(path) == directory and not landed:
            (directory / "count#2.state").write_bytes(b"late")  # after the walk, before rmdir
            landed.append("count#2.state")
        real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", rmdir)

    storage.discard(CheckpointId(1))

    assert landed == ["count#2.state"]
    assert list(storage.root.iterdir()) == []


def test_discard_also_removes_a_directory_named_with_another_width(storage):
    (storage.root / "chk-7").mkdir()
    (storage.root / "chk-7" / "count#0.state").write_bytes(b"x")

    storage.discard(CheckpointId(7))

    assert list(storage.root.iterdir()) == []


def test_sweep_removes_incomplete_and_torn_checkpoints_and_stray_temporary_files_only(storage):
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2, complete=False)
    write_checkpoint(storage, 3)
    metadata_file(storage, 3).write_bytes(metadata_file(storage, 3).read_bytes()[:50])
    write_checkpoint(storage, 4, complete=False)  # being written right now
    write_checkpoint(storage, 5)
    leftover = checkpoint_dir(storage, 1) / ".count#0.state.tmp-5eed"
    leftover.write_bytes(b"half a write")
    in_flight = checkpoint_dir(storage, 4) / ".count#2.state.tmp-0ff1ce"
    in_flight.write_bytes(b"being written")

    removed = storage.sweep(keep={CheckpointId(4)})

    assert removed == [2, 3]
    assert sorted(p.name for p in storage.root.iterdir()) == [
        "chk-000001",
        "chk-000004",
        "chk-000005",
    ]
    assert not leftover.exists()
    assert in_flight.exists()
    assert [c.checkpoint_id for c in storage.restore_candidates() if isinstance(c, Valid)] == [5, 1]


def test_sweep_never_removes_a_valid_checkpoint_or_one_in_keep(storage):
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2, complete=False)

    assert storage.sweep(keep={CheckpointId(2)}) == []
    assert storage.sweep(keep=set()) == [2]
    assert storage.sweep(keep=set()) == []
    assert [p.name for p in storage.root.iterdir()] == ["chk-000001"]


def test_sweep_keeps_a_checkpoint_whose_metadata_is_intact_but_whose_state_is_damaged(storage):
    write_checkpoint(storage, 1)
    state_file(storage, 1).write_bytes(b"\0" * STATE_SIZE)

    assert storage.sweep(keep=set()) == []
    assert_refused(newest(storage), 1, "SHA-256")  # left as evidence, still never restored from


def test_highest_id_counts_every_checkpoint_directory_complete_or_not_and_of_any_width(storage):
    write_checkpoint(storage, 2)
    write_checkpoint(storage, 5, complete=False)
    assert storage.highest_id() == 5

    (storage.root / "chk-12").mkdir()
    (storage.root / "chk-99").write_bytes(b"a file, not a checkpoint directory")
    (storage.root / "chk-0").mkdir()
    (storage.root / "chk-x").mkdir()
    (storage.root / "notes").mkdir()

    assert storage.highest_id() == 12
    assert [c.checkpoint_id for c in storage.restore_candidates()] == [12, 5, 2]


# --- names and ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "../escape", ".hidden", "..", "_metadata", "_any", "a\\b", "nul\0", "x" * 201],
)
def test_state_file_names_that_could_escape_or_collide_with_reserved_files_are_rejected(
    storage, name
):
    with pytest.raises(ValueError, match="state file name"):
        storage.write_state(CheckpointId(1), name, b"data")

    assert list(storage.root.iterdir()) == []


@pytest.mark.parametrize("checkpoint_id", [0, -1, True])
def test_checkpoint_ids_start_at_one(storage, checkpoint_id):
    with pytest.raises(ValueError, match="checkpoint ids"):
        storage.write_state(checkpoint_id, "a#0.state", b"data")

    assert list(storage.root.iterdir()) == []


# --- listing -----------------------------------------------------------------------------------


def test_list_checkpoints_gives_every_directory_oldest_first_with_status_reason_and_size(storage):
    first = write_checkpoint(storage, 1)
    write_checkpoint(storage, 2, complete=False)
    third = write_checkpoint(storage, 3)
    state_file(storage, 3, 1).unlink()
    write_checkpoint(storage, 4)
    metadata_file(storage, 4).write_bytes(b"{")

    infos = storage.list_checkpoints()

    assert [(i.checkpoint_id, i.status) for i in infos] == [
        (1, "completed"),
        (2, "incomplete"),
        (3, "corrupt"),
        (4, "corrupt"),
    ]
    assert [i.reason for i in infos[:2]] == [None, NO_METADATA]
    assert "chk-000003/count#1.state is missing" in infos[2].reason
    assert "chk-000004/_metadata: not valid JSON" in infos[3].reason
    assert [i.metadata for i in infos] == [first, None, third, None]
    metadata_size = metadata_file(storage, 1).stat().st_size
    assert [i.bytes_on_disk for i in infos] == [
        2 * STATE_SIZE + metadata_size,
        2 * STATE_SIZE,
        STATE_SIZE + metadata_file(storage, 3).stat().st_size,
        2 * STATE_SIZE + 1,
    ]
