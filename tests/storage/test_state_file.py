"""The task state file (``flowstate.storage.state_file``): typed, versioned, and still reading the
files the previous layout wrote (``fixtures/wordcount-v1``, a checkpoint written by that code)."""

from __future__ import annotations

import pickle
import shutil
from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import Chosen, choose
from flowstate.kinds import NodeKind
from flowstate.state.memory import heap_snapshot_entries
from flowstate.storage.base import CorruptCheckpointError, JobRecord, OperatorRecord, StateHandle
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.state_file import KeyedSnapshot, TaskStateFile, decode_task_state, encode_task_state

from engine.jobs import (
    FAST_RESTART,
    INPUT_LINES,
    INTERVAL,
    RATE,
    Count,
    assert_restored_from_a_checkpoint,
    batch_reference,
    committed_output,
    generator_source,
    lines,
)

FIXTURE = Path(__file__).parent / "fixtures" / "wordcount-v1"
FIXTURE_LINES = 200
HANDLE = StateHandle("shared/count-0/000007.sst", 4096, "ab" * 32, "none")


def test_every_field_reads_back_as_written_and_a_uid_named_like_a_field_stays_an_operator():
    state = TaskStateFile(
        operators={
            "__source__": {"not": "positions"},
            "__channels__": [1, 2],
            "__files__": KeyedSnapshot({"format": "rocksdb", "key_groups": [0, 64]}, {"000007.sst": HANDLE}),
        },
        source={"gen-0": 12},
        channels={0: [pickle.dumps(["a", "b"])]},
        watermark=1_700_000_000.0,
    )

    read = decode_task_state(encode_task_state(state))

    assert read == state
    assert read.source == {"gen-0": 12}
    assert read.operators["__source__"] == {"not": "positions"}


def test_an_empty_state_is_empty_and_any_field_makes_it_not():
    assert TaskStateFile().is_empty()
    assert not TaskStateFile(source={"gen-0": 0}).is_empty()
    assert not TaskStateFile(watermark=0.0).is_empty()
    assert not TaskStateFile(operators={"counts": None}).is_empty()


def test_the_previous_layout_is_read_as_the_same_typed_state():
    old = {
        "count": {"format": "heap-v2", "states": {}, "__files__": {"1.sst": {
            "path": HANDLE.path, "size": HANDLE.size, "sha256": HANDLE.sha256}}},
        "counts": None,
        "__source__": {"gen-1": 93},
        "__channels__": {1: [b"batch"]},
        "__watermark__": 5.0,
    }

    read = decode_task_state(pickle.dumps(old))

    assert read == TaskStateFile(
        {"count": KeyedSnapshot({"format": "heap-v2", "states": {}}, {"1.sst": HANDLE}), "counts": None},
        {"gen-1": 93}, {1: [b"batch"]}, 5.0,
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (("flowstate-task-state", 3, {}), "format version 3; this version reads 1 and 2"),
        (("flowstate-task-state", 2, {"operators": {}}), "body has fields"),
        (("something else", 2, {}), "not a flowstate task state file"),
        (("flowstate-task-state", 2, {"operators": {"x": ("odd",)}, "source": None, "channels": {},
                                      "watermark": None}), "operator 'x' is neither keyed nor a value"),
    ],
)
def test_a_file_of_another_version_or_shape_is_refused_by_name(document, message):
    with pytest.raises(CorruptCheckpointError, match=message):
        decode_task_state(pickle.dumps(document))


def test_bytes_that_do_not_unpickle_are_a_corrupt_file():
    with pytest.raises(CorruptCheckpointError, match="does not unpickle"):
        decode_task_state(b"\x80\x05 torn")


# --- the checkpoint written by the previous code ------------------------------------------------


def fixture_states() -> dict[str, TaskStateFile]:
    decision = choose(LocalCheckpointStorage(FIXTURE).restore_candidates())
    assert isinstance(decision, Chosen) and decision.checkpoint_id == 2
    storage = LocalCheckpointStorage(FIXTURE)
    return {ts.task: decode_task_state(storage.read_state(ts.handle)) for ts in decision.metadata.tasks}


def test_the_state_files_of_the_previous_code_decode_to_sources_positions_and_keyed_state():
    states = fixture_states()

    assert states["lines#0"] == TaskStateFile(source={"gen-0": 94})
    assert states["lines#1"] == TaskStateFile(source={"gen-1": 93})
    counts: Counter[str] = Counter()
    for task in ("count#0", "count#1"):
        keyed = states[task].operators["count"]
        assert isinstance(keyed, KeyedSnapshot) and keyed.files == {}
        assert states[task].operators["counts"] is None and states[task].source is None
        counts.update(heap_snapshot_entries(dict(keyed.data), "count"))
    assert sum(counts.values()) == 3 * 93  # three words a line, 93 lines read up to the barrier


def test_the_metadata_of_the_previous_code_decodes_its_extra_into_typed_fields():
    metadata = LocalCheckpointStorage(FIXTURE).load_metadata(CheckpointId(2))

    assert metadata.source_records == 93 and not metadata.savepoint and metadata.origin is None
    assert metadata.graph == JobRecord(
        {"count": OperatorRecord("Count", NodeKind.KEYED_PROCESS, "count"),
         "counts": OperatorRecord("callback", NodeKind.SINK, "count"),
         "lines": OperatorRecord("lines", NodeKind.SOURCE, "lines")},
        {"count": ("lines",), "lines": ()},
    )


def test_a_job_resumes_from_the_checkpoint_the_previous_code_wrote(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "checkpoints")
    at_checkpoint: Counter[str] = Counter()
    for task in ("count#0", "count#1"):
        at_checkpoint.update(heap_snapshot_entries(dict(fixture_states()[task].operators["count"].data), "count"))
    out: list[tuple[str, int]] = []
    flow = fs.Dataflow("wordcount", parallelism=2)
    (flow.source(generator_source(FIXTURE_LINES, splits=2, rate=1000.0), uid="lines")
         .flat_map(str.split, uid="words").key_by(lambda word: word)
         .process(Count(), uid="count").sink(fs.CallbackSink(out.append), uid="counts"))

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "checkpoints", interval="20ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )

    assert result.restored_from == [2]
    assert result.records == FIXTURE_LINES - 93, "the sources resumed from the stored positions"
    before = Counter((word, n) for word, count in at_checkpoint.items() for n in range(1, count + 1))
    assert before + Counter(map(tuple, out)) == batch_reference(lines(FIXTURE_LINES))


# --- a uid named like a field of the previous layout --------------------------------------------


def test_a_sink_whose_uid_was_a_reserved_key_is_checkpointed_and_restored_as_its_own_state(tmp_path):
    """Before the typed state file, the sink's state under uid ``__source__`` was taken for the read
    positions of a source named after the sink's chain, and the restore refused them."""
    total = INPUT_LINES
    flow = fs.Dataflow("collide", parallelism=2)
    (flow.source(generator_source(total, rate=RATE), uid="lines")
         .flat_map(str.split, uid="words").key_by(lambda word: word)
         .process(Count(), uid="count").sink(fs.FileSink(tmp_path / "out"), uid="__source__"))
    crash = fs.Failpoints({"task.after_snapshot_before_ack": "raise@9"})  # after two checkpoints of 4 tasks

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "checkpoints", interval=INTERVAL),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=crash,
    )

    assert crash.fired("task.after_snapshot_before_ack") == 1
    assert_restored_from_a_checkpoint(result, total)
    assert Counter(committed_output(tmp_path / "out")) == batch_reference(lines(total))
