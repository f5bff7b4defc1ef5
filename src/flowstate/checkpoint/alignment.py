"""Aligned barriers: the exactly-once input side of a task (Chandy-Lamport as in Flink).

Rules:

1. When the first barrier of checkpoint *n* arrives on a channel, that channel is **blocked**: its
   records belong to checkpoint *n + 1* and must not reach the operator before the snapshot. The
   other channels are still read.
2. When barrier *n* has arrived on every open channel (a channel that delivered ``EndOfInput`` is
   closed and no longer waited for), the task snapshots, forwards the barrier and resumes every
   blocked channel, in that order.
3. A barrier of a **newer** checkpoint during an alignment aborts the current one
   (``SUBSUMED_BY_NEWER_BARRIER``), resumes its blocked channels and starts aligning the newer one.
4. A barrier whose id is not newer than the last checkpoint this task snapshotted or aborted is late:
   it is ignored; so is a barrier older than the checkpoint being aligned.
5. ``EndOfInput`` on the last channel that the alignment waited for completes it (rule 2).
6. An illegal event (a barrier or end of input on a channel that already ended, a barrier on a
   channel that is blocked) raises ``ProtocolError`` and leaves the handler unchanged.

There is one small class per alignment state, each answering with the next state and the actions
for the task (see ``flowstate.checkpoint.handler``).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.handler import (
    AbortCheckpoint,
    AllInputsEnded,
    BlockChannel,
    HandlerAction,
    ResumeChannels,
    TakeSnapshot,
)
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId


class ProtocolError(Exception):
    """An event that the protocol forbids arrived. This is a bug in the runtime, not a user error."""


@dataclass(frozen=True, slots=True)
class WaitingForFirstBarrier:
    """No alignment in progress; every open channel is read."""

    def barrier(
        self, open_channels: frozenset[ChannelIndex], channel: ChannelIndex, barrier: CheckpointBarrier
    ) -> tuple[AlignmentState, list[HandlerAction]]:
        collecting = CollectingBarriers(barrier, frozenset())
        return collecting.barrier(open_channels, channel, barrier)

    def channel_closed(
        self, open_channels: frozenset[ChannelIndex]
    ) -> tuple[AlignmentState, list[HandlerAction]]:
        return self, []

    def abort(self, checkpoint_id: CheckpointId) -> tuple[AlignmentState, list[HandlerAction]]:
        return self, []


@dataclass(frozen=True, slots=True)
class CollectingBarriers:
    """Aligning ``pending``: the channels in ``arrived`` delivered its barrier and are blocked."""

    pending: CheckpointBarrier
    arrived: frozenset[ChannelIndex]

    def barrier(
        self, open_channels: frozenset[ChannelIndex], channel: ChannelIndex, barrier: CheckpointBarrier
    ) -> tuple[AlignmentState, list[HandlerAction]]:
        if barrier.checkpoint_id > self.pending.checkpoint_id:
            # Rule 3. The channels already blocked for the old checkpoint are released: their data
            # now belongs before the new barrier, which each of them will deliver in turn.
            actions: list[HandlerAction] = []
            if self.arrived:
                actions.append(AbortCheckpoint(self.pending.checkpoint_id, CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER))
                actions.append(ResumeChannels(tuple(sorted(self.arrived))))
            state, more = CollectingBarriers(barrier, frozenset()).barrier(open_channels, channel, barrier)
            return state, actions + more
        if barrier.checkpoint_id < self.pending.checkpoint_id:
            # Rule 4. Checkpoint n + 1 started aligning before this channel delivered barrier n, so n
            # can no longer align here; counting this barrier for n + 1 would snapshot n + 1 before
            # the records this channel still holds ahead of barrier n + 1.
            return self, []
        arrived = self.arrived | {channel}
        return self._maybe_complete(open_channels, arrived, [BlockChannel(channel)])

    def channel_closed(
        self, open_channels: frozenset[ChannelIndex]
    ) -> tuple[AlignmentState, list[HandlerAction]]:
        return self._maybe_complete(open_channels, self.arrived, [])

    def abort(self, checkpoint_id: CheckpointId) -> tuple[AlignmentState, list[HandlerAction]]:
        if checkpoint_id < self.pending.checkpoint_id:
            return self, []
        actions: list[HandlerAction] = []
        if checkpoint_id > self.pending.checkpoint_id:
            # Aborting a newer checkpoint makes every barrier up to its id late (rule 4), so the
            # pending one can no longer align: give it up rather than keep its channels blocked.
            actions.append(AbortCheckpoint(self.pending.checkpoint_id, CheckpointFailureReason.CANCELLED_BY_COORDINATOR))
        if self.arrived:
            actions.append(ResumeChannels(tuple(sorted(self.arrived))))
        return WaitingForFirstBarrier(), actions

    def _maybe_complete(
        self,
        open_channels: frozenset[ChannelIndex],
        arrived: frozenset[ChannelIndex],
        actions: list[HandlerAction],
    ) -> tuple[AlignmentState, list[HandlerAction]]:
        if open_channels <= arrived:
            # Rule 2: a channel whose barrier arrived and that has no other data is never blocked
            # for nothing, so a single-input task snapshots at once without a BlockChannel.
            blocked = tuple(sorted(arrived & open_channels - _just_blocked(actions)))
            done: list[HandlerAction] = [a for a in actions if not isinstance(a, BlockChannel)]
            done.append(TakeSnapshot(self.pending))
            if blocked:
                done.append(ResumeChannels(blocked))
            return WaitingForFirstBarrier(), done
        return CollectingBarriers(self.pending, arrived), actions


def _just_blocked(actions: list[HandlerAction]) -> frozenset[ChannelIndex]:
    return frozenset(a.channel for a in actions if isinstance(a, BlockChannel))


AlignmentState = WaitingForFirstBarrier | CollectingBarriers


class AlignedBarrierHandler:
    """Exactly-once input side for a task with ``num_channels`` input channels."""

    def __init__(self, num_channels: int) -> None:
        if num_channels < 1:
            raise ValueError("a task with inputs has at least one input channel")
        self._open: frozenset[ChannelIndex] = frozenset(ChannelIndex(i) for i in range(num_channels))
        self._state: AlignmentState = WaitingForFirstBarrier()
        self._last_id = CheckpointId(0)

    @property
    def state(self) -> AlignmentState:
        return self._state

    @property
    def blocked(self) -> frozenset[ChannelIndex]:
        if isinstance(self._state, CollectingBarriers):
            return self._state.arrived
        return frozenset()

    @property
    def open_channels(self) -> frozenset[ChannelIndex]:
        return self._open

    def on_barrier(
        self, channel: ChannelIndex, barrier: CheckpointBarrier, now: float = 0.0
    ) -> list[HandlerAction]:
        """``now`` plays no part: an aligned checkpoint waits as long as the coordinator lets it."""
        self._check_open(channel)
        if channel in self.blocked:
            raise ProtocolError(f"barrier {barrier.checkpoint_id} read from blocked channel {channel}")
        if barrier.checkpoint_id <= self._last_id:
            return []  # rule 4
        state, actions = self._state.barrier(self._open, channel, barrier)
        self._commit(state, actions)
        return actions

    def on_end_of_input(self, channel: ChannelIndex) -> list[HandlerAction]:
        self._check_open(channel)
        if channel in self.blocked:
            raise ProtocolError(f"end of input read from blocked channel {channel}")
        open_now = self._open - {channel}
        state, actions = self._state.channel_closed(open_now)
        self._open = open_now
        self._commit(state, actions)
        if not open_now:
            actions = actions + [AllInputsEnded()]
        return actions

    def tick(self, now: float) -> list[HandlerAction]:
        """No timeouts here: an aligned checkpoint waits as long as the coordinator lets it."""
        return []

    def on_abort(self, checkpoint_id: CheckpointId) -> list[HandlerAction]:
        state, actions = self._state.abort(checkpoint_id)
        self._state = state
        self._last_id = max(self._last_id, checkpoint_id)
        return actions

    def _check_open(self, channel: ChannelIndex) -> None:
        if channel not in self._open:
            raise ProtocolError(f"event on channel {channel}, which is not open (open: {sorted(self._open)})")

    def _commit(self, state: AlignmentState, actions: list[HandlerAction]) -> None:
        for action in actions:
            if isinstance(action, (TakeSnapshot, AbortCheckpoint)):
                self._last_id = max(
                    self._last_id,
                    action.barrier.checkpoint_id if isinstance(action, TakeSnapshot) else action.checkpoint_id,
                )
        self._state = state
