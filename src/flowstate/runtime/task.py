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
from concurrent.futures import Executor
from dataclasses import dataclass
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
from flowstate.clock import Clock
from flowstate.config import Mode
from flowstate.failpoints import Failpoints
from flowstate.observe.counters import TaskCounters, keyed_entries, ttl_entries
from flowstate.runtime.channels import Cancelled, InputGate, Overtaking
from flowstate.runtime.messages import (
    Aborted,
    Ack,
    Complete,
    Decline,
    SourceEnded,
    TaskFailed,
    TaskFinished,
    Trigger,
)
from flowstate.runtime.operators import Operator
from flowstate.runtime.output import Output
from flowstate.runtime.transport import Reports
from flowstate.state.backend import SnapshotParts
from flowstate.storage.base import CheckpointStorage, StateHandle, TaskState
from flowstate.storage.state_file import KeyedSnapshot, TaskStateFile, encode_task_state
from flowstate.time.watermarks import FINAL_WATERMARK, MIN_WATERMARK, ChannelWatermarks, Watermark

def state_file_name(task: str) -> str:
    """The name of a task's state file in a checkpoint: ``<task>.state``, behind a ``#`` when the
    task's name starts with ``.`` or ``_`` (a vertex named by such a uid), which storage reserves for
    temporary files and the metadata. No other name starts with ``#``: a uid has none."""
    return f"#{task}.state" if task[:1] in (".", "_") else f"{task}.state"


TICK_EVERY = 0.05
"""Seconds between ticks of a quiet task (idleness of watermarks, processing-time timers)."""


