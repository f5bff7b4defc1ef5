"""The source task: polls a source reader instead of an input gate, and injects a barrier where the
coordinator triggers a checkpoint (Step 1 of ``flowstate.task.task`` takes the reader's position
between two batches). A final barrier that arrives before the end of the input is a stop: the source
reads nothing after it, ends its input when the checkpoint completes, and reads on if it is aborted.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from flowstate import failpoints as fpn
from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.ids import CheckpointId
from flowstate.config import Mode
from flowstate.task.messages import (
    Aborted,
    Complete,
    SourceEnded,
    Trigger,
)
from flowstate.task.task import TICK_EVERY, Task
from flowstate.time.watermarks import (
    FINAL_WATERMARK,
)


class SplitWatermarks(Protocol):
    """What a source task tells an operator that generates watermarks per source split
    (``TimestampsOperator``): the split of the batch it is about to process, and the splits that
    start, end, or are no longer read at all."""

    current_split: str | None

    def start_split(self, split: str) -> None: ...

    def finish_split(self, split: str) -> None: ...

    def retain_splits(self, reading: set[str]) -> None: ...


class SourceTask(Task):
    """The head of a chain that starts with a source."""

    is_source = True

    def _progress(self) -> tuple[int, int] | None:
        """The reader's (read, total) when it knows them (read from another thread: a value of a
        moment ago is all a progress line needs)."""
        progress = getattr(self.reader, "progress", None)
        if progress is None:
            return None
        try:
            return progress()
        except Exception:  # noqa: BLE001 - a progress figure never fails a task
            return None

    def __init__(self, *args: Any, reader: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reader = reader
        self._paused_for: CheckpointId | None = None
        self._stopping_at: CheckpointId | None = None
        """A final barrier before the end of the input (a stop): nothing is read after it; its
        completion ends the input, its abort resumes reading."""
        self._ended = False
        self._splits_told = False

    def _run(self) -> None:
        gate = self.gate
        reader = self.reader
        batch_size = self.env.batch_size
        checkpoints = self.env.mode.checkpoints
        process = self._process
        output = self.output
        ticks = bool(self._tick_ops)
        # A reader that knows its records' event time hands over watermarks of its own
        # (flowstate.testing.time.TimedSource): each goes right behind the batch before it.
        take_watermark = getattr(reader, "take_watermark", None)
        # A reader that says which split each batch comes from feeds per-split watermarks.
        split_ops = [cast(SplitWatermarks, op) for op in self.ops if hasattr(op, "finish_split")]
        if split_ops and hasattr(reader, "poll_splits"):
            poll = self._poll_splits
        elif split_ops and hasattr(reader, "poll_split"):
            poll = self._poll_split
        else:
            poll = reader.poll
        self._split_ops = split_ops
        while True:
            if gate.has_mail():
                got = gate.take(0)
                if got is not None and self._on_mail(got[1]):
                    return
                continue
            if self._ended or self._paused_for is not None:
                got = gate.take(TICK_EVERY if ticks and not self._ended else 0.2)
                if got is not None and self._on_mail(got[1]):
                    return
                if ticks and not self._ended:
                    self._tick()
                continue
            if not output.has_room():
                # Back-pressure: wait here, where a checkpoint trigger wakes the task at once,
                # rather than inside a put that would hold the trigger back until a slot frees up.
                t0 = self.env.clock.monotonic()
                got = gate.take(0.005)
                self.backpressure_seconds += self.env.clock.monotonic() - t0
                if got is not None and self._on_mail(got[1]):
                    return
                continue
            batch = poll(batch_size)
            if batch is None:
                self._ended = True
                # Every event-time timer and window fires before the final checkpoint.
                self._emit_watermark(0, FINAL_WATERMARK)
                if not checkpoints:
                    self._end_of_input()
                    return
                self.env.reports.put(SourceEnded(self.task_id))
            else:
                if batch:
                    self.records_in += len(batch)
                    process(batch)
                    if ticks:
                        self._tick(True)
                elif ticks:
                    self._tick()
                if take_watermark is not None:
                    event = take_watermark()
                    if event is not None:
                        self._emit_watermark(0, event)

    def _poll_split(self, max_records: int) -> list[Any] | None:
        got = self.reader.poll_split(max_records)
        if got is None:
            return None
        split, batch, finished = got
        for op in self._split_ops:
            if finished:
                op.finish_split(split)
            else:
                op.current_split = split
        return batch

    def _poll_splits(self, max_records: int) -> list[Any] | None:
        """A ``SplitReader``'s events, in order: each batch goes through the chain with its split set,
        announcements and ends of splits reach the watermark generators between them."""
        got = self.reader.poll_splits(max_records)
        if got is None:
            return None
        split_ops = self._split_ops
        if not self._splits_told:
            # The first events announce every split the reader reads: restored ones it does not
            # read stop holding the watermark back (rule 5b of flowstate.time.watermarks).
            self._splits_told = True
            reading = {split for split, _, finished in got if not finished}
            for op in split_ops:
                op.retain_splits(reading)
        for split, batch, finished in got:
            if batch:
                for op in split_ops:
                    op.current_split = split
                self.records_in += len(batch)
                self._process(batch)
            elif finished:
                for op in split_ops:
                    op.finish_split(split)
            else:
                for op in split_ops:
                    op.start_split(split)
        return []

    def _on_mail(self, mail: Any) -> bool:
        """Handle one mail; True when the task is done."""
        if isinstance(mail, Trigger):
            if self.env.failpoints:
                self.env.failpoints.hit(fpn.SOURCE_BEFORE_SNAPSHOT)
            snapshot_for = getattr(self.reader, "snapshot_for", None)  # an AcknowledgingReader
            if snapshot_for is not None:
                position = snapshot_for(mail.barrier.checkpoint_id)
            else:
                position = self.reader.snapshot()
            if self.env.failpoints:
                self.env.failpoints.hit(fpn.SOURCE_AFTER_SNAPSHOT)
            if self.env.mode is Mode.STOP_THE_WORLD:
                self._paused_for = mail.barrier.checkpoint_id
            if mail.barrier.final and not self._ended:
                self._stopping_at = self._paused_for = mail.barrier.checkpoint_id
            barrier = mail.barrier
            if self.env.mode is Mode.UNALIGNED and not barrier.always_aligned:
                # Final and savepoint barriers stay behind the data (rule 7 of flowstate.checkpoint.unaligned).
                barrier = CheckpointBarrier(barrier.checkpoint_id, barrier.timestamp, barrier.final, unaligned=True)
            # Taken with the position, between two batches: the records before the barrier.
            self._snapshot(barrier, source=position, records=self.records_in)
            return False
        if isinstance(mail, (Complete, Aborted)):
            if self._paused_for is not None and mail.checkpoint_id >= self._paused_for:
                self._paused_for = None
            if self._stopping_at is not None and mail.checkpoint_id >= self._stopping_at:
                if isinstance(mail, Complete):
                    self._ended = True
                self._stopping_at = None
            self._notify(mail)
            # An AcknowledgingReader acknowledges to its broker only what a completed checkpoint covers.
            notify = getattr(self.reader, "notify_complete" if isinstance(mail, Complete) else "notify_aborted", None)
            if notify is not None:
                notify(mail.checkpoint_id)
            if self._ended and self._final_notified:
                self._end_of_input()
                return True
            return False
        raise TypeError(f"unexpected mail {mail!r} for {self.task_id}")

    def run(self) -> None:
        try:
            super().run()
        finally:
            try:
                self.reader.close()
            except Exception:  # noqa: BLE001
                pass
