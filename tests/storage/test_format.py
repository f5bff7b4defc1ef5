"""The ``_metadata`` format (``flowstate.storage.format``) as extended for incremental checkpoints:
codecs, shared files, incremental and full sizes, savepoints. Metadata written before these fields
existed must still decode, and metadata that uses none of them is written as it always was."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowstate.checkpoint.ids import CheckpointId, TaskId
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
from flowstate.storage.format import (
    decode_metadata,
    encode_metadata,
    key_problem,
    reference_problem,
)

SHA = hashlib.sha256(b"x").hexdigest()


def layout(document: dict[str, object]) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def sealed(body: dict[str, object]) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return layout({**body, "checksum": hashlib.sha256(canonical).hexdigest()})


OLD_TASK = {
    "task": "count#0", "vertex": "count", "subtask": 0,
    "handle": {"path": "chk-000001/count#0.state", "size": 1, "sha256": SHA},
    "sync_seconds": 0.5, "async_seconds": 1.5, "alignment_seconds": 0.0, "channel_state_bytes": 0,
}
OLD_BODY = {
    "format_version": 1, "checkpoint_id": 1, "job": "j", "mode": "exactly_once", "final": False,
    "trigger_time": 10.0, "completion_time": 11.0, "max_parallelism": 8, "parallelism": {"count": 1},
    "tasks": [OLD_TASK], "extra": {},
}


def test_metadata_written_before_the_new_fields_existed_decodes_with_their_defaults():
    metadata = decode_metadata(sealed(OLD_BODY))

    task = metadata.tasks[0]
    assert task.handle == StateHandle("chk-000001/count#0.state", 1, SHA, "none")
    assert (task.shared, task.bytes_written, task.full_size, metadata.savepoint) == ((), 0, 0, False)


def test_metadata_that_uses_none_of_the_new_fields_is_written_byte_for_byte_as_before():
    assert encode_metadata(decode_metadata(sealed(OLD_BODY))) == sealed(OLD_BODY)


def test_the_new_fields_are_written_only_when_they_differ_from_their_defaults():
    task = TaskState(
        TaskId("count#0"), "count", 0, StateHandle("chk-000002/count#0.state", 9, SHA, "zstd"),
        shared=(StateHandle("shared/count-0/1.sst", 4, SHA),), bytes_written=13, full_size=13,
    )
    metadata = CheckpointMetadata(CheckpointId(2), "j", "exactly_once", False, 1.0, 2.0, 8, {}, (task,), savepoint=False)

    document = json.loads(encode_metadata(metadata))

    assert "savepoint" not in document
    assert document["tasks"][0]["handle"]["codec"] == "zstd"
    assert document["tasks"][0]["shared"] == [{"path": "shared/count-0/1.sst", "size": 4, "sha256": SHA}]
    assert (document["tasks"][0]["bytes_written"], document["tasks"][0]["full_size"]) == (13, 13)


_handles = st.builds(
    StateHandle,
    path=st.sampled_from(["chk-000003/a.state", "shared/a/1.sst", "shared/b", "chk-000003/x y é"]),
    size=st.integers(min_value=0, max_value=2**40),
    sha256=st.binary(max_size=4).map(lambda b: hashlib.sha256(b).hexdigest()),
    codec=st.sampled_from(["none", "zstd"]),
)
_tasks = st.builds(
    TaskState,
    task=st.sampled_from([TaskId("a#0"), TaskId("b#1")]),
    vertex=st.text(max_size=4),
    subtask=st.integers(min_value=0, max_value=9),
    handle=st.none() | _handles,
    sync_seconds=st.floats(min_value=0, max_value=1e6),
    async_seconds=st.floats(min_value=0, max_value=1e6),
    shared=st.lists(_handles, max_size=3).map(tuple),
    bytes_written=st.integers(min_value=0, max_value=2**50),
    full_size=st.integers(min_value=0, max_value=2**50),
)
_metadata = st.builds(
    CheckpointMetadata,
    checkpoint_id=st.just(CheckpointId(3)),
    job=st.text(max_size=5),
    mode=st.just("exactly_once"),
    final=st.booleans(),
    trigger_time=st.floats(min_value=0, max_value=4e9),
    completion_time=st.floats(min_value=0, max_value=4e9),
    max_parallelism=st.integers(min_value=1, max_value=128),
    parallelism=st.just({}),
    tasks=st.lists(_tasks, max_size=3).map(tuple),
    savepoint=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(_metadata)
def test_any_metadata_with_the_new_fields_decodes_to_exactly_what_was_encoded(metadata):
    assert decode_metadata(encode_metadata(metadata)) == metadata


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b["tasks"][0]["handle"].update(codec="lz4"), "task 0 handle codec 'lz4' is unknown"),
        (lambda b: b["tasks"][0].update(bytes_written=-1), "task 0 bytes_written is negative"),
        (lambda b: b["tasks"][0].update(full_size=1.5), "task 0 full_size is float, not int"),
        (lambda b: b["tasks"][0].update(shared=[None]), "task 0 shared file 0 is null"),
        (lambda b: b["tasks"][0].update(shared={"path": "x"}), "task 0 shared is dict, not list"),
        (lambda b: b["tasks"][0].update(shared=[{"path": "/etc/passwd", "size": 1, "sha256": SHA}]), "/etc/passwd"),
        (lambda b: b.update(savepoint=1), "savepoint is int, not bool"),
        (lambda b: b["tasks"][0].update(extra_field=1), "task 0 has unknown fields extra_field"),
    ],
    ids=["codec", "negative size", "float size", "null shared", "shared object", "absolute path", "savepoint", "unknown"],
)
def test_new_fields_with_a_correct_checksum_but_an_invalid_value_are_refused(change, message):
    body = json.loads(json.dumps(OLD_BODY))
    change(body)

    with pytest.raises(CorruptCheckpointError, match=message):
        decode_metadata(sealed(body))


def test_a_handle_with_an_unknown_codec_cannot_be_written():
    task = TaskState(TaskId("a#0"), "a", 0, StateHandle("chk-000001/a", 1, SHA, "brotli"))

    with pytest.raises(ValueError, match="checkpoint 1 is not valid: task 0 handle codec 'brotli' is unknown"):
        encode_metadata(CheckpointMetadata(CheckpointId(1), "j", "m", False, 0.0, 1.0, 8, {}, (task,)))


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("count-0/000042.sst", None),
        ("manifest", None),
        ("a/b/c", "more than one '/'"),
        ("a/", "non-empty"),
        ("..", "must not start with '.'"),
        ("a:b", "A-Z a-z 0-9 . _ -"),
    ],
)
def test_shared_file_keys(key, problem):
    found = key_problem(key)
    assert (found is None) if problem is None else (problem in found)


def test_a_shared_path_with_a_bad_key_is_a_reference_problem():
    task = TaskState(TaskId("a#0"), "a", 0, None, shared=(StateHandle("shared/a/b/c", 1, SHA),))
    metadata = CheckpointMetadata(CheckpointId(1), "j", "m", False, 0.0, 1.0, 8, {}, (task,))

    assert "more than one '/'" in reference_problem(metadata)


# --- the job's record, once the free-form ``extra`` (rule 6) -----------------------------------

RECORDED_EXTRA = {
    "operators": {"count": {"name": "Count", "kind": "keyed_process", "vertex": "count"},
                  "lines": {"name": "lines", "kind": "source", "vertex": "lines"}},
    "inputs": {"count": ["lines"], "lines": []},
    "source_records": 93,
    "origin": {"checkpoint_id": 4, "completion_time": 12.5, "path": "/tmp/savepoint-000004-3fa2c1"},
    "savepoint": True,
}


def test_what_earlier_versions_kept_in_extra_decodes_into_typed_fields_and_is_written_as_before():
    metadata = decode_metadata(sealed({**OLD_BODY, "extra": RECORDED_EXTRA}))

    assert metadata.graph == JobRecord(
        {"count": OperatorRecord("Count", NodeKind.KEYED_PROCESS, "count"),
         "lines": OperatorRecord("lines", NodeKind.SOURCE, "lines")},
        {"count": ("lines",), "lines": ()},
    )
    assert metadata.source_records == 93 and metadata.savepoint is True
    assert metadata.origin == SavepointOrigin(CheckpointId(4), 12.5, "/tmp/savepoint-000004-3fa2c1")
    # The savepoint flag moves to its own field; everything else is written where it was.
    extra = {k: v for k, v in RECORDED_EXTRA.items() if k != "savepoint"}
    assert encode_metadata(metadata) == sealed({**OLD_BODY, "extra": extra, "savepoint": True})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"offsets": {"p0": 1}}, "extra has unknown fields offsets"),
        ({"operators": {"x": {"name": "x", "kind": "teleport", "vertex": "v"}}}, "unknown kind 'teleport'"),
        ({"source_records": -1}, "extra.source_records is negative"),
        ({"inputs": {"count": "lines"}}, r"extra.inputs\['count'\] is str, not list"),
    ],
)
def test_an_extra_that_is_not_the_jobs_record_is_refused_by_name(extra, message):
    with pytest.raises(CorruptCheckpointError, match=message):
        decode_metadata(sealed({**OLD_BODY, "extra": extra}))
