"""Unaligned checkpoints end to end: in-flight data persisted under back-pressure, exactly-once output
across crashes while it is captured and while it is replayed, the order of every channel kept, the
bank-transfer audit of every retained checkpoint, the bound on in-flight bytes, and rescaling: channel
state restored at another parallelism is replayed by the tasks that receive its records now, and
refused when the inputs of its operator chain changed.

The sequence job: a source of ``SPLITS`` splits, record *i* being ``(NAMES[i % SPLITS], i // SPLITS)``
(split name, sequence number) → ``key_by(split name)`` → ``InOrder`` → ``FileSink``. Records of one
split are read in order by one reader and travel on one channel to one keyed task, so ``InOrder``
(keyed by split) sees each split's sequence numbers in the order of that channel. It keeps the last
one in keyed state and emits ``[name, seq]`` when ``seq`` follows it by exactly 1, else
``["violation", name, last, seq]``: a record lost, replayed twice or replayed out of order shows in
the output. The batch reference is every ``(name, seq)`` exactly once and no violation. Read offline,
each completed checkpoint must also be a consistent cut: per split, what lies between the last
sequence number applied and the reader's position is exactly the channel state, in order.

Back-pressure: ``InOrder`` sleeps a millisecond every ``SLOW_EVERY`` records, so the channels before
it fill up; the odd splits are also slow to *read* (the record function sleeps), so a keyed task
finds one channel full and one nearly empty: an aligned barrier on the empty one waits for the
barrier queued behind the full one, which is what ``alignment_timeout`` cuts short. The split names
are chosen so that at parallelism 2 each keyed task owns one fast and one slow split.

Every test that relies on in-flight data asserts that some completed checkpoint persisted channel
state (otherwise it would prove nothing), and every crash test asserts that the restore used a
checkpoint (id ≥ 1) that had channel state.
"""

from __future__ import annotations

import logging
import pickle
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.state.keygroups import key_group_of, subtask_for_key_group
from flowstate.state.memory import heap_snapshot_entries
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.state_file import TaskStateFile, decode_task_state
from flowstate.testing.oracles import bank

from .jobs import FAST_RESTART, assert_resumed, committed_values

NAMES = ("mercury", "venus", "earth", "jupiter")
"""Split names; at parallelism 2, keys mercury and jupiter go to one keyed task, venus and earth to
the other (so each keyed task reads a fast split and a slow one, from two different readers)."""
SPLITS = len(NAMES)


def test_each_keyed_task_owns_one_fast_and_one_slow_split():
    """The scenarios below rely on it: otherwise a keyed task would have nothing to align."""
    owner = {name: subtask_for_key_group(key_group_of(name, 128), 128, 2) for name in NAMES}
    assert owner[NAMES[0]] == owner[NAMES[3]] != owner[NAMES[1]] == owner[NAMES[2]]
RECORDS = 8000
SLOW_EVERY = 16
"""``InOrder`` sleeps 1 ms every this many records."""
SLOW_READ_EVERY = 8
"""The odd splits sleep 1 ms every this many records they read."""
PARALLELISM = 2
TASKS = 2 * PARALLELISM
"""Source tasks plus keyed tasks (the sink is chained to ``InOrder``)."""
INTERVAL = "50ms"
BATCH_SIZE = 64
TRANSFERS = 8000

UNALIGNED = {"mode": "unaligned"}
SWITCHING = {"mode": "exactly_once", "alignment_timeout": "5ms"}
"""Aligned checkpoints that turn unaligned when an alignment lasts longer than 5 ms."""
CAPTURING_MODES = [
    pytest.param(UNALIGNED, id="unaligned"),
    pytest.param(SWITCHING, id="exactly_once-alignment_timeout"),
]


