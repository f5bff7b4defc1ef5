"""The connector conformance kit: the checks every source and sink must pass, whoever wrote it.

A connector is done when it passes these against its real server. The kit drives readers and writers
directly, the way the runtime does (``flowstate.connectors.base``), and compares what they read or
published with the input; it knows nothing of any particular broker.

**Sources** (``check_source``): give a factory of a *bounded* source over a fixed input already in
place, and that input. Checks, each a function of ``SOURCE_CHECKS``:

- ``reads_everything_once``: one reader over every split reads the input exactly, then ``None``;
- ``recovery_symmetry_at_every_cut``: for every k, a reader that read k records and was snapshotted,
  and a reader rebuilt from that snapshot, together read the input exactly (the snapshot names the
  *next* record: an off-by-one loses or repeats one), and the snapshot is picklable and not changed
  by later reads;
- ``rescale_reassigns_split_positions``: positions taken at parallelism 1 resume at parallelism 2;
- ``acknowledges_only_after_completion`` (``AcknowledgingReader`` with an ``acknowledged`` probe):
  nothing is acknowledged before ``notify_complete`` of a checkpoint covering it, all of it after.

**Sinks** (``check_sink``): give a factory of fresh *targets* (a sink writing to a place of its own,
and a function reading back what is visible there) and the records to write. A script writes the
records in three checkpoints (write, ``pre_commit``, snapshot = the checkpoint completes, ``commit``).
Checks, each a function of ``SINK_CHECKS``:

- ``failure_free_run``: the output is the records, in order;
- ``nothing_visible_before_completion`` (transactional sinks): after pre-commit and snapshot, before
  commit, the checkpoint's records are not visible;
- ``crash_at_every_cut``: the script stopped after every step, then a writer built from the latest
  completed snapshot and a replay of the records after it: exactly the records (at-least-once sinks:
  every record at least once);
- ``crash_at_every_sink_failpoint``: the same with an injected failure at each hit of
  ``sink.mid_pre_commit`` and ``sink.mid_commit`` inside the writer;
- ``recommit_is_idempotent``: commit again, and build two more writers from the last snapshot: the
  output does not change;
- ``aborted_checkpoint_commits_with_the_next``: a checkpoint that never completes is committed by the
  next one;
- ``rescale_commits_every_pending_batch`` (sinks with ``redistribute_state``): two writers pre-commit,
  crash, restore as one: every record exactly once.
"""

from __future__ import annotations

import copy
import pickle
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flowstate import failpoints as fpn
from flowstate.failpoints import Failpoints, InjectedFailure


class ConformanceFailure(AssertionError):
    """A connector broke a rule of the kit; the message names the check and the cut."""


def _hashable(record: Any) -> Any:
    if isinstance(record, list):
        return tuple(_hashable(r) for r in record)
    if isinstance(record, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in record.items()))
    return record


def _difference(actual: Sequence[Any], expected: Sequence[Any]) -> str:
    got, want = Counter(map(_hashable, actual)), Counter(map(_hashable, expected))
    missing, extra = want - got, got - want
    return f"{sum(missing.values())} missing (e.g. {list(missing)[:3]}), {sum(extra.values())} extra (e.g. {list(extra)[:3]})"


def _same(actual: Sequence[Any], expected: Sequence[Any]) -> bool:
    return Counter(map(_hashable, actual)) == Counter(map(_hashable, expected))


# ---- sources --------------------------------------------------------------------------------------

MAX_EMPTY_POLLS = 200
"""Polls in a row that return ``[]`` before a bounded reader counts as stuck (each waits ~0.05 s)."""


def _drain(reader: Any, limit: int | None = None, batch: int = 1) -> tuple[list[Any], bool]:
    """Poll until ``limit`` records or the end; (records, ended)."""
    out: list[Any] = []
    empty = 0
    while limit is None or len(out) < limit:
        want = batch if limit is None else min(batch, limit - len(out))
        got = reader.poll(want)
        if got is None:
            return out, True
        if len(got) > want:
            raise ConformanceFailure(f"poll({want}) returned {len(got)} records")
        if not got:
            empty += 1
            if empty > MAX_EMPTY_POLLS:
                raise ConformanceFailure(f"the reader returned nothing for {MAX_EMPTY_POLLS} polls before "
                                         f"the end of a bounded input ({len(out)} records read)")
            continue
        empty = 0
        out.extend(got)
    return out, False


