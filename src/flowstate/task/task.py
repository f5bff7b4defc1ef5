"""Tasks: one thread per parallel subtask, running a chain of operators.

A ``StreamTask`` reads its input gate, feeds record batches through its chain and executes what its
barrier handler decides. A ``SourceTask`` polls a source reader instead and injects barriers when the
coordinator triggers a checkpoint.

Snapshot procedure of a task (order matters):

Step 1: (sources) snapshot the reader's position; every chained operator takes the synchronous part
        of its snapshot. No record is processed in between, so all of them describe the same cut.
Step 2: forward the barrier to every output channel, before any later record.
Step 3: the asynchronous part (materialise, pickle, write, fsync) runs on the job's snapshot pool
        while the task goes on processing; in ``stop_the_world`` mode it runs right here instead.
Step 4: only when the state file is durable is the checkpoint acknowledged.

**Watermarks** travel in-band like barriers, behind the batches before them. A task combines those
of its input channels (``flowstate.time.ChannelWatermarks``: the minimum over channels that are not
idle) and passes each advance through its chain (``Operator.on_watermark``: timers and windows fire
and emit records there, which go through the rest of the chain before the watermark does), then to
every output channel. Operators that generate watermarks or have processing-time timers get a tick
after every batch and when the input is quiet. A source whose input ends emits ``Watermark(+inf)``
before it reports the end, so every event-time timer and window fires **before** the final
checkpoint. The combined watermark of a task is in its state (``TaskStateFile.watermark``) and is where the
restored task starts from (before it replays in-flight batches of an unaligned checkpoint).

A task of a job with checkpoints ends only after every input ended **and** it was notified that a
final checkpoint completed: sinks commit their last output on that notification. A final barrier
that reaches a source before the end of its input is a **stop** (``flowstate stop``): the source
reads nothing after it, ends its input when the checkpoint completes, and reads on if it is aborted.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any, assert_never

from flowstate import failpoints as fpn
from flowstate.checkpoint.alignment import AlignedBarrierHandler
from flowstate.checkpoint.barrier import END_OF_INPUT, CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.handler import (
    AbortCheckpoint,
    AllInputsEnded,
    BarrierHandler,
    BlockChannel,
    CaptureOvertaken,
    DiscardCapture,
    FinishCapture,
    HandlerAction,
    ResumeChannels,
    StartCapture,
    StopCapture,
    TakeSnapshot,
)
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId, TaskId
from flowstate.checkpoint.tracker import BarrierTracker
from flowstate.checkpoint.unaligned import UnalignedBarrierHandler
from flowstate.config import Mode
from flowstate.observe.counters import TaskCounters, keyed_entries, ttl_entries
from flowstate.operators.base import Operator
from flowstate.storage.state_file import TaskStateFile
from flowstate.task.env import TaskEnv
from flowstate.task.messages import (
    Aborted,
    Complete,
    Decline,
    TaskFailed,
    TaskFinished,
)
from flowstate.task.output import Output
from flowstate.task.snapshot import Capture, Snapshot, SnapshotWriter
from flowstate.time.watermarks import (
    FINAL_WATERMARK,
    MIN_WATERMARK,
    ChannelWatermarks,
    Watermark,
)
from flowstate.transport.channels import Cancelled, InputGate, Overtaking

TICK_EVERY = 0.05
"""Seconds between ticks of a quiet task (idleness of watermarks, processing-time timers)."""


class Task:
    is_source = False

    def __init__(
        self, task_id: TaskId, vertex: str, subtask: int, ops: list[Operator], output: Output,
        gate: InputGate, env: TaskEnv, resume: TaskStateFile | None, cancelled: threading.Event,
    ) -> None:
        self.task_id = task_id
        self.vertex = vertex
        self.subtask = subtask
        self.ops = ops
        self.output = output
        self.gate = gate
        self.env = env
        self.resume = resume
        self.cancelled = cancelled  # shared with the task's Output: a full channel stops waiting when set
        self.records_in = 0
        self.records_out = 0
        self.backpressure_seconds = 0.0
        """Time spent waiting for room in a full output channel."""
        self.state_entries = 0
        self.watermark: float | None = None
        """The last finite watermark passed downstream (a metric: ``TaskCounters.watermark``)."""
        self.operators_ttl: tuple[tuple[int, int] | None, ...] = ()
        self.operators_out = [0] * len(ops)
        self._steps = [op.process_batch for op in ops]
        self._tick_ops = [(i, op) for i, op in enumerate(ops) if op.wants_ticks]
        self._next_tick = 0.0
        self._failpoints = env.failpoints
        self._capture: Capture | None = None
        self._final_notified = False
        self._writer = SnapshotWriter(task_id, vertex, subtask, env)
        """Step 3 and Step 4 of every snapshot of this task."""

    # ---- lifecycle --------------------------------------------------------------------------------

    def cancel(self) -> None:
        self.cancelled.set()
        self.gate.cancel()

    def counters(self) -> TaskCounters:
        return TaskCounters(self.records_in, self.records_out, self.backpressure_seconds, self.state_entries,
                            tuple(self.operators_out), self.operators_ttl, self.watermark, self._progress())

    def _progress(self) -> tuple[int, int] | None:
        return None

    def post(self, mail: Any) -> None:
        """Mail for the task (a trigger, a notification): read before any channel item."""
        self.gate.post(mail)

    def run(self) -> None:
        try:
            self._open()
            self._run()
            self.env.reports.put(TaskFinished(self.task_id))
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - every failure is reported to the runner
            if not self.cancelled.is_set():
                self.env.reports.put(TaskFailed(self.task_id, exc))
        finally:
            if self._capture is not None:
                self._capture.snapshot.release()  # an unaligned snapshot still recording
                self._capture = None
            for op in self.ops:
                try:
                    op.close()
                except Exception:  # noqa: BLE001 - closing must not hide the original failure
                    pass

    def _open(self) -> None:
        resume = self.resume
        for op in self.ops:
            op.open(resume.operators.get(op.uid) if resume is not None else None)
        if resume is not None and self.env.failpoints:
            self.env.failpoints.hit(fpn.RECOVERY_STATE_LOADED)

    def _run(self) -> None:
        raise NotImplementedError

    # ---- records ----------------------------------------------------------------------------------

    def _process(self, batch: list[Any]) -> None:
        if self._failpoints:
            self._failpoints.hit(fpn.OPERATOR_PROCESS)
        counts = self.operators_out
        for i, step in enumerate(self._steps):
            batch = step(batch)  # type: ignore[assignment]
            if not batch:
                return
            counts[i] += len(batch)
        self.records_out += len(batch)
        if self.output.has_room():
            self.output.emit(batch)
        else:  # back-pressure: the emit waits for a full channel
            clock = self.env.clock
            t0 = clock.monotonic()
            self.output.emit(batch)
            self.backpressure_seconds += clock.monotonic() - t0

    def _process_from(self, start: int, batch: list[Any]) -> None:
        """Records emitted by operator ``start - 1`` (timers, windows): through the rest of the chain."""
        for step in self._steps[start:]:
            batch = step(batch)  # type: ignore[assignment]
            if not batch:
                return
        self.output.emit(batch)

    def _emit_watermark(self, start: int, event: Watermark) -> None:
        """``event`` through operators ``start…`` of the chain, then to every output channel."""
        ops = self.ops
        for i in range(start, len(ops)):
            records, passed = ops[i].on_watermark(event)
            if records:
                self._process_from(i + 1, records)
            if passed is None:
                return
            event = passed
        if not event.idle and event.timestamp < FINAL_WATERMARK.timestamp:
            self.watermark = event.timestamp
        self.output.broadcast(event)

    def _tick(self, force: bool = False) -> None:
        """Ticks of the operators that asked for them (after a batch: ``force``; else at most every
        ``TICK_EVERY``)."""
        now = self.env.clock.monotonic()
        if not force and now < self._next_tick:
            return
        self._next_tick = now + TICK_EVERY
        for i, op in self._tick_ops:
            records, event = op.on_tick(now)
            if records:
                self._process_from(i + 1, records)
            if event is not None:
                self._emit_watermark(i + 1, event)

    # ---- checkpoints ------------------------------------------------------------------------------

    def _snapshot(self, barrier: CheckpointBarrier, *, source: Any = None, watermark: float | None = None,
                  alignment_seconds: float = 0.0, records: int = 0) -> None:
        """Steps 1-4 of the module docstring (a source passes its reader position as ``source``, and
        the records it read up to that position in this attempt as ``records``; a task with inputs
        its combined input watermark once it is finite).

        For an unaligned barrier, Step 3 waits for ``FinishCapture``: the in-flight batches recorded
        after the snapshot are written in the same state file."""
        env = self.env
        fp = env.failpoints
        if fp:
            fp.hit(fpn.TASK_BEFORE_SNAPSHOT)
            if barrier.final:
                fp.hit(fpn.FINAL_CHECKPOINT)
        cid = barrier.checkpoint_id
        if barrier.target is not None:
            # Tasks in worker processes learn where a savepoint goes from its barrier (a job that
            # takes savepoints has storage: the coordinator gives no target otherwise).
            assert env.storage is not None
            env.storage.route_savepoint(cid, Path(barrier.target))
        t0 = env.clock.monotonic()
        parts: list[tuple[str, Any]] = []
        snapshot = Snapshot(cid, parts, 0.0, alignment_seconds, full=barrier.savepoint, records=records,
                             source=source, watermark=watermark)
        try:
            for op in self.ops:
                if op.stateful:
                    part = op.snapshot(cid)
                    if part is not None:
                        parts.append((op.uid, part))
            snapshot.sync_seconds = env.clock.monotonic() - t0
            self.state_entries = keyed_entries(self.ops, self.state_entries)
            self.operators_ttl = ttl_entries(self.ops)
            if fp:
                fp.hit(fpn.TASK_BEFORE_FORWARD)
            self.output.broadcast_barrier(barrier)
        except BaseException:
            snapshot.release()  # the parts taken so far hold hard links and layers
            raise
        if barrier.unaligned and self.gate.num_channels:
            # A task with inputs records what precedes the barrier on them (see StreamTask).
            self._capture = Capture(snapshot, env.max_inflight_bytes)
            return
        self._write(snapshot)

    def _write(self, snapshot: Snapshot) -> None:
        if self.env.mode is Mode.STOP_THE_WORLD:
            self._writer.write_and_ack(snapshot)
        else:
            self.env.snapshot_pool.submit(self._writer.write_and_ack, snapshot)

    def _notify(self, mail: Complete | Aborted) -> None:
        if isinstance(mail, Complete):
            self._writer.completed(mail.checkpoint_id)
            if mail.commit:
                for op in self.ops:
                    op.notify_complete(mail.checkpoint_id)
            if mail.final:
                self._final_notified = True
        else:
            for op in self.ops:
                op.notify_aborted(mail.checkpoint_id)

    def _end_of_input(self) -> None:
        for op in self.ops:
            op.end_of_input()
        self.output.broadcast(END_OF_INPUT)


def make_barrier_handler(mode: Mode, num_channels: int, alignment_timeout: float | None = None) -> BarrierHandler:
    """Exactly-once aligns barriers (switching to unaligned after ``alignment_timeout``, if set);
    unaligned captures in-flight data; every other mode only counts barriers (stop-the-world has
    nothing to align: its sources are paused, so nothing follows a barrier until the checkpoint
    completes)."""
    if mode is Mode.EXACTLY_ONCE:
        if alignment_timeout is not None:
            return UnalignedBarrierHandler(num_channels, alignment_timeout)
        return AlignedBarrierHandler(num_channels)
    if mode is Mode.UNALIGNED:
        return UnalignedBarrierHandler(num_channels, None)
    return BarrierTracker(num_channels)


class StreamTask(Task):
    """A task with input channels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handler = make_barrier_handler(self.env.mode, self.gate.num_channels, self.env.alignment_timeout)
        self._inputs_ended = False
        self._first_barrier: tuple[CheckpointId, float] = (CheckpointId(0), 0.0)
        restored = self.resume.watermark if self.resume is not None else None
        self._floor = float(restored if restored is not None else MIN_WATERMARK)
        self.watermarks = ChannelWatermarks(self.gate.num_channels, self._floor)

    def _replay_channel_state(self) -> None:
        """In-flight batches of the restored (unaligned) checkpoint go first, channel by channel in
        their order, before anything new is read."""
        channels = self.resume.channels if self.resume is not None else {}
        for channel in sorted(channels):
            for data in channels[channel]:
                batch = pickle.loads(data)
                self.records_in += len(batch)
                self._process(batch)

    def _run(self) -> None:
        gate = self.gate
        handler = self.handler
        checkpoints = self.env.mode.checkpoints
        ticking = self.env.alignment_timeout is not None
        timeout = self.env.alignment_timeout or 0.0
        promotion_every = min(0.05, max(timeout / 4, 0.001))
        next_promotion = 0.0
        clock = self.env.clock
        if self._floor > MIN_WATERMARK:
            self._emit_watermark(0, Watermark(self._floor))
        self._replay_channel_state()
        ticks = bool(self._tick_ops)
        while True:
            if self._inputs_ended and (not checkpoints or self._final_notified):
                return
            got = gate.take(0.2 if not ticking else min(0.2, max(self.env.alignment_timeout or 0.0, 0.001)))
            if ticking:
                now = clock.monotonic()
                if now >= next_promotion:
                    # An aligned checkpoint older than the timeout overtakes what is queued ahead
                    # of its barrier here too, not only once the barrier is read.
                    gate.promote_overdue(now - timeout)
                    next_promotion = now + promotion_every
                if handler.blocked:
                    self._execute(handler.tick(now), None)
            if got is None:
                if ticks:
                    self._tick()
                continue
            ch, item = got
            if type(item) is list:
                capture = self._capture
                if capture is not None and ch in capture.recording:
                    self._record(capture, ch, [item])
                self.records_in += len(item)
                self._process(item)
                if ticks:
                    self._tick(True)
            elif type(item) is Watermark:
                event = self.watermarks.on_watermark(ch, item)
                if event is not None:
                    self._emit_watermark(0, event)
            elif ch < 0:
                if isinstance(item, (Complete, Aborted)):
                    if isinstance(item, Aborted):
                        self._execute(handler.on_abort(item.checkpoint_id), None)
                    self._notify(item)
                else:
                    raise TypeError(f"unexpected mail {item!r} for {self.task_id}")
            elif type(item) is CheckpointBarrier:
                self._barrier(ch, item, None)
            elif type(item) is Overtaking:
                self._barrier(ch, item.barrier, item.batches)
            else:
                event = self.watermarks.on_end_of_input(ch)
                if event is not None:
                    self._emit_watermark(0, event)
                self._execute(handler.on_end_of_input(ChannelIndex(ch)), None)

    def _barrier(self, ch: int, barrier: CheckpointBarrier, overtaken: list[list[Any]] | None) -> None:
        now = self.env.clock.monotonic()
        if barrier.checkpoint_id > self._first_barrier[0]:
            self._first_barrier = (barrier.checkpoint_id, now)
            if self.env.failpoints:
                self.env.failpoints.hit(fpn.BARRIER_FIRST)
        self._execute(self.handler.on_barrier(ChannelIndex(ch), barrier, now), overtaken)

    def _record(self, capture: Capture, ch: int, batches: list[list[Any]]) -> None:
        if capture.over_limit:
            # Declined when the bound was crossed. Barriers that arrive later on other channels still
            # hand over what they overtook; recording it would decline the checkpoint again.
            return
        if not capture.record(ch, batches):
            # Rule of the bound: decline rather than hold unbounded in-flight data in memory.
            self.env.reports.put(Decline(self.task_id, capture.snapshot.checkpoint_id,
                                         CheckpointFailureReason.IN_FLIGHT_LIMIT,
                                         f"more than {capture.limit:,} bytes in flight"))

    def _execute(self, actions: list[HandlerAction], overtaken: list[list[Any]] | None) -> None:
        for action in actions:
            match action:
                case BlockChannel(channel=ch):
                    self.gate.block(ch)
                    if self.env.failpoints:
                        self.env.failpoints.hit(fpn.ALIGNMENT_BLOCKED)
                case ResumeChannels(channels=chs):
                    self.gate.resume(chs)
                case TakeSnapshot(barrier=barrier):
                    cid, since = self._first_barrier
                    aligned = self.env.clock.monotonic() - since if cid == barrier.checkpoint_id else 0.0
                    current = self.watermarks.current
                    self._snapshot(barrier, watermark=current if current > MIN_WATERMARK else None,
                                   alignment_seconds=aligned)
                case StartCapture(channels=chs):
                    if self._capture is not None:
                        self._capture.recording.update(chs)
                case CaptureOvertaken(channel=ch):
                    if self._capture is not None and overtaken:
                        self._record(self._capture, ch, overtaken)
                case StopCapture(channel=ch):
                    if self._capture is not None:
                        self._capture.recording.discard(ch)
                case FinishCapture():
                    capture, self._capture = self._capture, None
                    if capture is not None and not capture.over_limit:
                        capture.snapshot.channels = capture.channels
                        capture.snapshot.channel_bytes = capture.bytes
                        self._write(capture.snapshot)
                    elif capture is not None:
                        capture.snapshot.release()  # declined when it crossed the bound
                case DiscardCapture():
                    if self._capture is not None:
                        self._capture.snapshot.release()
                    self._capture = None
                case AbortCheckpoint(checkpoint_id=cid, reason=reason):
                    self.env.reports.put(Decline(self.task_id, cid, reason))
                case AllInputsEnded():
                    self._end_of_input()
                    self._inputs_ended = True
                case _:
                    assert_never(action)