def sequence_record(i: int) -> tuple[str, int]:
    """Record ``i``: ``(split name, sequence number within the split)``; odd splits read slowly."""
    if i % 2 and (i // 2) % SLOW_READ_EVERY == 0:
        time.sleep(0.001)
    return (NAMES[i % SPLITS], i // SPLITS)


class InOrder(fs.KeyedProcessFunction):
    """Keyed by split name: emits ``[name, seq]`` if ``seq`` is the last one plus 1, else a violation."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.last = ctx.value_state("last", default=-1)
        self.seen = 0

    def process(self, record, ctx):
        self.seen += 1
        if self.seen % SLOW_EVERY == 0:
            time.sleep(0.001)
        name, seq = record
        last = self.last.value()
        self.last.update(seq)
        if seq == last + 1:
            yield [name, seq]
        else:
            yield ["violation", name, last, seq]


def sequences(output: Path, *, parallelism: int = PARALLELISM) -> fs.Dataflow:
    flow = fs.Dataflow("sequences", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(sequence_record, RECORDS, splits=SPLITS, name="sequences"), uid="sequences")
         .key_by(lambda record: record[0])
         .process(InOrder(), uid="in-order")
         .sink(fs.FileSink(output), uid="out"))
    return flow


def run_sequences(
    dirs, settings: dict, failpoints: fs.Failpoints | None = None, *, restart=FAST_RESTART, executor: str | None = None,
    **checkpoint_settings,
) -> fs.JobResult:
    """The sequences job with the ``fs.CheckpointOptions`` fields of ``settings`` (its mode) and
    ``checkpoint_settings``."""
    return fs.run(
        sequences(dirs.output),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, **settings,
                                         **checkpoint_settings),
        recovery=fs.RecoveryOptions(restart=restart),
        execution=fs.ExecutionOptions(batch_size=BATCH_SIZE, executor=executor),
        failpoints=failpoints,
    )


def assert_every_sequence_complete_once_and_in_order(output: Path) -> None:
    records = [tuple(r) for r in committed_values(output)]
    violations = [r for r in records if r[0] == "violation"]
    assert not violations, f"{len(violations)} records out of order, e.g. {violations[:5]}"
    expected = Counter((NAMES[i % SPLITS], i // SPLITS) for i in range(RECORDS))
    got = Counter(records)
    assert got == expected, (f"{sum((expected - got).values())} missing (e.g. {sorted(expected - got)[:5]}), "
                             f"{sum((got - expected).values())} twice (e.g. {sorted(got - expected)[:5]})")


def channel_bytes(result: fs.JobResult) -> dict[int, int]:
    """Checkpoint id → bytes of channel state it persisted, for every checkpoint completed in the run."""
    return {s.checkpoint_id: s.channel_state_bytes for s in result.checkpoint_stats}


def assert_restored_from_a_checkpoint_with_channel_state(result: fs.JobResult, input_records: int) -> int:
    """Every attempt after the first restored a checkpoint (id ≥ 1) that had persisted channel
    state, and the last one resumed from it (its sources read fewer than the ``input_records``);
    returns the first such id."""
    assert result.restarts >= 1, f"the job never restarted: {result}"
    assert_resumed(result, input_records)
    restored = result.restored_from[1:]
    assert restored and all(c is not None and c >= 1 for c in restored), f"restored_from={result.restored_from}"
    persisted = channel_bytes(result)
    assert all(persisted.get(c, 0) > 0 for c in restored), (
        f"restored from {restored}, but only these checkpoints had channel state: "
        f"{sorted(c for c, n in persisted.items() if n > 0)}"
    )
    return restored[0]


def completed_metadata(checkpoint_dir: Path) -> list:
    """The metadata of every completed checkpoint left in ``checkpoint_dir``, oldest first."""
    storage = LocalCheckpointStorage(checkpoint_dir)
    return [info.metadata for info in storage.list_checkpoints() if info.status == "completed"]


# ---- in-flight data under back-pressure -------------------------------------------------------------


@pytest.mark.parametrize("settings", CAPTURING_MODES)
def test_under_back_pressure_checkpoints_persist_in_flight_batches_and_the_output_equals_the_batch_result(
    settings, dirs,
):
    result = run_sequences(dirs, settings, retained=100)

    assert result.failures == [] and result.restarts == 0
    assert any(n > 0 for n in channel_bytes(result).values()), f"no channel state: {result.checkpoint_stats}"
    assert_every_sequence_complete_once_and_in_order(dirs.output)
    written_by = {p.name.split("-")[1] for p in dirs.output.iterdir() if not p.name.startswith(".")}
    assert written_by == {"0", "1"}, "both keyed tasks had records"
    assert_every_checkpoint_is_a_consistent_cut_of_the_sequences(dirs.checkpoints)


def assert_every_checkpoint_is_a_consistent_cut_of_the_sequences(checkpoint_dir: Path) -> None:
    """Read offline, every completed checkpoint is a consistent cut: for each split, the sequence
    numbers after the last one ``InOrder`` applied and before the reader's position are exactly those
    persisted as channel state, in channel order. The task state files hold channel state as
    ``{channel index: [pickled batch, ...]}``, as many bytes as the metadata says."""
    storage = LocalCheckpointStorage(checkpoint_dir)
    with_channel_state = 0
    for metadata in completed_metadata(checkpoint_dir):
        read: dict[str, int] = {}
        applied: dict[str, int] = {}
        in_flight: dict[str, list[int]] = {name: [] for name in NAMES}
        for task in metadata.tasks:
            state = decode_task_state(storage.read_state(task.handle)) if task.handle is not None else TaskStateFile()
            for split, position in (state.source or {}).items():
                k = int(split.removeprefix("gen-"))
                read[NAMES[k]] = (position - k) // SPLITS
            if "in-order" in state.operators:
                keyed = state.operators["in-order"]
                files = {key: str(storage.local_path(h)) for key, h in keyed.files.items()}
                applied.update(heap_snapshot_entries(dict(keyed.data), "last", files))
            channels = state.channels
            assert sum(len(b) for batches in channels.values() for b in batches) == task.channel_state_bytes
            assert set(channels) <= set(range(PARALLELISM)), (task, set(channels))
            for _, batches in sorted(channels.items()):
                for data in batches:
                    in_flight_batch = pickle.loads(data)
                    assert in_flight_batch, "an empty batch persisted"
                    for name, seq in in_flight_batch:
                        in_flight[name].append(seq)
        with_channel_state += any(in_flight.values())
        assert sorted(read) == sorted(NAMES), f"checkpoint {metadata.checkpoint_id}: source positions {read}"
        for name in NAMES:
            expected = list(range(applied.get(name, -1) + 1, read[name]))
            assert in_flight[name] == expected, (
                f"checkpoint {metadata.checkpoint_id}, split {name}: applied up to {applied.get(name, -1)}, "
                f"read up to {read[name] - 1}, in flight {in_flight[name][:3]}…{in_flight[name][-3:]}"
            )
    assert with_channel_state, "no retained checkpoint holds channel state in a task state file"


# ---- crashes while in-flight data is captured and while it is replayed --------------------------------


CAPTURE_CRASHES = [
    # Every task acknowledged checkpoint 3, with its channel state; its metadata is not written.
    pytest.param("coordinator.all_acks_before_metadata", "raise@3", id="all_acks_before_metadata"),
    # The last task of checkpoint 3 wrote its state file (channel state included) and does not ack.
    pytest.param("task.after_snapshot_before_ack", f"raise@{3 * TASKS}", id="after_snapshot_before_ack"),
]


@pytest.mark.parametrize(("failpoint", "action"), CAPTURE_CRASHES)
def test_a_crash_while_an_unaligned_checkpoint_completes_restores_the_previous_one_with_its_in_flight_data(
    failpoint, action, dirs,
):
    failpoints = fs.Failpoints({failpoint: action})

    result = run_sequences(dirs, UNALIGNED, failpoints)

    assert failpoints.fired(failpoint) == 1, f"{failpoint} was hit {failpoints.hits(failpoint)} times"
    assert result.restored_from[1] == 2, result.restored_from
    assert_restored_from_a_checkpoint_with_channel_state(result, RECORDS)
    assert_every_sequence_complete_once_and_in_order(dirs.output)


def test_a_crash_while_loading_restored_state_replays_the_same_channel_state_again(dirs):
    failpoints = fs.Failpoints({
        "coordinator.all_acks_before_metadata": "raise@3",
        # Hit only by tasks built from a checkpoint: the first one of the second attempt raises.
        "recovery.state_loaded": "raise@1",
    })

    result = run_sequences(dirs, UNALIGNED, failpoints)

    assert failpoints.fired("recovery.state_loaded") == 1
    assert result.restarts == 2, result.failures
    assert "recovery.state_loaded" in result.failures[1]
    assert result.restored_from[1:] == [2, 2]
    assert_restored_from_a_checkpoint_with_channel_state(result, RECORDS)
    assert_every_sequence_complete_once_and_in_order(dirs.output)


class CrashWhileReplaying(fs.Failpoints):
    """Failpoints that also raise on the ``nth`` batch fed through a chain while a restored task
    replays its channel state (a hit of ``operator.process`` from within the replay)."""

    def __init__(self, actions: dict[str, str], *, nth: int) -> None:
        super().__init__(actions)
        self.nth = nth
        self.replayed = 0
        self._count = threading.Lock()

    def hit(self, name: str) -> None:
        if name == "operator.process" and _replaying():
            with self._count:
                self.replayed += 1
                fire = self.replayed == self.nth
            if fire:
                raise fs.InjectedFailure(f"failpoint operator.process (replayed batch {self.nth})")
        super().hit(name)


def _replaying() -> bool:
    """True when called from within a task's replay of channel state (``_replay_channel_state``);
    should the replay be renamed, the crash never fires and the test fails on its first assertion."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "_replay_channel_state":
            return True
        frame = frame.f_back
    return False


def test_a_crash_in_the_middle_of_replaying_channel_state_loses_nothing_and_replays_nothing_twice(dirs):
    # The first attempt crashes before checkpoint 3 completes; the second replays the channel state
    # of checkpoint 2 and crashes on its third replayed batch, after two were processed and emitted.
    # Threads: the failpoints count replayed batches in this process's memory.
    failpoints = CrashWhileReplaying({"coordinator.all_acks_before_metadata": "raise@3"}, nth=3)

    result = run_sequences(dirs, UNALIGNED, failpoints, executor="threads")

    assert len(result.failures) == 2 and "replayed batch 3" in result.failures[1], result.failures
    assert failpoints.replayed > 3, "the third attempt replayed the channel state again"
    assert result.restored_from[1:] == [2, 2]
    assert_restored_from_a_checkpoint_with_channel_state(result, RECORDS)
    assert_every_sequence_complete_once_and_in_order(dirs.output)


# ---- the bound on in-flight data --------------------------------------------------------------------


def test_in_flight_data_beyond_the_bound_declines_checkpoints_and_the_final_aligned_one_commits_everything(
    dirs, caplog,
):
    with caplog.at_level(logging.INFO, logger="flowstate"):
        result = run_sequences(dirs, UNALIGNED, max_inflight_bytes=100, tolerable_failures=1000, retained=100)

    assert result.failures == [] and result.restarts == 0
    assert result.checkpoints_failed > 0
    logged = [r.getMessage() for r in caplog.records if r.name == "flowstate"]
    declined = [m for m in logged if " declined checkpoint " in m and "(max_inflight_bytes)" in m]
    assert declined and all("more than 100 bytes in flight" in m for m in declined), declined
    # A barrier that arrives after the bound was crossed still hands over the batches it overtook:
    # they are not recorded, and the checkpoint is not declined a second time.
    by_task = Counter(re.match(r"task (\S+) declined checkpoint (\d+):", m).groups() for m in declined)
    assert max(by_task.values()) == 1, f"a task declined a checkpoint more than once: {by_task}"
    metadata = completed_metadata(dirs.checkpoints)
    assert metadata and metadata[-1].final
    assert all(t.channel_state_bytes <= 100 for m in metadata for t in m.tasks), "a task persisted more than the bound"
    assert_every_sequence_complete_once_and_in_order(dirs.output)


# ---- rescaling ---------------------------------------------------------------------------------------


def crash_with_channel_state_in_checkpoint_2(dirs) -> None:
    with pytest.raises(fs.JobFailedError):
        run_sequences(dirs, UNALIGNED, fs.Failpoints({"coordinator.all_acks_before_metadata": "raise@3"}),
                      restart=fs.NoRestart())
    (latest,) = completed_metadata(dirs.checkpoints)
    assert latest.checkpoint_id == 2 and sum(t.channel_state_bytes for t in latest.tasks) > 0, latest


@pytest.mark.parametrize("parallelism", [1, 3])
def test_channel_state_restored_at_another_parallelism_is_replayed_by_the_tasks_that_own_its_keys(dirs, parallelism):
    crash_with_channel_state_in_checkpoint_2(dirs)

    resumed = fs.run(
        sequences(dirs.output, parallelism=parallelism),
        checkpoints=fs.CheckpointOptions(mode="unaligned", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(batch_size=BATCH_SIZE),
    )

    assert resumed.restored_from == [2]
    assert_every_sequence_complete_once_and_in_order(dirs.output)


def test_channel_state_whose_inputs_changed_is_refused_naming_the_operator_chain(dirs):
    crash_with_channel_state_in_checkpoint_2(dirs)
    changed = fs.Dataflow("sequences", parallelism=PARALLELISM)
    (changed.source(fs.GeneratorSource(sequence_record, RECORDS, splits=SPLITS, name="sequences"), uid="sequences")
            .map(lambda record: record, uid="relay", parallelism=3)
            .key_by(lambda record: record[0])
            .process(InOrder(), uid="in-order")
            .sink(fs.FileSink(dirs.output), uid="out"))

    with pytest.raises(fs.ConfigError, match=r"in-flight records .* of operator chain 'in-order', whose inputs changed"):
        fs.run(
            changed,
            checkpoints=fs.CheckpointOptions(mode="unaligned", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(allow_non_restored_state=True),
            execution=fs.ExecutionOptions(batch_size=BATCH_SIZE),
        )

    # The refusal left the checkpoint as it was: the job as it was resumes from it.
    resumed = run_sequences(dirs, UNALIGNED)
    assert resumed.restored_from == [2]
    assert_every_sequence_complete_once_and_in_order(dirs.output)


# ---- bank transfers: the consistent-cut audit --------------------------------------------------------


def run_bank(dirs, settings: dict, failpoints: fs.Failpoints | None = None, *, parallelism: int = 2) -> fs.JobResult:
    return fs.run(
        bank.bank(dirs.output, TRANSFERS, parallelism=parallelism),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, retained=100, **settings),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(batch_size=BATCH_SIZE),
        failpoints=failpoints,
    )


def assert_bank_output_and_final_money(dirs, cuts: list[bank.Cut]) -> None:
    assert Counter(committed_values(dirs.output)) == Counter(range(TRANSFERS)), "every transfer credited once"
    final = cuts[-1]
    assert final.final and final.money() == bank.final_money(TRANSFERS)


@pytest.mark.parametrize(("settings", "parallelism"), [
    pytest.param(UNALIGNED, 2, id="unaligned"),
    # Three input channels per task: a channel whose barrier arrived stops being recorded while
    # the others still are.
    pytest.param(UNALIGNED, 3, id="unaligned-parallelism_3"),
    pytest.param({"mode": "exactly_once"}, 2, id="exactly_once"),
    pytest.param(SWITCHING, 2, id="exactly_once-alignment_timeout"),
])
def test_money_is_conserved_in_every_retained_checkpoint_of_the_bank(settings, parallelism, dirs):
    result = run_bank(dirs, settings, parallelism=parallelism)

    cuts = bank.read_cuts(dirs.checkpoints)
    assert len(cuts) == result.checkpoints_completed >= 3, "every completed checkpoint is retained"
    assert [problem for cut in cuts for problem in bank.audit(cut, TRANSFERS)] == []
    if settings is UNALIGNED:
        assert any(cut.credits_in_flight for cut in cuts), "no checkpoint caught a credit in flight"
        assert any(cut.transfers_in_flight for cut in cuts), "no checkpoint caught a transfer in flight"
    if settings == {"mode": "exactly_once"}:
        assert not any(cut.credits_in_flight or cut.transfers_in_flight for cut in cuts)
    assert_bank_output_and_final_money(dirs, cuts)


def test_the_bank_audit_fails_a_checkpoint_read_without_its_channel_state(dirs):
    run_bank(dirs, UNALIGNED)
    cuts = bank.read_cuts(dirs.checkpoints)
    with_credits = [cut for cut in cuts if bank.total_in_flight(cut) > 0]
    with_transfers = [cut for cut in cuts if cut.transfers_in_flight]
    assert with_credits and with_transfers, "no checkpoint had channel state to drop"

    for cut in with_credits:
        assert bank.audit(cut, TRANSFERS) == []
        problems = bank.audit(replace(cut, credits_in_flight=()), TRANSFERS)
        short = bank.OPENING_BALANCE * len(bank.ACCOUNTS) - bank.total_in_flight(cut)
        assert any(p.startswith(f"checkpoint {cut.checkpoint_id}: {short} in the accounts") for p in problems), problems
    for cut in with_transfers:
        problems = bank.audit(replace(cut, transfers_in_flight=()), TRANSFERS)
        assert any(" paid " in p for p in problems), problems


def test_money_is_conserved_across_a_restore_from_an_unaligned_checkpoint_of_the_bank(dirs):
    failpoints = fs.Failpoints({"coordinator.all_acks_before_metadata": "raise@3"})

    result = run_bank(dirs, UNALIGNED, failpoints)

    assert failpoints.fired("coordinator.all_acks_before_metadata") == 1
    restored = assert_restored_from_a_checkpoint_with_channel_state(result, TRANSFERS)
    cuts = bank.read_cuts(dirs.checkpoints)
    assert restored in [cut.checkpoint_id for cut in cuts]
    assert any(cut.checkpoint_id > restored for cut in cuts), "checkpoints were taken after the restore"
    assert [problem for cut in cuts for problem in bank.audit(cut, TRANSFERS)] == []
    assert_bank_output_and_final_money(dirs, cuts)
