"""FileSource: one split per file or per byte range of a large file, one record per line, positions
are byte offsets of the next line."""

from __future__ import annotations

import os
import pickle

import pytest

from flowstate.connectors.files import FileChangedError, FileDecodeError, FileSource

# Empty lines, CRLF, a lone \r inside a line, 2-, 3- and 4-byte UTF-8, no newline at the end.
TRICKY = "alpha\n\nbe\rta\r\ncafé €\n\U0001f600x\n\r\n\nlast €"
TRICKY_LINES = ["alpha", "", "be\rta", "café €", "\U0001f600x", "", "", "last €"]
CHUNK_SIZES = [1, 2, 3, 5, 8, 64, 1 << 20]


def read_all(reader, max_records=1000, limit=None):
    out = []
    while limit is None or len(out) < limit:
        batch = reader.poll(max_records if limit is None else min(max_records, limit - len(out)))
        if batch is None:
            break
        out.extend(batch)
    return out


def write(path, content: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def full_read(source, splits=None):
    reader = source.build_reader(source.splits() if splits is None else splits, None)
    try:
        return read_all(reader)
    finally:
        reader.close()


# ---- lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_records_are_the_lines_without_newline_or_crlf_at_any_chunk_size(tmp_path, chunk_size):
    path = write(tmp_path / "in.txt", TRICKY)
    assert full_read(FileSource(str(path), chunk_size=chunk_size)) == TRICKY_LINES


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        ("", []),
        ("\n", [""]),
        ("a\n", ["a"]),
        ("a", ["a"]),
        ("a\n\n", ["a", ""]),
        ("a\r\nb\r\n", ["a", "b"]),
        ("a\r", ["a\r"]),
    ],
)
def test_a_final_newline_ends_the_last_record_and_a_final_line_without_newline_is_a_record(
    tmp_path, content, lines
):
    path = write(tmp_path / "in.txt", content)
    for chunk_size in (1, 4, 1 << 20):
        assert full_read(FileSource(str(path), chunk_size=chunk_size)) == lines


def test_a_line_longer_than_the_chunk_is_one_record(tmp_path):
    long = "x" * 1000 + "é" * 300
    path = write(tmp_path / "in.txt", f"a\n{long}\nb")
    assert full_read(FileSource(str(path), chunk_size=7)) == ["a", long, "b"]


def test_poll_returns_at_most_max_records_and_none_once_every_split_is_read(tmp_path):
    path = write(tmp_path / "in.txt", "".join(f"{i}\n" for i in range(10)))
    source = FileSource(str(path), chunk_size=4)
    reader = source.build_reader(source.splits(), None)
    batches = []
    while (batch := reader.poll(3)) is not None:
        assert len(batch) <= 3
        batches.append(batch)
    assert [r for b in batches for r in b] == [str(i) for i in range(10)]
    assert max(len(b) for b in batches) == 3


def test_the_source_reads_another_encoding_than_utf8(tmp_path):
    path = write(tmp_path / "in.txt", "café\nnaïve\n".encode("latin-1"))
    assert full_read(FileSource(str(path), encoding="latin-1", chunk_size=3)) == ["café", "naïve"]


def test_an_encoding_that_does_not_write_newline_as_one_byte_is_rejected(tmp_path):
    path = write(tmp_path / "in.txt", "a\n")
    with pytest.raises(ValueError, match="utf-16"):
        FileSource(str(path), encoding="utf-16")


@pytest.mark.parametrize("chunk_size", [1, 3, 1 << 20])
def test_bytes_that_do_not_decode_raise_an_error_naming_the_file_and_byte_offset(tmp_path, chunk_size):
    path = write(tmp_path / "bad.txt", b"ok\nfine\nbad \xff byte\n")
    source = FileSource(str(path), chunk_size=chunk_size)
    reader = source.build_reader(source.splits(), None)
    with pytest.raises(FileDecodeError) as raised:
        read_all(reader)
    assert raised.value.offset == 12
    assert raised.value.path == str(path)
    assert str(path) in str(raised.value) and "byte offset 12" in str(raised.value)


