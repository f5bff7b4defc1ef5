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

There is one small class per state (``Idle``, ``Aligning``, ``Capturing``), each answering every
event (``on_barrier``, ``on_end_of_input``, ``on_abort``, ``tick``) with the next state and the actions
for the task, as in ``flowstate.checkpoint.alignment``. A switch to unaligned (rule 6) is a single
step from ``Aligning`` to ``Capturing`` (or to ``Idle`` when no channel is left to record), so it
needs no state of its own. The handler checks the events that are illegal in every state, hands the
others to its state and commits the answer only once nothing can raise any more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import assert_never

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
class Inputs:
    """What every state is told with each event: the input channels open (after the event, for an
    end of input) and the alignment timeout (``None``: every checkpoint is unaligned)."""

    open: frozenset[ChannelIndex]
    alignment_timeout: float | None


@dataclass(frozen=True, slots=True)
class Idle:
    """No checkpoint in progress on this task's inputs."""

    def on_barrier(self, inputs: Inputs, channel: ChannelIndex, barrier: CheckpointBarrier, now: float) -> Step:
        timeout = inputs.alignment_timeout
        if (barrier.unaligned or timeout is None) and not barrier.always_aligned:
            return _capture(inputs, barrier, frozenset({channel}), overtaking=channel)  # rule 1
        if inputs.open == {channel}:
            return self, [TakeSnapshot(barrier)]
        if timeout is not None and not barrier.always_aligned and now - barrier.timestamp >= timeout:
            # Rule 6: late already; the barrier overtook nothing and blocked nothing.
            return _capture(inputs, barrier, frozenset({channel}), overtaking=None)
        return Aligning(barrier, frozenset({channel}), barrier.timestamp), [BlockChannel(channel)]  # rule 5

    def on_end_of_input(self, inputs: Inputs, channel: ChannelIndex) -> Step:
        return self, []

    def on_abort(self, inputs: Inputs, checkpoint_id: CheckpointId) -> Step:
        return self, []

    def tick(self, inputs: Inputs, now: float) -> Step:
        return self, []


@dataclass(frozen=True, slots=True)
class Aligning:
    """Aligning ``barrier``, whose checkpoint started at ``started``; the channels in ``arrived`` are
    blocked."""

    barrier: CheckpointBarrier
    arrived: frozenset[ChannelIndex]
    started: float

    def on_barrier(self, inputs: Inputs, channel: ChannelIndex, barrier: CheckpointBarrier, now: float) -> Step:
        newer = _newer(self, inputs, channel, barrier, now)
        if newer is not None:
            return newer
        if barrier.unaligned and not self.barrier.always_aligned:
            return self._switch(inputs, channel)  # rule 6: an upstream task switched
        arrived = self.arrived | {channel}
        if inputs.open <= arrived:
            return self._snapshot(inputs)
        return replace(self, arrived=arrived), [BlockChannel(channel)]

    def on_end_of_input(self, inputs: Inputs, channel: ChannelIndex) -> Step:
        return self._snapshot(inputs) if inputs.open <= self.arrived else (self, [])

    def on_abort(self, inputs: Inputs, checkpoint_id: CheckpointId) -> Step:
        return _aborted(self, inputs, checkpoint_id)

    def tick(self, inputs: Inputs, now: float) -> Step:
        timeout = inputs.alignment_timeout
        if timeout is not None and not self.barrier.always_aligned and now - self.started >= timeout:
            return self._switch(inputs, None)  # rule 6
        return self, []

    def give_up(self, inputs: Inputs) -> list[HandlerAction]:
        """What the task does when this alignment is given up: read the blocked channels again."""
        resume = _sorted(self.arrived & inputs.open)
        return [ResumeChannels(resume)] if resume else []

    def _snapshot(self, inputs: Inputs) -> Step:
        """Rule 2 of alignment: every open channel delivered the barrier."""
        return Idle(), [TakeSnapshot(self.barrier), *self.give_up(inputs)]

    def _switch(self, inputs: Inputs, channel: ChannelIndex | None) -> Step:
        """Rule 6: this alignment becomes unaligned (``channel``: an unaligned barrier read there)."""
        arrived = self.arrived | ({channel} if channel is not None else frozenset())
        return _capture(inputs, self.barrier, arrived, overtaking=channel,
                        resume=_sorted(self.arrived & inputs.open))


@dataclass(frozen=True, slots=True)
class Capturing:
    """Snapshot of ``barrier`` taken; recording the channels not in ``arrived``."""

    barrier: CheckpointBarrier
    arrived: frozenset[ChannelIndex]

    def on_barrier(self, inputs: Inputs, channel: ChannelIndex, barrier: CheckpointBarrier, now: float) -> Step:
        newer = _newer(self, inputs, channel, barrier, now)
        if newer is not None:
            return newer
        if channel in self.arrived:
            raise ProtocolError(f"second barrier of checkpoint {barrier.checkpoint_id} on channel {channel}")
        arrived = self.arrived | {channel}
        actions: list[HandlerAction] = [CaptureOvertaken(channel), StopCapture(channel)]  # rule 2
        if inputs.open <= arrived:
            return Idle(), [*actions, FinishCapture(self.barrier.checkpoint_id)]  # rule 3
        return replace(self, arrived=arrived), actions

    def on_end_of_input(self, inputs: Inputs, channel: ChannelIndex) -> Step:
        actions: list[HandlerAction] = [] if channel in self.arrived else [StopCapture(channel)]
        if inputs.open <= self.arrived:
            return Idle(), [*actions, FinishCapture(self.barrier.checkpoint_id)]
        return self, actions

    def on_abort(self, inputs: Inputs, checkpoint_id: CheckpointId) -> Step:
        return _aborted(self, inputs, checkpoint_id)

    def tick(self, inputs: Inputs, now: float) -> Step:
        return self, []

    def give_up(self, inputs: Inputs) -> list[HandlerAction]:
        """What the task does when this capture is given up: drop what was recorded."""
        return [DiscardCapture(self.barrier.checkpoint_id)]


