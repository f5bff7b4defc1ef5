"""Sources and sinks: the ports through which a job reads and writes the outside world.

**Sources** are split into *splits* (a file, a partition, a generator stream). A source lists its
splits deterministically; subtask ``i`` of ``p`` reads the splits at positions ``i, i + p, …``.
Recovery symmetry: a reader is built from ``resume_state`` and its ``snapshot()`` names, for every
split it owns, the position of the **next** record to read (never the last one read). Everything a
reader does is derived from its resume state.

**Sinks** build one writer per subtask. A transactional writer takes part in two-phase commit:
``pre_commit`` on the barrier, ``commit`` when that checkpoint completes, and, when built from a
resume state, it first commits what that state names and deletes its own uncommitted leftovers.

**Assignment**: subtask ``i`` of ``p`` reads ``splits()[i::p]``, unless the source is an
``AssigningSource``: then it reads the splits whose ``split_owner(split, p)`` is ``i``, a function of
the split alone, so that a split found while running (a partition added to a topic) has the same
owner in every subtask and after every restore (``assigned_splits``, ``open_reader``).

**Rescaling** (a restore at another parallelism): a source's positions are reassigned split by
split, so a reader's snapshot must map split ids to positions. A sink whose writers have state may
define ``redistribute_state(states, parallelism) -> list`` (see ``RescalableSink``): the resume
states of the new writers from those of the old ones; without it the sink is only restored at its
old parallelism.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class SourceReader(Protocol):
    def poll(self, max_records: int) -> list[Any] | None:
        """Up to ``max_records`` records; ``[]`` when none is available right now; ``None`` once every
        split of this reader is exhausted (after which it is never called again). Must return within
        about 0.1 s so that the task can serve checkpoint triggers."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Split id → position of the next record to read. Must be picklable and must not share
        mutable objects with the reader."""
        ...

    def close(self) -> None:
        """Release files and sockets. Guaranteed to be called once, and nothing after it."""
        ...


SplitEvent = tuple[str, list[Any], bool]
"""One event of ``SplitReader.poll_splits``: ``(split, records, finished)``."""


class SplitReader(SourceReader, Protocol):
    """A reader that says which split each record comes from, for per-split watermarks
    (``flowstate.time.watermarks`` rules 1-5a). A reader of several splits at once (Kafka partitions,
    Redis streams, NATS subjects) is one; the records of a split stay in their order."""

    def poll_splits(self, max_records: int) -> list[SplitEvent] | None:
        """What ``poll`` would return, as events in order (at most ``max_records`` records in all):
        ``(split, records, False)``: records of one split; ``(split, [], False)``: ``split`` is read
        from now on (announced before its first records, so that it holds the watermark back until it
        produces or is idle); ``(split, [], True)``: ``split`` is exhausted and leaves the watermark.
        ``None`` once every split is exhausted. Positions advance as by ``poll``."""
        ...


class Source(Protocol):
    """What ``Dataflow.source`` takes: a set of splits, each read by one subtask's reader."""

    @property
    def name(self) -> str:
        """The default name of the source operator."""
        ...

    @property
    def replayable(self) -> bool:
        """True when a reader rebuilt from a snapshot reads again exactly what followed it."""
        ...

    def splits(self) -> list[str]:
        """Every split id of this source, in a deterministic order."""
        ...

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> SourceReader:
        """A reader for ``splits``. ``resume_state`` maps split id → position (from ``snapshot()``);
        a split missing from it starts at its beginning."""
        ...


class AssigningSource(Source, Protocol):
    """A source that says which subtask reads each split, and whose readers may find new splits while
    they run (``KafkaSource``: partitions added to a topic)."""

    def split_owner(self, split: str, parallelism: int) -> int:
        """The subtask (``0 ≤ i < parallelism``) that reads ``split``: a function of its arguments only."""
        ...

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None, *,
                     subtask: int | None = None, parallelism: int | None = None) -> SourceReader:
        """As ``Source.build_reader``; with ``subtask`` and ``parallelism`` the reader also reads every
        split it finds later whose owner it is (and puts it in its snapshots), without them it reads
        ``splits`` only."""
        ...