def test_undecodable_bytes_in_a_last_line_without_newline_report_their_offset(tmp_path):
    path = write(tmp_path / "bad.txt", b"ok\n\xc3")
    source = FileSource(str(path), chunk_size=2)
    with pytest.raises(FileDecodeError, match="byte offset 3"):
        read_all(source.build_reader(source.splits(), None))


# ---- files and splits ----------------------------------------------------------------------------


def test_a_glob_gives_one_split_per_file_sorted_and_skips_directories(tmp_path):
    for name in ("b.txt", "a.txt", "c.txt"):
        write(tmp_path / name, f"{name}\n")
    (tmp_path / "d.txt").mkdir()
    source = FileSource(str(tmp_path / "*.txt"))
    assert source.splits() == [str(tmp_path / n) for n in ("a.txt", "b.txt", "c.txt")]
    assert source.replayable is True


def test_a_double_star_glob_matches_recursively(tmp_path):
    write(tmp_path / "x" / "y" / "deep.log", "deep\n")
    write(tmp_path / "top.log", "top\n")
    source = FileSource(tmp_path / "**" / "*.log")
    assert sorted(full_read(source)) == ["deep", "top"]


def test_a_list_of_paths_keeps_its_order_and_split_ids_are_the_path_strings(tmp_path):
    b = write(tmp_path / "b.txt", "b\n")
    a = write(tmp_path / "a.txt", "a\n")
    source = FileSource([b, str(a)], name="two")
    assert source.splits() == [str(b), str(a)]
    assert full_read(source) == ["b", "a"]
    assert source.name == "two"


def test_a_pattern_matching_no_file_is_an_error_naming_the_pattern(tmp_path):
    pattern = str(tmp_path / "missing-*.csv")
    with pytest.raises(FileNotFoundError, match="missing-\\*.csv"):
        FileSource(pattern)


def test_a_listed_path_that_is_not_a_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        FileSource([tmp_path / "nope.txt"])
    with pytest.raises(ValueError, match="empty"):
        FileSource([])


def test_the_splits_of_one_reader_are_read_one_after_another_in_the_given_order(tmp_path):
    paths = [str(write(tmp_path / f"{n}.txt", f"{n}1\n{n}2\n")) for n in "abc"]
    source = FileSource(paths, chunk_size=2)
    reader = source.build_reader([paths[2], paths[0]], None)
    assert read_all(reader, max_records=1) == ["c1", "c2", "a1", "a2"]


def test_assigning_splits_round_robin_over_subtasks_reads_every_line_exactly_once(tmp_path):
    for n in range(7):
        write(tmp_path / f"f{n}.txt", "".join(f"{n}-{i}\n" for i in range(n)))
    source = FileSource(str(tmp_path / "*.txt"), chunk_size=5)
    expected = sorted(f"{n}-{i}" for n in range(7) for i in range(n))
    for parallelism in (1, 2, 3, 7, 9):
        assigned = [source.splits()[i::parallelism] for i in range(parallelism)]
        assert sorted(s for splits in assigned for s in splits) == sorted(source.splits())
        lines = [line for splits in assigned for line in full_read(source, splits)]
        assert sorted(lines) == expected, f"parallelism {parallelism}"


def test_an_unknown_split_is_rejected(tmp_path):
    path = write(tmp_path / "in.txt", "a\n")
    with pytest.raises(ValueError, match="unknown split"):
        FileSource(str(path)).build_reader([str(tmp_path / "other.txt")], None)


# ---- recovery symmetry ---------------------------------------------------------------------------