UnalignedState = Idle | Aligning | Capturing

Step = tuple[UnalignedState, list[HandlerAction]]
"""The next state and the actions for the task, in order."""


def _sorted(channels: frozenset[ChannelIndex]) -> tuple[ChannelIndex, ...]:
    return tuple(sorted(channels))


def _capture(
    inputs: Inputs, barrier: CheckpointBarrier, arrived: frozenset[ChannelIndex], *,
    overtaking: ChannelIndex | None, resume: tuple[ChannelIndex, ...] = (),
) -> Step:
    """Rules 1-3 (and 6): snapshot now, record what precedes the barrier on each other channel."""
    cid = barrier.checkpoint_id
    unaligned = barrier if barrier.unaligned else replace(barrier, unaligned=True)
    actions: list[HandlerAction] = [TakeSnapshot(unaligned)]
    if resume:
        actions.append(ResumeChannels(resume))
    rest = inputs.open - arrived
    if rest:
        actions.append(StartCapture(cid, _sorted(rest)))
    if overtaking is not None:
        actions.append(CaptureOvertaken(overtaking))
    if not rest:
        return Idle(), [*actions, FinishCapture(cid)]
    return Capturing(unaligned, arrived), actions


def _newer(
    state: Aligning | Capturing, inputs: Inputs, channel: ChannelIndex, barrier: CheckpointBarrier, now: float,
) -> Step | None:
    """A barrier of another checkpoint than ``state``'s: late (ignored) or newer (rule 4: ``state`` is
    given up and the newer checkpoint starts as from ``Idle``). ``None`` for a barrier of ``state``'s."""
    current = state.barrier.checkpoint_id
    if barrier.checkpoint_id < current:
        return state, []  # a late barrier of an older checkpoint: this channel's barrier of current is ahead
    if barrier.checkpoint_id == current:
        return None
    given_up = [AbortCheckpoint(current, CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER), *state.give_up(inputs)]
    after, actions = Idle().on_barrier(inputs, channel, barrier, now)
    return after, given_up + actions


def _aborted(state: Aligning | Capturing, inputs: Inputs, checkpoint_id: CheckpointId) -> Step:
    """The coordinator aborted ``checkpoint_id``: ``state`` is given up if it is not newer."""
    current = state.barrier.checkpoint_id
    if checkpoint_id < current:
        return state, []
    actions = state.give_up(inputs)
    if checkpoint_id > current:
        # Every barrier up to the aborted id is late now, so the current one can never complete.
        actions.insert(0, AbortCheckpoint(current, CheckpointFailureReason.CANCELLED_BY_COORDINATOR))
    return Idle(), actions


def _named(action: HandlerAction) -> CheckpointId | None:
    """The checkpoint ``action`` is about, if any."""
    match action:
        case TakeSnapshot(barrier=barrier):
            return barrier.checkpoint_id
        case (AbortCheckpoint(checkpoint_id=cid) | StartCapture(checkpoint_id=cid) | FinishCapture(checkpoint_id=cid)
              | DiscardCapture(checkpoint_id=cid)):
            return cid
        case BlockChannel() | ResumeChannels() | AllInputsEnded() | CaptureOvertaken() | StopCapture():
            return None
        case _:
            assert_never(action)


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
        if barrier.checkpoint_id <= self._last_id:
            return []  # rule 4: late
        return self._commit(*self._state.on_barrier(self._inputs(self._open), channel, barrier, now))

    def on_end_of_input(self, channel: ChannelIndex) -> list[HandlerAction]:
        self._check(channel)
        if channel in self.blocked:
            raise ProtocolError(f"end of input read from blocked channel {channel}")
        open_now = self._open - {channel}
        step = self._state.on_end_of_input(self._inputs(open_now), channel)
        self._open = open_now
        actions = self._commit(*step)
        return actions + [AllInputsEnded()] if not open_now else actions

    def on_abort(self, checkpoint_id: CheckpointId) -> list[HandlerAction]:
        actions = self._commit(*self._state.on_abort(self._inputs(self._open), checkpoint_id))
        self._last_id = max(self._last_id, checkpoint_id)
        return actions

    def tick(self, now: float) -> list[HandlerAction]:
        return self._commit(*self._state.tick(self._inputs(self._open), now))

    # ---- internals ------------------------------------------------------------------------------

    def _inputs(self, open_channels: frozenset[ChannelIndex]) -> Inputs:
        return Inputs(open_channels, self._timeout)

    def _commit(self, state: UnalignedState, actions: list[HandlerAction]) -> list[HandlerAction]:
        """Take ``state``. A checkpoint that an action names and that ``state`` no longer works on is
        over on this task (snapshotted and finished, or given up): its barriers are late from now on
        (rule 4)."""
        live = None if isinstance(state, Idle) else state.barrier.checkpoint_id
        over = [cid for cid in map(_named, actions) if cid is not None and cid != live]
        self._last_id = max([self._last_id, *over])
        self._state = state
        return actions

    def _check(self, channel: ChannelIndex) -> None:
        if channel not in self._open:
            raise ProtocolError(f"event on channel {channel}, which is not open (open: {sorted(self._open)})")
