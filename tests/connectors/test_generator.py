"""GeneratorSource: record i is fn(i), splits by index modulo, snapshots name the next index."""

from __future__ import annotations

import pickle
import time as real_time

import pytest

from flowstate.connectors.generator import GeneratorSource


def read_all(reader, max_records=1000, limit=None):
    out = []
    while limit is None or len(out) < limit:
        batch = reader.poll(max_records if limit is None else min(max_records, limit - len(out)))
        if batch is None:
            break
        out.extend(batch)
    return out


def square(i):
    return i * i


class ManualClock:
    """Time moves only when the reader sleeps or the test advances it."""

    def __init__(self, sleeping_advances=True):
        self.now = 100.0
        self.reads = 0
        self.sleeps = []
        self.sleeping_advances = sleeping_advances

    def clock(self):
        self.reads += 1
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        if len(self.sleeps) > 10_000:
            raise AssertionError("the reader keeps sleeping: it is spinning")
        if self.sleeping_advances:
            self.now += seconds


# ---- records and splits --------------------------------------------------------------------------


def test_record_i_is_fn_of_i_in_index_order():
    source = GeneratorSource(square, 10)
    reader = source.build_reader(source.splits(), None)
    assert read_all(reader, max_records=3) == [i * i for i in range(10)]


def test_split_k_yields_the_indices_congruent_to_k():
    source = GeneratorSource(lambda i: i, 11, splits=3)
    assert source.splits() == ["gen-0", "gen-1", "gen-2"]
    for k in range(3):
        reader = source.build_reader([f"gen-{k}"], None)
        assert read_all(reader, max_records=2) == [i for i in range(11) if i % 3 == k]


def test_a_reader_of_several_splits_reads_them_merged_in_index_order():
    source = GeneratorSource(lambda i: i, 20, splits=4)
    reader = source.build_reader(["gen-1", "gen-3"], None)
    assert read_all(reader, max_records=3) == [i for i in range(20) if i % 4 in (1, 3)]


def test_an_unbounded_source_never_ends_and_no_split_starves():
    source = GeneratorSource(lambda i: i, splits=2)
    reader = source.build_reader(["gen-0", "gen-1"], None)
    for _ in range(50):
        assert reader.poll(7) is not None
    assert reader.poll(4) == [350, 351, 352, 353]
    assert reader.snapshot() == {"gen-0": 354, "gen-1": 355}


def test_a_finished_reader_returns_none_and_a_zero_count_source_is_finished_at_once():
    source = GeneratorSource(lambda i: i, 2)
    reader = source.build_reader(source.splits(), None)
    assert reader.poll(5) == [0, 1]
    assert reader.poll(5) is None
    empty = GeneratorSource(lambda i: i, 0, splits=2)
    assert empty.build_reader(empty.splits(), None).poll(5) is None


def test_poll_returns_at_most_max_records():
    source = GeneratorSource(lambda i: i)
    reader = source.build_reader(source.splits(), None)
    assert reader.poll(0) == []
    assert len(reader.poll(17)) == 17


def test_a_reader_without_splits_is_finished():
    source = GeneratorSource(lambda i: i, 5, splits=2)
    assert source.build_reader([], None).poll(10) is None


def test_the_source_is_replayable_and_keeps_its_name():
    source = GeneratorSource(lambda i: i, name="numbers")
    assert source.replayable is True
    assert source.name == "numbers"
    assert GeneratorSource(lambda i: i).name == "generator"


# ---- recovery symmetry ---------------------------------------------------------------------------


def test_a_snapshot_names_the_next_index_to_read_not_the_last_one_read():
    source = GeneratorSource(lambda i: i, 10, splits=3)
    reader = source.build_reader(["gen-1"], None)
    assert reader.snapshot() == {"gen-1": 1}
    assert reader.poll(2) == [1, 4]
    assert reader.snapshot() == {"gen-1": 7}


@pytest.mark.parametrize(
    ("count", "splits", "owned"),
    [(13, 1, ["gen-0"]), (13, 3, ["gen-2"]), (17, 4, ["gen-0", "gen-2", "gen-3"]), (5, 2, ["gen-0", "gen-1"])],
)
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_reading_part_then_resuming_from_the_snapshot_reads_exactly_the_rest_at_every_cut(
    count, splits, owned, batch
):
    source = GeneratorSource(lambda i: ("record", i), count, splits=splits)
    full = read_all(source.build_reader(owned, None), max_records=batch)
    assert full, "the owned splits hold records"
    for cut in range(len(full) + 1):
        first = source.build_reader(owned, None)
        head = read_all(first, max_records=batch, limit=cut)
        state = pickle.loads(pickle.dumps(first.snapshot()))
        first.close()
        rest = read_all(source.build_reader(owned, state), max_records=batch)
        assert head + rest == full, f"cut after {cut} records"


def test_assigning_splits_round_robin_over_subtasks_reads_every_record_exactly_once():
    source = GeneratorSource(lambda i: i, 50, splits=5)
    for parallelism in (1, 2, 3, 5, 7):
        assigned = [source.splits()[i::parallelism] for i in range(parallelism)]
        assert sorted(s for splits in assigned for s in splits) == sorted(source.splits())
        records = [r for splits in assigned for r in read_all(source.build_reader(splits, None))]
        assert sorted(records) == list(range(50)), f"parallelism {parallelism}"


def test_a_snapshot_does_not_share_state_with_the_reader():
    source = GeneratorSource(lambda i: i, 10)
    reader = source.build_reader(source.splits(), None)
    reader.poll(3)
    state = reader.snapshot()
    state["gen-0"] = 0
    assert reader.poll(2) == [3, 4]