def test_a_snapshot_names_the_byte_offset_of_the_next_unread_line(tmp_path):
    path = write(tmp_path / "in.txt", TRICKY)
    source = FileSource(str(path), chunk_size=4)
    reader = source.build_reader(source.splits(), None)
    assert reader.snapshot() == {str(path): 0}
    assert reader.poll(1) == ["alpha"]
    assert reader.snapshot() == {str(path): 6}
    assert read_all(reader, limit=3) == ["", "be\rta", "café €"]
    assert reader.snapshot() == {str(path): len("alpha\n\nbe\rta\r\ncafé €\n".encode())}
    read_all(reader)
    assert reader.snapshot() == {str(path): os.path.getsize(path)}


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("batch", [1, 3])
def test_reading_part_then_resuming_from_the_snapshot_reads_exactly_the_rest_at_every_cut(
    tmp_path, chunk_size, batch
):
    first_file = write(tmp_path / "1.txt", TRICKY)
    empty_file = write(tmp_path / "2.txt", "")
    last_file = write(tmp_path / "3.txt", "x\r\ny\n")
    source = FileSource([str(first_file), str(empty_file), str(last_file)], chunk_size=chunk_size)
    full = full_read(source)
    assert full == TRICKY_LINES + ["x", "y"]
    for cut in range(len(full) + 1):
        first = source.build_reader(source.splits(), None)
        head = read_all(first, max_records=batch, limit=cut)
        state = pickle.loads(pickle.dumps(first.snapshot()))
        first.close()
        second = source.build_reader(source.splits(), state)
        rest = read_all(second, max_records=batch)
        second.close()
        assert head + rest == full, f"cut after {cut} records, snapshot {state}"


def test_resuming_twice_in_a_row_from_successive_snapshots_reads_exactly_the_rest(tmp_path):
    path = write(tmp_path / "in.txt", TRICKY)
    source = FileSource(str(path), chunk_size=3)
    state = None
    out = []
    for _ in range(len(TRICKY_LINES) + 1):
        reader = source.build_reader(source.splits(), state)
        out.extend(read_all(reader, limit=1))
        state = reader.snapshot()
        reader.close()
    assert out == TRICKY_LINES


def test_a_snapshot_does_not_share_state_with_the_reader(tmp_path):
    path = write(tmp_path / "in.txt", "a\nb\nc\n")
    source = FileSource(str(path))
    reader = source.build_reader(source.splits(), None)
    reader.poll(1)
    state = reader.snapshot()
    state[str(path)] = 0
    assert read_all(reader) == ["b", "c"]


def test_resuming_at_a_position_that_is_not_a_line_start_or_past_the_end_is_refused(tmp_path):
    path = write(tmp_path / "in.txt", "abc\ndef\n")
    source = FileSource(str(path))
    for position, message in ((2, "not the start of a line"), (99, "beyond the end")):
        reader = source.build_reader(source.splits(), {str(path): position})
        with pytest.raises(FileChangedError, match=message):
            reader.poll(10)
        reader.close()


def test_resuming_at_the_end_of_a_file_without_final_newline_reads_nothing(tmp_path):
    path = write(tmp_path / "in.txt", "abc\ndef")
    source = FileSource(str(path))
    assert read_all(source.build_reader(source.splits(), {str(path): 7})) == []


# ---- byte ranges of one large file ---------------------------------------------------------------

SPLIT_TEXT = TRICKY + "\n" + "".join(f"line {i} {'é' * (i % 4)}\n" for i in range(12))
"""About 150 bytes of lines of every length, multi-byte characters among them, CRLF and empty lines."""


def test_a_file_larger_than_the_split_size_is_cut_into_equal_byte_ranges_named_after_the_path(tmp_path):
    big = write(tmp_path / "big.txt", "x\n" * 50)  # 100 bytes
    small = write(tmp_path / "small.txt", "s\n")
    source = FileSource([big, small], split_size=30)
    assert source.splits() == [f"{big}[0:25]", f"{big}[25:50]", f"{big}[50:75]", f"{big}[75:100]", str(small)]
    assert FileSource([big], split_size=100).splits() == [str(big)]


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 1 << 20])
def test_every_line_is_read_by_exactly_one_range_whatever_the_split_size(tmp_path, chunk_size):
    path = write(tmp_path / "in.txt", SPLIT_TEXT)
    expected = full_read(FileSource(str(path)))
    size = os.path.getsize(path)
    for split_size in range(1, size + 2):
        source = FileSource(str(path), split_size=split_size, chunk_size=chunk_size)
        per_split = [full_read(source, [split]) for split in source.splits()]
        assert [line for lines in per_split for line in lines] == expected, f"split_size {split_size}"


