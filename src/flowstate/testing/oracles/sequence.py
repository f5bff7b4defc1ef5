"""The sequence workload: each source split emits ``(source, seq)``; nothing may be lost, repeated or
reordered.

The job: a ``GeneratorSource`` of ``splits`` splits, record *i* being ``(f"s{i % splits}", i //
splits)`` → ``key_by(source)`` → ``Track`` → ``FileSink``. The records of one source are read in
order by one reader and travel on one channel to one keyed task, so ``Track`` sees each source's
sequence numbers in order. It keeps how many records of the source it has seen in keyed value state
and emits ``[source, seq]``; when that count is not ``seq + 1`` (its state saw another number of
records than the sequence says) it also emits ``["miscounted", source, seq, count]``. The output
of a run without failures is therefore every ``[source, seq]`` once. ``Track`` sleeps a millisecond
every ``SLOW_EVERY`` records and the odd sources are slow to read, so channels fill up, barriers
queue behind data and unaligned checkpoints find records in flight. With ``mutable_state=True``,
``TrackInDict`` keeps the count in a dict that it changes in place and stores again (``acc =
state.value() or {}; acc[source] += 1; state.update(acc)``), as user code often does: a snapshot that
shares that dict with the task holds effects of records after its barrier.

The output checker reads the committed files (visible JSON Lines files named
``{prefix}-{subtask}-{n}{suffix}``; files of a subtask were committed in the order of *n*) and counts
per source:

- **lost**: sequence numbers that never appear;
- **duplicated**: appearances beyond the first;
- **out of order**: first appearances that come after the first appearance of a larger number;
- **miscounted**: ``miscounted`` records, i.e. records counted by a state that had seen another
  number of records of their source;
- **unexpected**: lines that are not a record of this workload.

Exactly-once modes allow none of these. ``at_least_once`` allows duplicates and miscounts (a replay
counts some records twice: a task snapshots after records that followed the barrier, and those are
read again) but nothing lost and nothing out of order.

The checkpoint checker reads every completed checkpoint (``flowstate.testing.oracles.checkpoints``)
and checks it as a consistent cut: per source, the records its reader had read (below the stored
position) are the count in ``Track``'s state followed, in order, by the records persisted as
``Track``'s channel state — nothing more, nothing less. Keyed state it cannot read offline (RocksDB
files) leaves only the positions to check. The records the metadata says the sources had read
(``source_records``) must be those the positions say.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flowstate as fs
from flowstate.clock import SystemClock
from flowstate.testing.oracles import EXACTLY_ONCE_MODES, Oracle
from flowstate.testing.oracles.checkpoints import NotHeapState, Unreadable, completed_checkpoints

COUNT = 20_000
SPLITS = 4
SLOW_EVERY = 16
"""``Track`` sleeps 1 ms every this many records."""
SLOW_READ_EVERY = 8
"""The odd sources sleep 1 ms every this many records they read."""
TRACK_UID = "track"
SOURCE_RECORDS = "source_records"
"""``extra`` of a checkpoint's metadata: the records its sources had read (restated, not imported)."""
MISCOUNTED = "miscounted"
COUNT_STATE = "count"
DICT_STATE = "counts"
"""``TrackInDict``'s value state: source → count, one dict changed in place."""


def source_name(k: int) -> str:
    return f"s{k}"


def _sleep(seconds: float) -> None:
    SystemClock().sleep(seconds)