def test_resume_state_for_splits_the_reader_does_not_own_is_ignored():
    source = GeneratorSource(lambda i: i, 10, splits=2)
    reader = source.build_reader(["gen-1"], {"gen-0": 8, "gen-1": 5})
    assert read_all(reader) == [5, 7, 9]


def test_a_failing_fn_leaves_the_position_unchanged():
    calls = []

    def fragile(i):
        calls.append(i)
        if i == 3 and calls.count(3) == 1:
            raise RuntimeError("transient")
        return i

    source = GeneratorSource(fragile, 6)
    reader = source.build_reader(source.splits(), None)
    with pytest.raises(RuntimeError):
        reader.poll(10)
    assert reader.snapshot() == {"gen-0": 0}
    assert read_all(reader) == list(range(6))


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"fn": 5}, TypeError, "fn must be callable"),
        ({"count": -1}, ValueError, "count must be ≥ 0"),
        ({"count": 2.5}, TypeError, "count must be an int"),
        ({"splits": 0}, ValueError, "splits must be ≥ 1"),
        ({"rate": 0}, ValueError, "rate must be > 0"),
        ({"clock": 5}, TypeError, "clock and sleep must be callable"),
    ],
)
def test_invalid_arguments_are_rejected_with_a_clear_error(kwargs, error, message):
    arguments = {"fn": lambda i: i, **kwargs}
    fn = arguments.pop("fn")
    with pytest.raises(error, match=message):
        GeneratorSource(fn, **arguments)


def test_an_unknown_split_or_a_position_outside_the_split_is_rejected():
    source = GeneratorSource(lambda i: i, 10, splits=2)
    with pytest.raises(ValueError, match="unknown split 'gen-2'"):
        source.build_reader(["gen-2"], None)
    with pytest.raises(ValueError, match="unknown split 'file-0'"):
        source.build_reader(["file-0"], None)
    with pytest.raises(ValueError, match="not an index of split 'gen-1'"):
        source.build_reader(["gen-1"], {"gen-1": 4})
    with pytest.raises(ValueError, match="must be an int ≥ 0"):
        source.build_reader(["gen-0"], {"gen-0": -2})


# ---- rate ----------------------------------------------------------------------------------------


def test_building_a_throttled_reader_reads_no_clock():
    time = ManualClock()
    source = GeneratorSource(lambda i: i, rate=10, clock=time.clock, sleep=time.sleep)
    source.build_reader(source.splits(), None)
    assert time.reads == 0
    assert time.sleeps == []


def test_a_throttled_reader_emits_about_rate_records_per_second_sleeping_at_most_a_twentieth_each_poll():
    time = ManualClock()
    source = GeneratorSource(lambda i: i, rate=200, clock=time.clock, sleep=time.sleep)
    reader = source.build_reader(source.splits(), None)
    start = time.now
    records = []
    while len(records) < 400:
        sleeps_before = len(time.sleeps)
        records.extend(reader.poll(1000))
        assert len(time.sleeps) - sleeps_before <= 1, "one poll sleeps at most once"
    assert records == list(range(len(records)))
    elapsed = time.now - start
    assert 1.9 <= elapsed <= 2.1, elapsed
    assert max(time.sleeps) <= 0.05


def test_a_throttled_poll_with_no_token_left_sleeps_once_and_returns_an_empty_batch():
    time = ManualClock(sleeping_advances=False)
    source = GeneratorSource(lambda i: i, rate=1, clock=time.clock, sleep=time.sleep)
    reader = source.build_reader(source.splits(), None)
    assert reader.poll(10) == [0]
    assert reader.poll(10) == []
    assert time.sleeps == [0.05]
    time.now += 1.0
    assert reader.poll(10) == [1]


def test_after_an_idle_pause_a_throttled_reader_bursts_at_most_a_tenth_of_a_second_of_records():
    time = ManualClock()
    source = GeneratorSource(lambda i: i, rate=1000, clock=time.clock, sleep=time.sleep)
    reader = source.build_reader(source.splits(), None)
    reader.poll(1)
    time.now += 60.0
    assert len(reader.poll(100_000)) == 100


def test_a_throttled_bounded_reader_still_ends():
    time = ManualClock()
    source = GeneratorSource(lambda i: i, 30, rate=100, clock=time.clock, sleep=time.sleep)
    assert read_all(source.build_reader(source.splits(), None)) == list(range(30))


def test_a_throttled_reader_on_the_system_clock_waits_between_records_and_polls_briefly():
    source = GeneratorSource(lambda i: i, 10, rate=100)
    reader = source.build_reader(source.splits(), None)
    started = real_time.monotonic()
    records, longest_poll = [], 0.0
    while True:
        before = real_time.monotonic()
        batch = reader.poll(100)
        longest_poll = max(longest_poll, real_time.monotonic() - before)
        if batch is None:
            break
        records.extend(batch)
    elapsed = real_time.monotonic() - started
    assert records == list(range(10))
    assert 0.05 <= elapsed < 1.0, elapsed
    assert longest_poll < 0.25, longest_poll  # sleeps ≤ 0.05 s; the margin absorbs a busy machine


def test_a_bounded_generator_reports_its_progress_across_a_restore_and_an_unbounded_one_none():
    source = GeneratorSource(lambda i: i, count=10, splits=3)
    splits = list(source.splits())
    reader = source.build_reader(splits, None)
    assert reader.progress() == (0, 10)
    reader.poll(4)
    assert reader.progress() == (4, 10)
    restored = source.build_reader(splits, reader.snapshot())
    assert restored.progress() == (4, 10), "what was read before the restore counts"
    while restored.poll(3) is not None:
        pass
    assert restored.progress() == (10, 10)
    unbounded = GeneratorSource(lambda i: i)
    assert unbounded.build_reader(unbounded.splits(), None).progress() is None