def test_a_line_belongs_to_the_range_in_which_it_starts(tmp_path):
    # "aaaa\n" is bytes 0-4, "bb\n" 5-7, "c\n" 8-9: with ranges [0:5) and [5:10) each holds the lines
    # starting in it; with [0:3) [3:6) [6:10), the middle range holds "bb" (starting at 5), the first
    # "aaaa" (straddling 3) and the last "c" (starting at 8).
    path = write(tmp_path / "in.txt", "aaaa\nbb\nc\n")
    two = FileSource(str(path), split_size=5)
    assert [full_read(two, [s]) for s in two.splits()] == [["aaaa"], ["bb", "c"]]
    three = FileSource(str(path), split_size=4)
    assert three.splits() == [f"{path}[0:3]", f"{path}[3:6]", f"{path}[6:10]"]
    assert [full_read(three, [s]) for s in three.splits()] == [["aaaa"], ["bb"], ["c"]]


def test_a_range_inside_one_long_line_has_no_record(tmp_path):
    path = write(tmp_path / "in.txt", "a\n" + "x" * 40 + "\nb\n")
    source = FileSource(str(path), split_size=10, chunk_size=4)
    per_split = [full_read(source, [s]) for s in source.splits()]
    assert per_split[0] == ["a", "x" * 40]
    assert all(lines == [] for lines in per_split[1:-1])
    assert per_split[-1] == ["b"]


def test_ranges_assigned_round_robin_over_subtasks_read_every_line_exactly_once(tmp_path):
    path = write(tmp_path / "in.txt", SPLIT_TEXT)
    expected = sorted(full_read(FileSource(str(path))))
    source = FileSource(str(path), split_size=20, chunk_size=7)
    assert len(source.splits()) > 4
    for parallelism in (1, 2, 3, 4):
        lines = [line for i in range(parallelism) for line in full_read(source, source.splits()[i::parallelism])]
        assert sorted(lines) == expected, f"parallelism {parallelism}"


def test_a_range_snapshot_names_its_start_then_the_next_line_then_the_offset_after_its_last_line(tmp_path):
    path = write(tmp_path / "in.txt", "aaaa\nbb\nc\nd\n")  # lines start at 0, 5, 8, 10; 12 bytes
    source = FileSource(str(path), split_size=6)
    first, second = source.splits()
    assert (first, second) == (f"{path}[0:6]", f"{path}[6:12]")
    reader = source.build_reader([second], None)
    assert reader.snapshot() == {second: 6}
    assert reader.poll(1) == ["c"]
    assert reader.snapshot() == {second: 10}
    assert read_all(reader) == ["d"]
    assert reader.snapshot() == {second: 12}
    reader = source.build_reader([first], None)
    assert read_all(reader) == ["aaaa", "bb"]
    assert reader.snapshot() == {first: 8}, "the offset after the last line of the range, past its end"


@pytest.mark.parametrize("chunk_size", [1, 4, 1 << 20])
@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_resuming_ranges_from_a_snapshot_reads_exactly_the_rest_at_every_cut(tmp_path, chunk_size, parallelism):
    path = write(tmp_path / "in.txt", SPLIT_TEXT)
    other = write(tmp_path / "other.txt", "x\r\ny\n")
    source = FileSource([str(path), str(other)], split_size=25, chunk_size=chunk_size)
    for assigned in (source.splits()[i::parallelism] for i in range(parallelism)):
        full = full_read(source, assigned)
        for cut in range(len(full) + 1):
            first = source.build_reader(assigned, None)
            head = read_all(first, max_records=2, limit=cut)
            state = pickle.loads(pickle.dumps(first.snapshot()))
            first.close()
            second = source.build_reader(assigned, state)
            rest = read_all(second, max_records=2)
            second.close()
            assert head + rest == full, f"cut after {cut} records, snapshot {state}"