def record(i: int, splits: int = SPLITS) -> tuple[str, int]:
    """Record ``i``: ``(source name, sequence number within the source)``; odd sources read slowly."""
    k = i % splits
    if k % 2 and (i // splits) % SLOW_READ_EVERY == 0:
        _sleep(0.001)
    return (source_name(k), i // splits)


class _Records:
    """``record`` with the number of splits bound (a callable the generator calls with ``i``)."""

    def __init__(self, splits: int) -> None:
        self.splits = splits

    def __call__(self, i: int) -> tuple[str, int]:
        return record(i, self.splits)


class Track(fs.KeyedProcessFunction):
    """Keyed by source: counts the records of the source and emits ``[source, seq]``, plus
    ``["miscounted", source, seq, count]`` when the count is not ``seq + 1``. Slow."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state(COUNT_STATE, default=0)
        self.seen = 0

    def process(self, value: tuple[str, int], ctx: fs.RuntimeContext) -> Iterable[list[Any]]:
        self.seen += 1
        if self.seen % SLOW_EVERY == 0:
            _sleep(0.001)
        source, seq = value
        n = self._counted(source)
        yield [source, seq]
        if n != seq + 1:
            yield [MISCOUNTED, source, seq, n]

    def _counted(self, source: str) -> int:
        n: int = self.count.value() + 1
        self.count.update(n)
        return n


class TrackInDict(Track):
    """``Track`` keeping its count in a dict changed in place, then stored again."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.counts = ctx.value_state(DICT_STATE)
        self.seen = 0

    def _counted(self, source: str) -> int:
        acc = self.counts.value() or {}
        acc[source] = acc.get(source, 0) + 1
        self.counts.update(acc)
        return int(acc[source])


def sequence_job(output: str | os.PathLike[str], *, count: int = COUNT, splits: int = SPLITS,
                 parallelism: int = 2, sink: Any = None, mutable_state: bool = False) -> fs.Dataflow:
    """The sequence dataflow over records ``0 .. count - 1``, committing to ``FileSink(output)`` (or
    to ``sink``: a test of the checkers can give a sink that breaks exactly-once); counting in a dict
    changed in place with ``mutable_state``."""
    flow = fs.Dataflow("sequence", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(_Records(splits), count, splits=splits, name="sequence"), uid="sequence")
         .key_by(lambda r: r[0])
         .process(TrackInDict() if mutable_state else Track(), uid=TRACK_UID)
         .sink(sink if sink is not None else fs.FileSink(output), uid="out"))
    return flow


def job() -> fs.Dataflow:
    """The workload with its defaults, writing to ``sequence-out/``: ``flowstate chaos
    flowstate.testing.oracles.sequence:job``."""
    return sequence_job("sequence-out")


def mutable_job() -> fs.Dataflow:
    """The workload counting in a dict changed in place, writing to ``sequence-out/``."""
    return sequence_job("sequence-out", mutable_state=True)


# ---- the output checker -----------------------------------------------------------------------------


@dataclass
class SourceCounts:
    expected: int
    seen: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    miscounted: int = 0


@dataclass
class SequenceCheck:
    """What the output checker found, per source."""

    sources: dict[str, SourceCounts]
    unexpected: list[str] = field(default_factory=list)
    """Lines that are not records of the workload (at most a few are kept; see ``unexpected_count``)."""
    unexpected_count: int = 0

    def total(self, what: str) -> int:
        return sum(getattr(counts, what) for counts in self.sources.values())

    def problems(self, mode: str) -> list[str]:
        """What breaks the guarantee of ``mode`` (see the module docstring)."""
        exactly_once = mode in EXACTLY_ONCE_MODES
        forbidden = ["lost", "out_of_order"] + (["duplicated", "miscounted"] if exactly_once else [])
        problems = []
        for name, counts in sorted(self.sources.items()):
            bad = [f"{getattr(counts, what)} {what.replace('_', ' ')}" for what in forbidden if getattr(counts, what)]
            if bad:
                problems.append(f"source {name}: {', '.join(bad)} of {counts.expected} records")
        if self.unexpected_count:
            problems.append(f"{self.unexpected_count} unexpected lines, e.g. {self.unexpected[:3]}")
        return problems


def committed_lines(directory: str | os.PathLike[str], *, prefix: str = "part") -> Iterable[str]:
    """The lines of the committed files of a ``FileSink`` directory in commit order: per subtask,
    in the order of the files' sequence numbers. Hidden files (in progress, pending) are skipped."""
    pattern = re.compile(rf"{re.escape(prefix)}-([0-9]+)-([0-9]+)(\..*)?")
    files = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith("."):
            continue
        match = pattern.fullmatch(name)
        files.append(((int(match[1]), int(match[2])) if match else (1 << 62, 0), name))
    for _, name in sorted(files):
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            yield from (line.rstrip("\n") for line in f)


def check_output(directory: str | os.PathLike[str], *, count: int = COUNT, splits: int = SPLITS) -> SequenceCheck:
    """Count lost, duplicated, out-of-order, miscounted and unexpected records (module docstring)."""
    expected = {source_name(k): len(range(k, count, splits)) for k in range(splits)}
    result = SequenceCheck({name: SourceCounts(n) for name, n in expected.items()})
    first_seen: dict[str, set[int]] = defaultdict(set)
    highest: dict[str, int] = {}
    for line in committed_lines(directory):
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, list) and len(value) == 4 and value[0] == MISCOUNTED and value[1] in expected:
            result.sources[value[1]].miscounted += 1
            continue
        valid = (isinstance(value, list) and len(value) == 2 and value[0] in expected and type(value[1]) is int
                 and 0 <= value[1] < expected[value[0]])
        if not valid:
            result.unexpected_count += 1
            if len(result.unexpected) < 10:
                result.unexpected.append(line)
            continue
        source, seq = value
        counts = result.sources[source]
        counts.seen += 1
        if seq in first_seen[source]:
            counts.duplicated += 1
            continue
        first_seen[source].add(seq)
        if seq < highest.get(source, -1):
            counts.out_of_order += 1
        highest[source] = max(seq, highest.get(source, -1))
    for name, counts in result.sources.items():
        counts.lost = counts.expected - len(first_seen[name])
    return result


