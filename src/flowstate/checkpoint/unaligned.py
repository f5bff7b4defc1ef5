"""Unaligned checkpoints, and aligned checkpoints that turn unaligned after a timeout (FLIP-76).

Unaligned rules:

1. The **first** barrier of checkpoint *n* on any channel makes the task snapshot at once and forward
   the barrier ahead of its queued output (``TakeSnapshot`` with an unaligned barrier). Nothing is
   blocked.
2. On every other open channel, every batch read until that channel's own barrier arrives is
   recorded as channel state (``StartCapture``): those records precede the barrier, yet their
   effects are not in the snapshot. What the first barrier overtook on its own channel is recorded
   too (``CaptureOvertaken``). When a channel's barrier arrives, what it overtook is recorded and recording on
   that channel stops (``CaptureOvertaken``, ``StopCapture``). Records that arrive on a channel
   after its barrier are never recorded.
3. When every open channel delivered barrier *n* (or ended), the channel state is complete
   (``FinishCapture``): it is persisted with the snapshot, then acknowledged.
4. A barrier of a newer checkpoint during a capture aborts the older one (``AbortCheckpoint`` with
   ``SUBSUMED_BY_NEWER_BARRIER``, ``DiscardCapture``) and starts the newer one. A barrier not newer
   than the last checkpoint snapshotted or aborted is ignored. A coordinator abort discards the
   capture.

Aligned-with-timeout rules (``alignment_timeout`` set):

5. A barrier that did not overtake anything starts an ordinary alignment (``BlockChannel``…,
   rules of ``flowstate.checkpoint.alignment``).
6. When ``alignment_timeout`` has passed since the checkpoint **started** (the barrier's timestamp,
   as Flink counts its aligned-checkpoint timeout: under back-pressure a barrier spends most of its
   time queued before any alignment begins), or an unaligned barrier of the same checkpoint arrives
   (an upstream task switched, or the gate promoted a barrier that was queued past the timeout), the
   task switches to unaligned: it snapshots, forwards an unaligned barrier, resumes the blocked
   channels (what is queued behind their barriers follows the barrier: not recorded) and records
   the other channels as in rule 2. A first barrier that arrives after the timeout switches at once.

7. The **final** checkpoint of a bounded job is always aligned and never switches: everything must be
   processed before it, or what an overtaken record produced after it would never be committed. A
   **savepoint** is always aligned too: it holds no channel state, so it maps onto a changed job.

Illegal events (on a channel that ended, or on a channel that is blocked) raise ``ProtocolError``
and leave the handler unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flowstate.checkpoint.alignment import ProtocolError
from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.handler import (
    AbortCheckpoint,
    AllInputsEnded,
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
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId


@dataclass(frozen=True, slots=True)
class Idle:
    """No checkpoint in progress on this task's inputs."""


@dataclass(frozen=True, slots=True)
class Aligning:
    """Aligning ``barrier``, whose checkpoint started at ``started``; the channels in ``arrived`` are
    blocked."""

    barrier: CheckpointBarrier
    arrived: frozenset[ChannelIndex]
    started: float


@dataclass(frozen=True, slots=True)
class Capturing:
    """Snapshot of ``barrier`` taken; recording the channels not in ``arrived``."""

    barrier: CheckpointBarrier
    arrived: frozenset[ChannelIndex]


UnalignedState = Idle | Aligning | Capturing


def _sorted(channels: frozenset[ChannelIndex]) -> tuple[ChannelIndex, ...]:
    return tuple(sorted(channels))