@dataclass(frozen=True, slots=True)
class TaskEnv:
    mode: Mode
    storage: CheckpointStorage | None
    reports: Reports
    snapshot_pool: Executor
    failpoints: Failpoints
    clock: Clock
    batch_size: int
    alignment_timeout: float | None = None
    max_inflight_bytes: int = 64 * 1024 * 1024
    compression: str = "none"
    """Codec of the task's state files (recorded in their handles)."""
    incremental: bool = True
    """Files of keyed snapshots are uploaded once as shared files and referenced by later checkpoints;
    otherwise every checkpoint copies them into its own directory."""


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
        self._capture: _Capture | None = None
        self._final_notified = False
        # Incremental checkpoints (Step 3): the shared files the newest completed checkpoint
        # references, which a later snapshot refers to instead of uploading them again, and the
        # references of checkpoints acknowledged and not yet completed.
        self._uploaded: dict[str, StateHandle] = {}
        self._acked_files: dict[CheckpointId, dict[str, StateHandle]] = {}

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
            # Tasks in worker processes learn where a savepoint goes from its barrier.
            env.storage.route_savepoint(cid, Path(barrier.target))  # type: ignore[union-attr]
        t0 = env.clock.monotonic()
        parts: list[tuple[str, Any]] = []
        snapshot = _Snapshot(cid, parts, 0.0, alignment_seconds, full=barrier.savepoint, records=records,
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
            self._capture = _Capture(snapshot, env.max_inflight_bytes)
            return
        self._write(snapshot)

    def _write(self, snapshot: _Snapshot) -> None:
        if self.env.mode is Mode.STOP_THE_WORLD:
            self._write_and_ack(snapshot)
        else:
            self.env.snapshot_pool.submit(self._write_and_ack, snapshot)

    def _write_and_ack(self, snapshot: _Snapshot) -> None:
        """Step 3 then Step 4. A keyed snapshot's files are uploaded first (each shared file once:
        those the newest completed checkpoint references are only referred to), then the state file
        naming them; every snapshot part is released however this ends."""
        env = self.env
        cid = snapshot.checkpoint_id
        try:
            t0 = env.clock.monotonic()
            operators: dict[str, Any] = {}
            files: dict[str, StateHandle] = {}
            written = 0
            for uid, part in snapshot.parts:
                value = part.materialize()
                if isinstance(value, SnapshotParts):
                    refs: dict[str, StateHandle] = {}
                    for key, path in value.files.items():
                        handle, new_bytes = self._upload(cid, key, path, snapshot.full)
                        files[key] = refs[key] = handle
                        written += new_bytes
                    value = KeyedSnapshot(value.data, refs)
                operators[uid] = value
            state = TaskStateFile(operators, snapshot.source, snapshot.channels or {}, snapshot.watermark)
            handle = None
            if not state.is_empty():
                assert env.storage is not None
                data = encode_task_state(state)
                handle = env.storage.write_state(cid, state_file_name(self.task_id), data, codec=env.compression)
                written += handle.size
            if env.failpoints:
                env.failpoints.hit(fpn.TASK_AFTER_SNAPSHOT)
            async_seconds = env.clock.monotonic() - t0
            if files and not snapshot.full and env.incremental:
                self._acked_files[cid] = files
            shared = tuple(files.values())
            env.reports.put(Ack(self.task_id, cid, TaskState(
                self.task_id, self.vertex, self.subtask, handle, snapshot.sync_seconds, async_seconds,
                snapshot.alignment_seconds, snapshot.channel_bytes, shared=shared, bytes_written=written,
                full_size=(handle.size if handle is not None else 0) + sum(h.size for h in shared)),
                records=snapshot.records))
        except Exception as exc:  # noqa: BLE001 - a failed snapshot declines the checkpoint
            env.reports.put(Decline(self.task_id, cid, CheckpointFailureReason.SNAPSHOT_FAILURE,
                                    f"{type(exc).__name__}: {exc}"))
        finally:
            snapshot.release()

    def _upload(self, cid: CheckpointId, key: str, path: str, full: bool) -> tuple[StateHandle, int]:
        """The handle of file ``key`` of a keyed snapshot, and the bytes written to store it. A full
        snapshot (a savepoint, or incremental checkpoints off) copies the file into the checkpoint's
        own directory; an incremental one uploads it as a shared file unless the newest completed
        checkpoint already references it (shared files are immutable: same key, same bytes)."""
        storage = self.env.storage
        assert storage is not None
        if full or not self.env.incremental:
            with open(path, "rb") as f:
                data = f.read()
            handle = storage.write_state(cid, f"{self.task_id}-{key}", data)
            return handle, handle.size
        known = self._uploaded.get(key)
        if known is not None:
            return known, 0
        handle = storage.write_shared(key, Path(path))
        return handle, handle.size

    def _notify(self, mail: Complete | Aborted) -> None:
        if isinstance(mail, Complete):
            files = self._acked_files.pop(mail.checkpoint_id, None)
            if files is not None:
                self._uploaded = files
            for older in [c for c in self._acked_files if c < mail.checkpoint_id]:
                del self._acked_files[older]
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


@dataclass(slots=True)
class _Snapshot:
    """The synchronous part of one task's snapshot, waiting to be written."""

    checkpoint_id: CheckpointId
    parts: list[tuple[str, Any]]
    sync_seconds: float
    alignment_seconds: float
    channels: dict[int, list[bytes]] | None = None
    channel_bytes: int = 0
    full: bool = False
    """A self-contained snapshot (a savepoint): it references no file of another checkpoint."""
    records: int = 0
    """A source task's records read in this attempt before the barrier (see ``Ack.records``)."""
    source: Any = None
    """A source task's reader position at the barrier."""
    watermark: float | None = None
    """A task's combined input watermark at the barrier, when it is finite."""

    def release(self) -> None:
        """Let every part drop what it holds for this snapshot (keyed snapshots: frozen layers, hard
        links); called once, whether the snapshot was written, failed or dropped."""
        parts, self.parts = self.parts, []
        for _, part in parts:
            release = getattr(part, "release", None)
            if release is not None:
                release()


class _Capture:
    """In-flight batches recorded for an unaligned checkpoint, pickled as they are recorded so that
    their size is known and bounded."""

    __slots__ = ("snapshot", "limit", "recording", "channels", "bytes", "over_limit")

    def __init__(self, snapshot: _Snapshot, limit: int) -> None:
        self.snapshot = snapshot
        self.limit = limit
        self.recording: set[int] = set()
        self.channels: dict[int, list[bytes]] = {}
        self.bytes = 0
        self.over_limit = False

    def record(self, channel: int, batches: list[list[Any]]) -> bool:
        """Record ``batches`` of ``channel``; False once the bound is exceeded (all is dropped)."""
        if self.over_limit:
            return False
        for batch in batches:
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            self.bytes += len(data)
            self.channels.setdefault(channel, []).append(data)
        if self.bytes > self.limit:
            self.over_limit = True
            self.channels.clear()
            self.recording.clear()
            return False
        return True


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

    def _record(self, capture: _Capture, ch: int, batches: list[list[Any]]) -> None:
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
        split_ops = [op for op in self.ops if hasattr(op, "finish_split")]
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