@dataclass(frozen=True)
class SourceCase:
    make_source: Callable[[], Any]
    """A fresh source object over the fixed, bounded input (called once per reader set)."""
    expected: Sequence[Any]
    acknowledged: Callable[[], int] | None = None
    """For an ``AcknowledgingReader``: how many records the broker holds as acknowledged."""


def reads_everything_once(case: SourceCase) -> None:
    source = case.make_source()
    reader = source.build_reader(source.splits(), None)
    try:
        records, ended = _drain(reader, batch=7)
        if not ended:
            raise ConformanceFailure("reads_everything_once: a bounded reader did not end with None")
    finally:
        reader.close()
    if not _same(records, case.expected):
        raise ConformanceFailure(f"reads_everything_once: {_difference(records, case.expected)}")


def recovery_symmetry_at_every_cut(case: SourceCase) -> None:
    n = len(case.expected)
    for cut in range(n + 1):
        source = case.make_source()
        first = source.build_reader(source.splits(), None)
        try:
            before, _ = _drain(first, cut)
            state = first.snapshot()
            frozen = copy.deepcopy(state)
            pickle.dumps(state)
            _drain(first, 1)
            if state != frozen:
                raise ConformanceFailure(f"recovery_symmetry at cut {cut}: the snapshot changed with a later read")
        finally:
            first.close()
        second = source.build_reader(source.splits(), copy.deepcopy(state))
        try:
            after, ended = _drain(second, batch=3)
        finally:
            second.close()
        if not ended or not _same(before + after, case.expected):
            raise ConformanceFailure(
                f"recovery_symmetry at cut {cut} (snapshot {state!r:.300}): {_difference(before + after, case.expected)}")