def test_range_positions_taken_at_one_parallelism_resume_at_another(tmp_path):
    path = write(tmp_path / "in.txt", SPLIT_TEXT)
    source = FileSource(str(path), split_size=20, chunk_size=5)
    expected = sorted(full_read(FileSource(str(path))))
    head: list[str] = []
    state: dict[str, int] = {}
    for i in range(2):
        reader = source.build_reader(source.splits()[i::2], None)
        head.extend(read_all(reader, max_records=1, limit=3 + 2 * i))
        state.update(reader.snapshot())
        reader.close()
    rest = [line for i in range(3) for line in full_read_from(source, source.splits()[i::3], state)]
    assert sorted(head + rest) == expected


def full_read_from(source, splits, state):
    reader = source.build_reader(splits, {s: state[s] for s in splits if s in state})
    try:
        return read_all(reader)
    finally:
        reader.close()


def test_a_range_resume_position_inside_a_line_is_refused_and_its_start_is_aligned(tmp_path):
    path = write(tmp_path / "in.txt", "aaaa\nbb\nc\nd\n")
    source = FileSource(str(path), split_size=6)
    second = source.splits()[1]  # [6:12): 6 is inside "bb", the range's first line is "c"
    assert full_read_from(source, [second], {second: 6}) == ["c", "d"]
    reader = source.build_reader([second], {second: 7})
    with pytest.raises(FileChangedError, match="not the start of a line"):
        reader.poll(10)
    reader.close()


def test_the_split_size_must_be_a_positive_int(tmp_path):
    path = write(tmp_path / "in.txt", "a\n")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="split_size must be an int"):
            FileSource(str(path), split_size=bad)


def test_positions_of_a_file_cut_otherwise_than_now_are_refused_and_of_a_file_no_longer_read_ignored(tmp_path):
    path = write(tmp_path / "in.txt", SPLIT_TEXT)
    other = write(tmp_path / "other.txt", "x\ny\n")
    whole = FileSource([str(path), str(other)], split_size=1 << 20)
    ranges = FileSource([str(path), str(other)], split_size=30)
    cut_otherwise = FileSource([str(path), str(other)], split_size=50)
    taken_whole = {str(path): 6}
    taken_in_ranges = {ranges.splits()[0]: 6}
    for source, state in ((ranges, taken_whole), (whole, taken_in_ranges), (cut_otherwise, taken_in_ranges)):
        with pytest.raises(ValueError, match="split_size changed since the checkpoint"):
            source.build_reader(source.splits(), state)
    gone = {str(tmp_path / "deleted.txt"): 4, f"{tmp_path / 'deleted.txt'}[0:4]": 2}
    reader = whole.build_reader([str(other)], {str(other): 2, **gone})
    assert read_all(reader) == ["y"]
    reader.close()


@pytest.mark.parametrize("split_size", [1 << 20, 64])
def test_a_reader_reports_the_bytes_it_read_of_its_splits_across_a_restore(tmp_path, split_size):
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name} line {i}\n" for i in range(40)))
    total = sum(os.path.getsize(tmp_path / f"{name}.txt") for name in ("a", "b"))
    source = FileSource(str(tmp_path / "*.txt"), chunk_size=16, split_size=split_size)
    reader = source.build_reader(source.splits(), None)
    assert reader.progress() == (0, total)

    for _ in range(12):
        reader.poll(5)
    state = reader.snapshot()
    middle = reader.progress()
    assert 0 < middle[0] < total and middle[1] == total

    restored = source.build_reader(source.splits(), state)
    assert restored.progress()[0] >= middle[0] - 16, "what was read before the restore counts"
    while restored.poll(50) is not None:
        pass
    assert restored.progress() == (total, total)
