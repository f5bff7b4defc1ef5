"""What a barrier handler tells its task to do.

A barrier handler is the pure part of a task's input side: it is told which barrier or end-of-input
event arrived on which channel and answers with a list of actions, executed by the task **in order**:

- ``BlockChannel(c)``: stop reading channel ``c``; its data stays queued in the channel (and so
  back-pressures its producer) until a ``ResumeChannels`` names it.
- ``TakeSnapshot(barrier)``: snapshot the task's state for ``barrier.checkpoint_id``, then forward the
  barrier to every output channel, before any record that follows it.
- ``ResumeChannels(cs)``: read channels ``cs`` again.
- ``AbortCheckpoint(id, reason)``: the task gives up on checkpoint ``id`` and declines it.
- ``AllInputsEnded()``: every input channel has delivered ``EndOfInput``.

Unaligned checkpoints add the capture of in-flight data (``flowstate.checkpoint.unaligned``):

- ``StartCapture(id, cs)``: from now on, every batch read from channels ``cs`` is also recorded as
  channel state of checkpoint ``id`` (it precedes the barrier that has not arrived on it yet).
- ``CaptureOvertaken(c)``: the barrier just read on ``c`` overtook queued batches: record them.
- ``StopCapture(c)``: the barrier of ``c`` arrived; what follows on ``c`` is not recorded.
- ``FinishCapture(id)``: the channel state of ``id`` is complete; persist it with the snapshot and
  acknowledge.
- ``DiscardCapture(id)``: checkpoint ``id`` was given up; drop what was recorded.

Order that matters: when the last barrier of an alignment arrives the handler answers
``[TakeSnapshot, ResumeChannels]``: the snapshot (and the forwarded barrier) must come before the
first record that was queued behind a barrier, or that record would be counted in two checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId


@dataclass(frozen=True, slots=True)
class BlockChannel:
    channel: ChannelIndex


@dataclass(frozen=True, slots=True)
class ResumeChannels:
    channels: tuple[ChannelIndex, ...]


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    barrier: CheckpointBarrier


@dataclass(frozen=True, slots=True)
class AbortCheckpoint:
    checkpoint_id: CheckpointId
    reason: CheckpointFailureReason


@dataclass(frozen=True, slots=True)
class AllInputsEnded:
    pass


@dataclass(frozen=True, slots=True)
class StartCapture:
    checkpoint_id: CheckpointId
    channels: tuple[ChannelIndex, ...]


@dataclass(frozen=True, slots=True)
class CaptureOvertaken:
    channel: ChannelIndex


@dataclass(frozen=True, slots=True)
class StopCapture:
    channel: ChannelIndex


@dataclass(frozen=True, slots=True)
class FinishCapture:
    checkpoint_id: CheckpointId


@dataclass(frozen=True, slots=True)
class DiscardCapture:
    checkpoint_id: CheckpointId


HandlerAction = (
    BlockChannel | ResumeChannels | TakeSnapshot | AbortCheckpoint | AllInputsEnded
    | StartCapture | CaptureOvertaken | StopCapture | FinishCapture | DiscardCapture
)


class BarrierHandler(Protocol):
    """The input side of one task. Implementations are pure: no clock, no I/O, no threads.

    Every implementation takes the same events with the same arguments, so that a task drives any of
    them alike: the time is a parameter of ``on_barrier`` and ``tick`` (the task's monotonic clock,
    in seconds), whether the handler uses it or not. Every event that the protocol forbids raises
    ``ProtocolError`` and leaves the handler unchanged.
    """

    def on_barrier(self, channel: ChannelIndex, barrier: CheckpointBarrier, now: float) -> list[HandlerAction]:
        """A barrier was read from ``channel`` at ``now``."""
        ...

    def on_end_of_input(self, channel: ChannelIndex) -> list[HandlerAction]:
        """``EndOfInput`` was read from ``channel``; it will deliver nothing more."""
        ...

    def on_abort(self, checkpoint_id: CheckpointId) -> list[HandlerAction]:
        """The coordinator aborted ``checkpoint_id``: stop waiting for its barriers."""
        ...

    def tick(self, now: float) -> list[HandlerAction]:
        """Time passed (only handlers with an alignment timeout act on it)."""
        ...

    @property
    def blocked(self) -> frozenset[ChannelIndex]:
        """Channels the task must not read now."""
        ...
