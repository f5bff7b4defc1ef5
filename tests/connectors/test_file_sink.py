"""FileSink: two-phase commit over hidden in-progress and pending files; only committed files are visible."""

from __future__ import annotations

import enum
import json
import os
import pickle
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowstate.connectors.file_sink import CommittedOutputExistsError, FileSink, LostOutputError
from flowstate.errors import UnwritableRecordError

WRITER_ID = re.compile(r"\.[0-9a-f]{12}(?=\.|$)")


def plain(name):
    """A file name without its writer id: ``.part-0-0.1a2b3c4d5e6f.pending`` → ``.part-0-0.pending``."""
    return WRITER_ID.sub("", name)


def plain_state(state):
    """A snapshot with the writer ids taken out of its file names."""
    return {**state, "pending": [(cid, plain(name)) for cid, name in state["pending"]]}


def names(directory):
    return sorted(os.listdir(directory))


def visible(directory):
    """The committed files, named without their writer ids."""
    return sorted(plain(n) for n in os.listdir(directory) if not n.startswith("."))


def hidden(directory):
    return sorted(plain(n) for n in os.listdir(directory) if n.startswith("."))


def only_file(directory, name):
    """The one file of ``directory`` called ``name`` once its writer id is taken out."""
    [found] = [n for n in os.listdir(directory) if plain(n) == name]
    return directory / found


def visible_records(directory):
    """Every committed record, parsed, in file order (subtask, then seq)."""

    def order(name):
        _, subtask, seq = plain(name).rsplit(".", 1)[0].rsplit("-", 2)
        return int(subtask), int(seq)

    records = []
    for name in sorted((n for n in names(directory) if not n.startswith(".")), key=order):
        with open(os.path.join(directory, name), encoding="utf-8") as file:
            records.extend(json.loads(line) for line in file.read().splitlines())
    return records


def restored(snapshot):
    """What the runtime gives back after storing a snapshot: an equal, unshared copy."""
    return pickle.loads(pickle.dumps(snapshot))


# ---- visibility ----------------------------------------------------------------------------------