def assigned_splits(source: Any, splits: Sequence[str], subtask: int, parallelism: int) -> list[str]:
    """Of ``splits`` (the source's, in order), those subtask ``subtask`` of ``parallelism`` reads."""
    owner = getattr(source, "split_owner", None)
    if owner is None:
        return list(splits[subtask::parallelism])
    return [s for s in splits if owner(s, parallelism) == subtask]


def open_reader(source: Any, subtask: int, parallelism: int, resume_state: dict[str, Any] | None) -> SourceReader:
    """The reader of one subtask: its assigned splits, and its subtask for an ``AssigningSource``."""
    splits = assigned_splits(source, source.splits(), subtask, parallelism)
    if hasattr(source, "split_owner"):
        return source.build_reader(splits, resume_state, subtask=subtask, parallelism=parallelism)
    return source.build_reader(splits, resume_state)


class SinkWriter(Protocol):
    def write_batch(self, records: list[Any]) -> None:
        """Write records in order. Nothing written here is visible until committed (transactional
        writers) or it may be visible at once (at-least-once writers)."""
        ...

    def pre_commit(self, checkpoint_id: int) -> None:
        """Barrier ``checkpoint_id``: make what was written since the last barrier durable and
        pending under that id. Called on the task thread, before ``snapshot``."""
        ...

    def snapshot(self) -> Any:
        """State to restore this writer: every pending, not-yet-committed output. Picklable."""
        ...

    def commit(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` completed: publish every output pending under an id ≤ it.
        Idempotent."""
        ...

    def finish(self) -> None:
        """End of input in a job without checkpoints: publish everything written."""
        ...

    def close(self) -> None:
        """Release resources without publishing anything more. Called once, last."""
        ...


class Sink(Protocol):
    """What ``Stream.sink`` takes: it builds one writer per subtask."""

    @property
    def name(self) -> str:
        """The default name of the sink operator."""
        ...

    @property
    def transactional(self) -> bool:
        """True for two-phase-commit sinks: output is exactly-once under an exactly-once mode."""
        ...

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> SinkWriter:
        """A writer for one subtask. With ``resume_state`` (from ``snapshot()`` of the restored, complete
        checkpoint), the writer first commits what it names, idempotently, and removes this
        subtask's uncommitted leftovers."""
        ...


class RescalableSink(Sink, Protocol):
    """A sink whose writer states can be restored at another parallelism."""

    def redistribute_state(self, states: Sequence[Any | None], parallelism: int) -> list[Any]:
        """The resume states of ``parallelism`` new writers from the snapshots of every old writer
        (index = old subtask; ``None`` for one without state). Every committable of the old states
        must be committed by exactly one new writer, and their leftovers cleaned up by some writer."""
        ...


class AcknowledgingReader(SourceReader, Protocol):
    """A reader that tells its broker what the job has consumed, but only once it is safe.

    Rules (in this order):

    1. On a checkpoint trigger the task calls ``snapshot_for(checkpoint_id)`` instead of ``snapshot()``:
       it returns the same positions and remembers, under ``checkpoint_id``, what was read up to them.
    2. ``notify_complete(checkpoint_id)``: that checkpoint is durable; the reader may now acknowledge
       (XACK, commit a consumer group's offsets, …) everything it remembered under an id ≤ it.
       Acknowledging earlier would lose records on a restore from an older checkpoint.
    3. ``notify_aborted(checkpoint_id)``: nothing is acknowledged; what it remembered under that id is
       acknowledged with the next checkpoint that completes.

    Acknowledgements are for monitoring and retention only: a reader always resumes from the
    positions in the restored checkpoint, never from what the broker was told.
    """

    def snapshot_for(self, checkpoint_id: int) -> dict[str, Any]: ...

    def notify_complete(self, checkpoint_id: int) -> None: ...

    def notify_aborted(self, checkpoint_id: int) -> None: ...