def rescale_reassigns_split_positions(case: SourceCase) -> None:
    source = case.make_source()
    splits = source.splits()
    one = source.build_reader(splits, None)
    try:
        before, _ = _drain(one, len(case.expected) // 2, batch=2)
        state = one.snapshot()
    finally:
        one.close()
    after: list[Any] = []
    for i in range(2):
        mine = splits[i::2]
        if not mine:
            continue
        reader = source.build_reader(mine, {s: state[s] for s in mine if s in state})
        try:
            got, ended = _drain(reader, batch=4)
        finally:
            reader.close()
        if not ended:
            raise ConformanceFailure("rescale: a reader did not end")
        after += got
    if not _same(before + after, case.expected):
        raise ConformanceFailure(f"rescale (state {state!r:.300}): {_difference(before + after, case.expected)}")


def acknowledges_only_after_completion(case: SourceCase) -> None:
    if case.acknowledged is None:
        return
    source = case.make_source()
    reader = source.build_reader(source.splits(), None)
    try:
        half = len(case.expected) // 2
        _drain(reader, half, batch=3)
        reader.snapshot_for(1)
        _drain(reader, batch=3)
        reader.snapshot_for(2)
        if (acked := case.acknowledged()) != 0:
            raise ConformanceFailure(f"acknowledgement: {acked} records acknowledged before any checkpoint completed")
        reader.notify_aborted(1)
        if (acked := case.acknowledged()) != 0:
            raise ConformanceFailure(f"acknowledgement: {acked} records acknowledged after an abort")
        reader.notify_complete(1)
        if (acked := case.acknowledged()) != half:
            raise ConformanceFailure(f"acknowledgement: {acked} acknowledged after checkpoint 1 completed, "
                                     f"expected the {half} it covers")
        reader.notify_complete(2)
        if (acked := case.acknowledged()) != len(case.expected):
            raise ConformanceFailure(f"acknowledgement: {acked} of {len(case.expected)} acknowledged after the last completed")
    finally:
        reader.close()


SOURCE_CHECKS: dict[str, Callable[[SourceCase], None]] = {
    "reads_everything_once": reads_everything_once,
    "recovery_symmetry_at_every_cut": recovery_symmetry_at_every_cut,
    "rescale_reassigns_split_positions": rescale_reassigns_split_positions,
    "acknowledges_only_after_completion": acknowledges_only_after_completion,
}


def check_source(case: SourceCase) -> list[str]:
    """Run every source check; the names of the checks passed (a failure raises)."""
    for check in SOURCE_CHECKS.values():
        check(case)
    return list(SOURCE_CHECKS)


# ---- sinks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkTarget:
    sink: Any
    read: Callable[[], list[Any]]
    """Everything visible at the target now, in the order a reader of it would see it."""


@dataclass(frozen=True)
class SinkCase:
    make_target: Callable[[], SinkTarget]
    """A sink writing to a target of its own (a new stream, topic or directory) on every call."""
    records: Sequence[Any]
    exactly_once: bool = True


_CHECKPOINTS = 3


def _batches(records: Sequence[Any]) -> list[list[Any]]:
    k = len(records)
    bounds = [round(i * k / _CHECKPOINTS) for i in range(_CHECKPOINTS + 1)]
    return [list(records[bounds[i]:bounds[i + 1]]) for i in range(_CHECKPOINTS)]


# One checkpoint is four steps: write its records, pre-commit, snapshot (= it completes), commit.
_STEPS = ("write", "pre_commit", "complete", "commit")


class _Crash(Exception):
    pass


def _run_script(sink: Any, records: Sequence[Any], *, stop_after: int | None = None,
                failpoints: Failpoints | None = None) -> list[Any]:
    """Run the script from scratch; return the snapshots of the completed checkpoints (index = id - 1).
    ``stop_after``: crash after that many steps. An injected failure also crashes."""
    batches = _batches(records)
    completed: list[Any] = []
    writer = sink.build_writer(0, 1, None)
    if failpoints is not None and hasattr(writer, "attach_failpoints"):
        writer.attach_failpoints(failpoints)
    step = 0
    try:
        for cid, batch in enumerate(batches, start=1):
            for name in _STEPS:
                if stop_after is not None and step >= stop_after:
                    raise _Crash
                step += 1
                if name == "write":
                    writer.write_batch(list(batch))
                elif name == "pre_commit":
                    writer.pre_commit(cid)
                elif name == "complete":
                    completed.append(copy.deepcopy(writer.snapshot()))
                else:
                    writer.commit(cid)
    except (_Crash, InjectedFailure):
        pass
    finally:
        writer.close()
    return completed


def _resume(sink: Any, records: Sequence[Any], completed: list[Any]) -> None:
    """Restore from the latest completed snapshot and replay the checkpoints after it to the end."""
    batches = _batches(records)
    state = completed[-1] if completed else None
    writer = sink.build_writer(0, 1, copy.deepcopy(state))
    try:
        for cid in range(len(completed) + 1, len(batches) + 1):
            writer.write_batch(list(batches[cid - 1]))
            # Ids continue above those of the crashed run: a new attempt never reuses a completed id.
            writer.pre_commit(cid + 100)
            writer.snapshot()
            writer.commit(cid + 100)
    finally:
        writer.close()


def _expect(case: SinkCase, output: list[Any], what: str) -> None:
    if case.exactly_once:
        if list(map(_hashable, output)) != list(map(_hashable, case.records)):
            raise ConformanceFailure(f"{what}: {_difference(output, case.records)} (or out of order)")
    else:
        missing = Counter(map(_hashable, case.records)) - Counter(map(_hashable, output))
        if missing:
            raise ConformanceFailure(f"{what}: {sum(missing.values())} records lost, e.g. {list(missing)[:3]}")


def failure_free_run(case: SinkCase) -> None:
    target = case.make_target()
    completed = _run_script(target.sink, case.records)
    if len(completed) != _CHECKPOINTS:
        raise ConformanceFailure("failure_free_run: the script did not run to its end")
    _expect(case, target.read(), "failure_free_run")


def nothing_visible_before_completion(case: SinkCase) -> None:
    target = case.make_target()
    if not case.exactly_once or not target.sink.transactional:
        return
    # Stop after write, pre-commit and snapshot of checkpoint 1: nothing may be visible.
    _run_script(target.sink, case.records, stop_after=3)
    if visible := target.read():
        raise ConformanceFailure(f"nothing_visible_before_completion: {len(visible)} records visible before commit")


def crash_at_every_cut(case: SinkCase) -> None:
    for stop in range(len(_STEPS) * _CHECKPOINTS + 1):
        target = case.make_target()
        completed = _run_script(target.sink, case.records, stop_after=stop)
        _resume(target.sink, case.records, completed)
        _expect(case, target.read(), f"crash after step {stop} of the script, restored from checkpoint {len(completed)}")


def crash_at_every_sink_failpoint(case: SinkCase) -> None:
    for point in (fpn.SINK_MID_PRE_COMMIT, fpn.SINK_MID_COMMIT):
        nth = 1
        while True:
            target = case.make_target()
            failpoints = Failpoints({point: f"raise@{nth}"})
            completed = _run_script(target.sink, case.records, failpoints=failpoints)
            _resume(target.sink, case.records, completed)
            _expect(case, target.read(), f"failure at hit {nth} of {point}, restored from checkpoint {len(completed)}")
            if not failpoints.fired(point):
                break  # the script has fewer hits than nth: every hit was tried
            nth += 1


def recommit_is_idempotent(case: SinkCase) -> None:
    target = case.make_target()
    batches = _batches(case.records)
    writer = target.sink.build_writer(0, 1, None)
    try:
        for cid, batch in enumerate(batches, start=1):
            writer.write_batch(list(batch))
            writer.pre_commit(cid)
            state = copy.deepcopy(writer.snapshot())
            writer.commit(cid)
            writer.commit(cid)
    finally:
        writer.close()
    for _ in range(2):
        again = target.sink.build_writer(0, 1, copy.deepcopy(state))
        again.commit(len(batches))
        again.close()
    _expect(case, target.read(), "re-commit after restore")


def aborted_checkpoint_commits_with_the_next(case: SinkCase) -> None:
    target = case.make_target()
    batches = _batches(case.records)
    writer = target.sink.build_writer(0, 1, None)
    try:
        for cid, batch in enumerate(batches, start=1):
            writer.write_batch(list(batch))
            writer.pre_commit(cid)
            writer.snapshot()
            if cid != 2:  # checkpoint 2 is aborted: no commit
                writer.commit(cid)
    finally:
        writer.close()
    _expect(case, target.read(), "an aborted checkpoint followed by a completed one")


def rescale_commits_every_pending_batch(case: SinkCase) -> None:
    target = case.make_target()
    sink = target.sink
    if not case.exactly_once or not hasattr(sink, "redistribute_state"):
        return
    batches = _batches(case.records)
    writers = [sink.build_writer(i, 2, None) for i in range(2)]
    states = []
    try:
        writers[0].write_batch(batches[0])
        writers[1].write_batch(batches[1])
        for writer in writers:
            writer.pre_commit(1)
            states.append(copy.deepcopy(writer.snapshot()))
    finally:
        for writer in writers:
            writer.close()
    (state,) = sink.redistribute_state(states, 1)
    writer = sink.build_writer(0, 1, state)
    try:
        writer.write_batch(batches[2])
        writer.pre_commit(2)
        writer.snapshot()
        writer.commit(2)
    finally:
        writer.close()
    output = target.read()
    if not _same(output, case.records):
        raise ConformanceFailure(f"rescale 2 → 1: {_difference(output, case.records)}")


SINK_CHECKS: dict[str, Callable[[SinkCase], None]] = {
    "failure_free_run": failure_free_run,
    "nothing_visible_before_completion": nothing_visible_before_completion,
    "crash_at_every_cut": crash_at_every_cut,
    "crash_at_every_sink_failpoint": crash_at_every_sink_failpoint,
    "recommit_is_idempotent": recommit_is_idempotent,
    "aborted_checkpoint_commits_with_the_next": aborted_checkpoint_commits_with_the_next,
    "rescale_commits_every_pending_batch": rescale_commits_every_pending_batch,
}


def check_sink(case: SinkCase) -> list[str]:
    """Run every sink check; the names of the checks passed (a failure raises)."""
    for check in SINK_CHECKS.values():
        check(case)
    return list(SINK_CHECKS)