def test_written_records_are_invisible_until_their_checkpoint_commits(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([1, 2])
    assert visible(tmp_path) == []
    assert hidden(tmp_path) == [".part-0-0.inprogress"]
    writer.pre_commit(1)
    assert visible(tmp_path) == []
    assert hidden(tmp_path) == [".part-0-0.pending"]
    writer.commit(1)
    assert visible(tmp_path) == ["part-0-0.jsonl"]
    assert hidden(tmp_path) == []
    assert visible_records(tmp_path) == [1, 2]


def test_pre_commit_without_commit_leaves_nothing_visible_even_after_close(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch(["a"])
    writer.pre_commit(1)
    writer.write_batch(["b"])
    writer.close()
    assert visible(tmp_path) == []
    assert hidden(tmp_path) == [".part-0-0.pending", ".part-0-1.inprogress"]


def test_a_barrier_after_nothing_was_written_leaves_nothing_pending(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.pre_commit(1)
    assert writer.snapshot() == {"seq": 0, "pending": []}
    writer.commit(1)
    writer.write_batch([])
    writer.pre_commit(2)
    assert os.listdir(tmp_path) == []
    assert writer.snapshot() == {"seq": 0, "pending": []}


def test_the_snapshot_names_the_next_seq_and_every_pending_file_with_its_checkpoint(tmp_path):
    writer = FileSink(tmp_path).build_writer(3, 4, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    writer.write_batch([2])
    writer.pre_commit(2)
    assert plain_state(writer.snapshot()) == {"seq": 2, "pending": [(1, ".part-3-0.pending"), (2, ".part-3-1.pending")]}
    writer.commit(1)
    assert plain_state(writer.snapshot()) == {"seq": 2, "pending": [(2, ".part-3-1.pending")]}


def test_commit_publishes_only_checkpoints_up_to_its_id_and_an_aborted_one_with_the_next(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    for checkpoint in (1, 2, 3):
        writer.write_batch([checkpoint])
        writer.pre_commit(checkpoint)
    writer.commit(1)  # checkpoint 2 was aborted: its file waits for checkpoint 3
    assert visible(tmp_path) == ["part-0-0.jsonl"]
    writer.commit(3)
    assert visible_records(tmp_path) == [1, 2, 3]
    assert hidden(tmp_path) == []


def test_commit_is_idempotent(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    state = restored(writer.snapshot())
    writer.commit(1)
    writer.commit(1)
    restored_writer = FileSink(tmp_path).build_writer(0, 1, state)
    restored_writer.commit(1)
    assert visible_records(tmp_path) == [1]


def test_committing_a_pending_file_that_is_gone_with_no_visible_file_is_an_error_that_changes_nothing(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    state = restored(writer.snapshot())
    os.unlink(only_file(tmp_path, ".part-0-0.pending"))
    with pytest.raises(LostOutputError, match=r"\.part-0-0\.[0-9a-f]{12}\.pending"):
        writer.commit(1)
    assert writer.snapshot() == state
    with pytest.raises(LostOutputError):
        FileSink(tmp_path).build_writer(0, 1, state)


def test_a_pre_commit_for_an_old_checkpoint_raises_and_leaves_the_writer_unchanged(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(2)
    writer.write_batch([2])
    with pytest.raises(ValueError, match="checkpoint 2"):
        writer.pre_commit(2)
    assert plain_state(writer.snapshot()) == {"seq": 1, "pending": [(2, ".part-0-0.pending")]}
    assert hidden(tmp_path) == [".part-0-0.pending", ".part-0-1.inprogress"]
    writer.pre_commit(3)
    writer.commit(3)
    assert visible_records(tmp_path) == [1, 2]


def test_finish_publishes_everything_written_without_checkpoints(tmp_path):
    writer = FileSink(tmp_path).build_writer(1, 2, None)
    writer.write_batch([1, 2])
    writer.write_batch([3])
    writer.finish()
    writer.close()
    assert visible(tmp_path) == ["part-1-0.jsonl"]
    assert hidden(tmp_path) == []
    assert visible_records(tmp_path) == [1, 2, 3]


def test_finish_also_publishes_files_still_pending(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    writer.write_batch([2])
    writer.finish()
    assert visible_records(tmp_path) == [1, 2]
    assert hidden(tmp_path) == []


def test_the_sink_is_transactional_and_names_itself_after_its_directory(tmp_path):
    assert FileSink(tmp_path).transactional is True
    assert FileSink(tmp_path).name == f"file-sink:{tmp_path}"
    assert FileSink(tmp_path, name="out").name == "out"


def test_the_directory_is_created_and_prefix_and_suffix_name_the_files(tmp_path):
    directory = tmp_path / "a" / "b"
    writer = FileSink(directory, prefix="out", suffix=".txt").build_writer(0, 1, None)
    writer.write_batch(["x"])
    writer.pre_commit(1)
    writer.commit(1)
    assert [plain(n) for n in os.listdir(directory)] == ["out-0-0.txt"]


# ---- JSON Lines ----------------------------------------------------------------------------------


def test_records_are_written_as_json_lines_with_tuples_as_arrays_and_unescaped_unicode(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([("key", 3), {"k": "é€", "n": None}, "line\nbreak", 1.5, [1, [2]]])
    writer.finish()
    text = only_file(tmp_path, "part-0-0.jsonl").read_text(encoding="utf-8")
    assert text == '["key",3]\n{"k":"é€","n":null}\n"line\\nbreak"\n1.5\n[1,[2]]\n'


def json_module_lines(records) -> bytes:
    """What the per-record encoder (``json.dumps``) writes for ``records``."""
    from flowstate.connectors.file_sink import json_lines_encoder

    encode = json_lines_encoder()
    return "".join(encode(r) + "\n" for r in records).encode("utf-8")


def written(tmp_path, records) -> bytes:
    """The bytes ``write_batch(records)`` puts in the in-progress file (closed unpublished: no fsync)."""
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    try:
        writer.write_batch(records)
    finally:
        writer.close()
    return only_file(tmp_path, ".part-0-0.inprogress").read_bytes()


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.uuids(),
    st.sampled_from(["a", 1, (2, "b")]).map(lambda v: enum.Enum("E", {"M": v}).M),
)
BATCHES = st.one_of(
    st.lists(SCALARS, min_size=1, max_size=8),
    st.lists(st.tuples(st.text(max_size=6), st.integers()), min_size=1, max_size=8),
    st.lists(st.lists(SCALARS, max_size=3), min_size=1, max_size=8),
    st.lists(st.dictionaries(st.text(max_size=3), SCALARS, max_size=3), min_size=1, max_size=8),
    st.lists(st.one_of(SCALARS, st.tuples(SCALARS, st.lists(SCALARS, max_size=2)),
                       st.dictionaries(st.one_of(st.integers(), st.text(max_size=2)), SCALARS, max_size=2)),
             min_size=1, max_size=8),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=BATCHES)
def test_a_batch_encoded_at_once_is_what_json_writes_record_by_record(tmp_path_factory, records):
    tmp_path = tmp_path_factory.mktemp("out")
    try:
        expected = json_module_lines(records)
    except UnicodeEncodeError:  # a lone surrogate: refused, as json refuses it
        with pytest.raises(UnicodeEncodeError):
            written(tmp_path, records)
        return
    got = written(tmp_path, records)
    assert got.count(b"\n") == len(records)
    if not any(isinstance(v, float) for r in records for v in _values(r)):
        assert got == expected
    else:  # the same numbers, exponents perhaps written otherwise (1e16 for 1e+16)
        parse = lambda data: [json.loads(line) for line in data.decode("utf-8").split("\n")[:-1]]  # noqa: E731
        assert repr(parse(got)) == repr(parse(expected))


def _values(record):
    if isinstance(record, dict):
        return list(record.values())
    if isinstance(record, (tuple, list)):
        return [v for item in record for v in _values(item)] or [record]
    return [record]


def test_batches_orjson_writes_as_json_does_are_encoded_at_once_and_others_record_by_record(tmp_path):
    import collections
    import enum
    import uuid

    from flowstate.connectors import file_sink

    class Color(enum.Enum):
        RED = "red"

    class Text(str):
        pass

    key = uuid.UUID(int=7)
    assert file_sink.json_lines_batch([("a", 1), ("b", [2.5, {"c": True}])]) == b'["a",1]\n["b",[2.5,{"c":true}]]\n'
    assert file_sink.json_lines_batch([{"k": "v\n,\",\n,"}, {}]) == b'{"k":"v\\n,\\",\\n,"}\n{}\n'
    assert file_sink.json_lines_batch([Color.RED, key]) == json_module_lines([Color.RED, key])
    pair = collections.namedtuple("pair", "a b")
    for refused in ([float("nan")], [None], [2**64], [{1: "a"}], ["\ud800"], [Text("t")], [pair(1, 2)]):
        assert file_sink.json_lines_batch(refused) is None, refused


def test_a_record_json_cannot_write_fails_the_batch_the_same_way_on_either_path(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class Point:
        x: int

    for batch in ([Point(1)], [("a", Point(1))], [{"p": Point(1)}]):
        writer = FileSink(tmp_path).build_writer(0, 1, None)
        with pytest.raises(UnwritableRecordError, match="Point"):
            writer.write_batch(batch)
        writer.close()


def test_an_encoder_replaces_json(tmp_path):
    writer = FileSink(tmp_path, suffix=".csv", encoder=lambda r: f"{r[0]},{r[1]}").build_writer(0, 1, None)
    writer.write_batch([("a", 1), ("b", 2)])
    writer.finish()
    assert only_file(tmp_path, "part-0-0.csv").read_text() == "a,1\nb,2\n"


def test_an_encoded_record_with_a_newline_is_rejected_before_anything_is_written(tmp_path):
    writer = FileSink(tmp_path, encoder=str).build_writer(0, 1, None)
    with pytest.raises(ValueError, match="newline"):
        writer.write_batch(["a", "b\nc"])
    assert os.listdir(tmp_path) == []


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="encoder"):
        FileSink(tmp_path, encoder="json")
    with pytest.raises(ValueError, match="prefix"):
        FileSink(tmp_path, prefix="a/b")
    with pytest.raises(ValueError, match="subtask"):
        FileSink(tmp_path).build_writer(2, 2, None)
    with pytest.raises(ValueError, match="not a file sink snapshot"):
        FileSink(tmp_path).build_writer(0, 1, {"pending": []})


# ---- restore -------------------------------------------------------------------------------------


def test_restore_commits_what_the_snapshot_names_and_continues_its_seq(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    state = restored(writer.snapshot())
    writer.close()
    resumed = FileSink(tmp_path).build_writer(0, 1, state)
    assert visible_records(tmp_path) == [1]
    assert plain_state(resumed.snapshot()) == {"seq": 1, "pending": []}
    resumed.write_batch([2])
    resumed.pre_commit(2)
    resumed.commit(2)
    assert visible(tmp_path) == ["part-0-0.jsonl", "part-0-1.jsonl"]
    assert visible_records(tmp_path) == [1, 2]


def test_restore_deletes_this_subtasks_strays_but_never_another_subtasks_files(tmp_path):
    sink = FileSink(tmp_path)
    mine = sink.build_writer(1, 12, None)
    mine.write_batch(["kept"])
    mine.pre_commit(1)
    state = restored(mine.snapshot())
    mine.write_batch(["stray pending"])
    mine.pre_commit(2)
    mine.write_batch(["stray in progress"])
    mine.close()
    neighbours = []
    for subtask in (0, 10, 11):
        other = sink.build_writer(subtask, 12, None)
        other.write_batch([subtask])
        other.pre_commit(1)
        other.write_batch([subtask])
        neighbours.append(other)
    others_files = [n for n in hidden(tmp_path) if not n.startswith(".part-1-")]
    (tmp_path / ".part-1-x.inprogress").write_text("not a name this sink writes")
    (tmp_path / ".other-1-0.pending").write_text("another prefix")
    assert len(others_files) == 6

    sink.build_writer(1, 12, state)

    assert visible(tmp_path) == ["part-1-0.jsonl"]
    assert visible_records(tmp_path) == ["kept"]
    assert hidden(tmp_path) == sorted(others_files + [".other-1-0.pending", ".part-1-x.inprogress"])
    for other in neighbours:
        other.close()


def test_a_fresh_writer_deletes_leftovers_of_its_subtask_from_a_run_without_a_completed_checkpoint(tmp_path):
    sink = FileSink(tmp_path)
    crashed = sink.build_writer(0, 2, None)
    crashed.write_batch(["lost"])
    crashed.pre_commit(1)
    crashed.write_batch(["lost too"])
    crashed.close()
    neighbour = sink.build_writer(1, 2, None)
    neighbour.write_batch(["theirs"])
    fresh = sink.build_writer(0, 2, None)
    assert hidden(tmp_path) == [".part-1-0.inprogress"]
    fresh.write_batch(["again"])
    fresh.finish()
    assert visible_records(tmp_path) == ["again"]
    neighbour.close()


def exactly_once_run(directory, records, crash_after, restore_from_latest):
    """Write ``records`` in three checkpoints of three records; crash after ``crash_after`` writes.

    Checkpoint 2's pending file is renamed and its snapshot stored, then the process dies before
    ``commit(2)`` arrives. ``restore_from_latest`` says whether checkpoint 2 had completed (the job
    restores from it) or not (the job restores from checkpoint 1 and replays from there).
    """
    sink = FileSink(directory)
    writer = sink.build_writer(0, 1, None)
    snapshots = {}
    position = 0
    for checkpoint in (1, 2):
        writer.write_batch(records[position:position + 3])
        position += 3
        writer.pre_commit(checkpoint)
        snapshots[checkpoint] = restored(writer.snapshot())
        if checkpoint == 1:
            writer.commit(1)
    writer.write_batch(records[position:position + crash_after])
    writer.close()  # the crash: no commit(2), an in-progress file left behind

    checkpoint = 2 if restore_from_latest else 1
    resumed = sink.build_writer(0, 1, snapshots[checkpoint])
    replay_from = 3 * checkpoint  # the source position stored in the same checkpoint
    resumed.write_batch(records[replay_from:])
    resumed.pre_commit(3)
    resumed.commit(3)
    resumed.close()


@pytest.mark.parametrize("restore_from_latest", [True, False])
@pytest.mark.parametrize("crash_after", [0, 1, 3])
def test_a_crash_between_the_pending_rename_and_the_commit_then_a_restore_shows_each_record_exactly_once(
    tmp_path, restore_from_latest, crash_after
):
    records = [("event", i) for i in range(9)]
    exactly_once_run(tmp_path, records, crash_after, restore_from_latest)
    assert visible_records(tmp_path) == [list(r) for r in records]
    assert hidden(tmp_path) == []


def test_a_crash_after_the_pending_rename_but_before_the_snapshot_deletes_that_pending_file(tmp_path):
    sink = FileSink(tmp_path)
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    state = restored(writer.snapshot())
    writer.commit(1)
    writer.write_batch([2])
    writer.pre_commit(2)  # renamed to pending; the checkpoint never completes
    writer.close()
    resumed = sink.build_writer(0, 1, state)
    assert hidden(tmp_path) == []
    resumed.write_batch([2])
    resumed.pre_commit(2)
    resumed.commit(2)
    assert visible_records(tmp_path) == [1, 2]


# ---- restore at another parallelism (Step 4) -----------------------------------------------------


def run_writers(sink, parallelism, states, batches, *, checkpoint, complete=True, leave_in_progress=False):
    """Build ``parallelism`` writers from ``states``, write ``batches[i]`` with writer ``i``, pre-commit
    ``checkpoint`` (and commit it when ``complete``); returns their snapshots."""
    writers = [sink.build_writer(i, parallelism, restored(states[i]) if states else None) for i in range(parallelism)]
    for writer, batch in zip(writers, batches):
        writer.write_batch(batch)
    for writer in writers:
        writer.pre_commit(checkpoint)
    snapshots = [writer.snapshot() for writer in writers]
    if leave_in_progress:
        for writer, batch in zip(writers, batches):
            writer.write_batch([f"uncommitted after {checkpoint}: {record}" for record in batch])
    if complete:
        for writer in writers:
            writer.commit(checkpoint)
    for writer in writers:
        writer.close()
    return snapshots


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 3), (4, 1), (3, 2)])
def test_a_rescaled_restore_commits_every_pending_file_once_and_deletes_every_leftover(tmp_path, before, after):
    sink = FileSink(tmp_path)
    committed = run_writers(sink, before, None, [[f"a{i}"] for i in range(before)], checkpoint=1)
    # Checkpoint 2 completed (its snapshots are what we restore) but the crash came before any commit;
    # records written after it were never pre-committed.
    states = run_writers(sink, before, committed, [[f"b{i}"] for i in range(before)], checkpoint=2,
                         complete=False, leave_in_progress=True)

    new_states = sink.redistribute_state(states, after)
    assert len(new_states) == after
    writers = [sink.build_writer(i, after, restored(new_states[i])) for i in range(after)]

    assert sorted(visible_records(tmp_path)) == sorted([f"a{i}" for i in range(before)] + [f"b{i}" for i in range(before)])
    assert hidden(tmp_path) == []
    for writer in writers:
        writer.close()


def test_scaling_down_and_up_again_never_reuses_the_name_of_a_committed_file(tmp_path):
    sink = FileSink(tmp_path)
    at_two = run_writers(sink, 2, None, [["a0"], ["a1"]], checkpoint=1)
    at_two = run_writers(sink, 2, at_two, [["b0"], ["b1"]], checkpoint=2)
    assert visible(tmp_path) == ["part-0-0.jsonl", "part-0-1.jsonl", "part-1-0.jsonl", "part-1-1.jsonl"]

    at_one = run_writers(sink, 1, sink.redistribute_state(at_two, 1), [["c0"]], checkpoint=3)
    assert [plain_state(s) for s in at_one] == [{"seq": 3, "pending": [(3, ".part-0-2.pending")], "retired": {1: 2}}]
    at_two_again = run_writers(sink, 2, sink.redistribute_state(at_one, 2), [["d0"], ["d1"]], checkpoint=4)

    assert [plain_state(s) for s in at_two_again] == [{"seq": 4, "pending": [(4, ".part-0-3.pending")]},
                            {"seq": 3, "pending": [(4, ".part-1-2.pending")]}]
    assert sorted(visible_records(tmp_path)) == ["a0", "a1", "b0", "b1", "c0", "d0", "d1"]
    assert "part-1-2.jsonl" in visible(tmp_path)


def test_redistribution_gives_each_pending_file_to_exactly_one_writer_in_checkpoint_order(tmp_path):
    sink = FileSink(tmp_path)
    states = [
        {"seq": 2, "pending": [(3, ".part-0-0.pending"), (4, ".part-0-1.pending")]},
        {"seq": 1, "pending": [(4, ".part-1-0.pending")]},
        {"seq": 5, "pending": [], "retired": {5: 7}},
        {"seq": 1, "pending": [(3, ".part-3-0.pending")]},
    ]

    assert sink.redistribute_state(states, 2) == [
        {"seq": 2, "pending": [(3, ".part-0-0.pending"), (4, ".part-0-1.pending")], "retired": {2: 5}},
        {"seq": 1, "pending": [(3, ".part-3-0.pending"), (4, ".part-1-0.pending")], "retired": {3: 1, 5: 7}},
    ]


def test_a_writer_deletes_the_leftovers_of_the_retired_subtasks_it_looks_after_and_no_others(tmp_path):
    for name in (".part-0-4.inprogress", ".part-2-1.pending", ".part-3-0.inprogress", ".part-1-9.pending"):
        (tmp_path / name).write_text("leftover\n")

    FileSink(tmp_path).build_writer(0, 2, {"seq": 4, "pending": [], "retired": {2: 1}}).close()

    assert hidden(tmp_path) == [".part-1-9.pending", ".part-3-0.inprogress"]


def test_a_snapshot_with_a_bad_retired_entry_is_rejected(tmp_path):
    sink = FileSink(tmp_path)
    with pytest.raises(ValueError, match="retired"):
        sink.build_writer(0, 1, {"seq": 0, "pending": [], "retired": {1: -1}})
    with pytest.raises(ValueError, match="retired"):
        sink.build_writer(1, 2, {"seq": 0, "pending": [], "retired": {1: 3}})


# ---- committed output is never replaced ----------------------------------------------------------


def test_a_writer_without_state_never_replaces_the_committed_files_of_an_earlier_run(tmp_path):
    first = FileSink(tmp_path).build_writer(0, 1, None)
    first.write_batch(["first run"])
    first.finish()
    again = FileSink(tmp_path).build_writer(0, 1, None)  # --fresh, or its state dropped: seq 0 again
    again.write_batch(["second run"])
    again.finish()

    assert sorted(visible_records(tmp_path)) == ["first run", "second run"]
    assert visible(tmp_path) == ["part-0-0.jsonl", "part-0-0.jsonl"]


def test_publishing_onto_a_visible_file_that_is_not_its_own_fails_and_leaves_both_files(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch(["new"])
    writer.pre_commit(1)
    [(_, pending)] = writer.snapshot()["pending"]
    target = tmp_path / (pending[1:-len(".pending")] + ".jsonl")
    target.write_text('"committed before"\n')

    with pytest.raises(CommittedOutputExistsError, match="never replaced"):
        writer.commit(1)

    assert target.read_text() == '"committed before"\n'
    assert (tmp_path / pending).read_text() == '"new"\n'


def test_a_crash_between_the_link_and_the_unlink_of_a_commit_is_completed_by_the_restore(tmp_path):
    writer = FileSink(tmp_path).build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    state = restored(writer.snapshot())
    [(_, pending)] = state["pending"]
    os.link(tmp_path / pending, tmp_path / (pending[1:-len(".pending")] + ".jsonl"))  # then the crash
    writer.close()

    FileSink(tmp_path).build_writer(0, 1, state).close()

    assert visible(tmp_path) == ["part-0-0.jsonl"]
    assert hidden(tmp_path) == []
    assert visible_records(tmp_path) == [1]


def test_committed_output_lists_the_visible_files_of_the_sinks_prefix_and_suffix_only(tmp_path):
    sink = FileSink(tmp_path)
    assert FileSink(tmp_path / "missing").committed_output() == ()
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    assert sink.committed_output() == ()
    writer.commit(1)
    (tmp_path / "part-1-0.jsonl").write_text("1\n")  # written by an earlier version, without a writer id
    (tmp_path / "other-0-0.jsonl").write_text("1\n")
    (tmp_path / "part-0-0.csv").write_text("1\n")
    (tmp_path / "notes.txt").write_text("")

    assert [plain(n) for n in sink.committed_output()] == ["part-0-0.jsonl", "part-1-0.jsonl"]