class UnalignedBarrierHandler:
    """Input side of a task for unaligned checkpoints (``alignment_timeout=None``) or aligned ones
    that switch to unaligned after ``alignment_timeout`` seconds."""

    def __init__(self, num_channels: int, alignment_timeout: float | None = None) -> None:
        if num_channels < 1:
            raise ValueError("a task with inputs has at least one input channel")
        if alignment_timeout is not None and alignment_timeout < 0:
            raise ValueError(f"alignment timeout must be ≥ 0, got {alignment_timeout}")
        self._open: frozenset[ChannelIndex] = frozenset(ChannelIndex(i) for i in range(num_channels))
        self._timeout = alignment_timeout
        self._state: UnalignedState = Idle()
        self._last_id = CheckpointId(0)

    @property
    def state(self) -> UnalignedState:
        return self._state

    @property
    def blocked(self) -> frozenset[ChannelIndex]:
        return self._state.arrived if isinstance(self._state, Aligning) else frozenset()

    @property
    def open_channels(self) -> frozenset[ChannelIndex]:
        return self._open

    @property
    def capturing(self) -> frozenset[ChannelIndex]:
        """Channels whose batches are being recorded now."""
        return self._open - self._state.arrived if isinstance(self._state, Capturing) else frozenset()

    # ---- events ---------------------------------------------------------------------------------

    def on_barrier(self, channel: ChannelIndex, barrier: CheckpointBarrier, now: float = 0.0) -> list[HandlerAction]:
        self._check(channel)
        if channel in self.blocked:
            raise ProtocolError(f"barrier {barrier.checkpoint_id} read from blocked channel {channel}")
        cid = barrier.checkpoint_id
        if cid <= self._last_id:
            return []
        state = self._state
        actions: list[HandlerAction] = []
        if not isinstance(state, Idle):
            current = state.barrier.checkpoint_id
            if cid < current:
                return []  # a late barrier of an older checkpoint: its channel's barrier of current is still ahead
            if cid > current:
                actions += self._give_up(state, CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER)
                state = Idle()
        match state:
            case Idle():
                if (barrier.unaligned or self._timeout is None) and not barrier.always_aligned:
                    return actions + self._capture_from(barrier, frozenset({channel}), channel, ())
                if self._open == {channel}:
                    return actions + self._done(TakeSnapshot(barrier), cid)
                if not barrier.always_aligned and now - barrier.timestamp >= self._timeout:
                    # Rule 6: late already; the barrier overtook nothing and blocked nothing.
                    return actions + self._capture_from(barrier, frozenset({channel}), None, ())
                self._state = Aligning(barrier, frozenset({channel}), barrier.timestamp)
                return actions + [BlockChannel(channel)]
            case Aligning(arrived=arrived):
                if barrier.unaligned and not state.barrier.always_aligned:
                    return actions + self._switch(state, channel)
                arrived = arrived | {channel}
                if self._open <= arrived:
                    resume = _sorted(state.arrived & self._open)
                    done = self._done(TakeSnapshot(state.barrier), cid)
                    return actions + done + ([ResumeChannels(resume)] if resume else [])
                self._state = replace(state, arrived=arrived)
                return actions + [BlockChannel(channel)]
            case Capturing(arrived=arrived):
                if channel in arrived:
                    raise ProtocolError(f"second barrier of checkpoint {cid} on channel {channel}")
                arrived = arrived | {channel}
                step: list[HandlerAction] = [CaptureOvertaken(channel), StopCapture(channel)]
                if self._open <= arrived:
                    return actions + step + self._done(FinishCapture(cid), cid)
                self._state = replace(state, arrived=arrived)
                return actions + step
        raise AssertionError(state)

    def on_end_of_input(self, channel: ChannelIndex) -> list[HandlerAction]:
        self._check(channel)
        if channel in self.blocked:
            raise ProtocolError(f"end of input read from blocked channel {channel}")
        open_now = self._open - {channel}
        state = self._state
        actions: list[HandlerAction] = []
        self._open = open_now
        match state:
            case Aligning(arrived=arrived) if open_now <= arrived:
                resume = _sorted(arrived & open_now)
                actions = self._done(TakeSnapshot(state.barrier), state.barrier.checkpoint_id)
                actions += [ResumeChannels(resume)] if resume else []
            case Capturing(arrived=arrived):
                actions = [] if channel in arrived else [StopCapture(channel)]
                if open_now <= arrived:
                    actions += self._done(FinishCapture(state.barrier.checkpoint_id), state.barrier.checkpoint_id)
            case _:
                pass
        if not open_now:
            actions.append(AllInputsEnded())
        return actions

    def on_abort(self, checkpoint_id: CheckpointId) -> list[HandlerAction]:
        state = self._state
        actions: list[HandlerAction] = []
        if not isinstance(state, Idle) and checkpoint_id >= state.barrier.checkpoint_id:
            actions = self._give_up(state, None)
            if checkpoint_id > state.barrier.checkpoint_id:
                actions.insert(0, AbortCheckpoint(state.barrier.checkpoint_id, CheckpointFailureReason.CANCELLED_BY_COORDINATOR))
            self._state = Idle()
        self._last_id = max(self._last_id, checkpoint_id)
        return actions

    def tick(self, now: float) -> list[HandlerAction]:
        state = self._state
        if (isinstance(state, Aligning) and self._timeout is not None and not state.barrier.always_aligned
                and now - state.started >= self._timeout):
            return self._switch(state, None)
        return []

    # ---- internals ------------------------------------------------------------------------------

    def _capture_from(
        self, barrier: CheckpointBarrier, arrived: frozenset[ChannelIndex], overtaking: ChannelIndex | None,
        resume: tuple[ChannelIndex, ...],
    ) -> list[HandlerAction]:
        """Rules 1-3 (and 6): snapshot now, record what precedes the barrier on each channel."""
        cid = barrier.checkpoint_id
        unaligned = barrier if barrier.unaligned else replace(barrier, unaligned=True)
        actions: list[HandlerAction] = [TakeSnapshot(unaligned)]
        if resume:
            actions.append(ResumeChannels(resume))
        rest = self._open - arrived
        if rest:
            actions.append(StartCapture(cid, _sorted(rest)))
        if overtaking is not None:
            actions.append(CaptureOvertaken(overtaking))
        if not rest:
            return actions + self._done(FinishCapture(cid), cid)
        self._state = Capturing(unaligned, arrived)
        return actions

    def _switch(self, state: Aligning, channel: ChannelIndex | None) -> list[HandlerAction]:
        """Rule 6: the alignment of ``state`` becomes unaligned (``channel``: an unaligned barrier)."""
        arrived = state.arrived | ({channel} if channel is not None else set())
        return self._capture_from(state.barrier, arrived, channel, _sorted(state.arrived & self._open))

    def _give_up(self, state: Aligning | Capturing, reason: CheckpointFailureReason | None) -> list[HandlerAction]:
        cid = state.barrier.checkpoint_id
        actions: list[HandlerAction] = [AbortCheckpoint(cid, reason)] if reason is not None else []
        if isinstance(state, Aligning):
            resume = _sorted(state.arrived & self._open)
            actions += [ResumeChannels(resume)] if resume else []
        else:
            actions.append(DiscardCapture(cid))
        self._last_id = max(self._last_id, cid)
        self._state = Idle()
        return actions

    def _done(self, action: HandlerAction, cid: CheckpointId) -> list[HandlerAction]:
        self._state = Idle()
        self._last_id = max(self._last_id, cid)
        return [action]

    def _check(self, channel: ChannelIndex) -> None:
        if channel not in self._open:
            raise ProtocolError(f"event on channel {channel}, which is not open (open: {sorted(self._open)})")