# ---- the checkpoint checker -------------------------------------------------------------------------


def check_checkpoints(root: str | os.PathLike[str], mode: str, *, splits: int = SPLITS) -> list[str]:
    """Every completed checkpoint under ``root`` is a consistent cut (module docstring). In
    ``at_least_once`` a checkpoint is not a consistent cut, and only unreadable ones are reported."""
    problems = []
    for checkpoint in completed_checkpoints(root):
        if isinstance(checkpoint, Unreadable):
            problems.append(checkpoint.reason)
            continue
        if mode not in EXACTLY_ONCE_MODES:
            continue
        name = f"checkpoint {checkpoint.checkpoint_id}"
        positions = checkpoint.source_positions()
        try:
            counts: dict[str, int] | None = checkpoint.keyed_entries(TRACK_UID, COUNT_STATE)
            for source, acc in checkpoint.keyed_entries(TRACK_UID, DICT_STATE).items():
                counts[source] = acc.get(source, 0)  # type: ignore[index]
        except NotHeapState:
            counts = None
        in_flight: dict[str, list[int]] = defaultdict(list)
        for _task, records in checkpoint.in_flight(TRACK_UID):
            for source, seq in records:
                in_flight[source].append(seq)
        read_in_total = 0
        for k in range(splits):
            source = source_name(k)
            position = positions.get(f"gen-{k}")
            if position is None:
                problems.append(f"{name}: no position for source {source}")
                continue
            read = (position - k) // splits
            read_in_total += read
            if counts is None:
                continue
            applied = counts.get(source, 0)
            if applied + len(in_flight[source]) != read or in_flight[source] != list(range(applied, read)):
                problems.append(f"{name}: source {source} had read {read} records; Track counted {applied} and "
                                f"{len(in_flight[source])} were in flight ({in_flight[source][:5]}…)")
        recorded = checkpoint.extra.get(SOURCE_RECORDS)
        if recorded is not None and recorded != read_in_total:
            problems.append(f"{name}: the metadata says the sources had read {recorded} records; their positions "
                            f"say {read_in_total}")
    return problems


def oracle(*, count: int = COUNT, splits: int = SPLITS) -> Oracle:
    """The sequence checks for the chaos runner (the job must commit through one ``FileSink``)."""

    def output(directories: Mapping[str, Path], mode: str) -> list[str]:
        problems = []
        for uid, directory in sorted(directories.items()):
            problems += [f"sink {uid}: {p}" for p in check_output(directory, count=count, splits=splits).problems(mode)]
        return problems

    return Oracle("sequence", output, lambda root, mode: check_checkpoints(root, mode, splits=splits))
