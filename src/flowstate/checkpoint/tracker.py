"""Barrier tracking: the at-least-once input side of a task.

Rules:

1. Barriers are only **counted**; no channel is ever blocked, so records that follow a barrier on a
   fast channel can reach the operator before the snapshot (and be replayed after a restore: that is
   the "at least once").
2. When barrier *n* has arrived on every open channel, the task snapshots and forwards it. Any
   checkpoint older than *n* still being tracked is aborted (``SUBSUMED_BY_NEWER_BARRIER``): its
   barriers can no longer all arrive before *n*'s on a FIFO channel.
3. Several checkpoints may be tracked at once (one per id).
4. A barrier whose id is not newer than the last checkpoint snapshotted, or that the coordinator
   aborted, is ignored.
5. ``EndOfInput`` closes a channel; tracked checkpoints that then have every open channel complete.
6. An illegal event (on a channel that already ended, or a second barrier of the same checkpoint on
   one channel) raises ``ProtocolError`` and leaves the tracker unchanged.
"""

from __future__ import annotations

from flowstate.checkpoint.alignment import ProtocolError
from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.handler import (
    AbortCheckpoint,
    AllInputsEnded,
    HandlerAction,
    TakeSnapshot,
)
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId


class BarrierTracker:
    """At-least-once input side for a task with ``num_channels`` input channels."""

    def __init__(self, num_channels: int) -> None:
        if num_channels < 1:
            raise ValueError("a task with inputs has at least one input channel")
        self._open: frozenset[ChannelIndex] = frozenset(ChannelIndex(i) for i in range(num_channels))
        # checkpoint id -> (barrier, channels that delivered it), in ascending id order
        self._tracked: dict[CheckpointId, tuple[CheckpointBarrier, frozenset[ChannelIndex]]] = {}
        self._last_id = CheckpointId(0)
        self._aborted: frozenset[CheckpointId] = frozenset()

    @property
    def blocked(self) -> frozenset[ChannelIndex]:
        return frozenset()

    @property
    def tracked(self) -> dict[CheckpointId, frozenset[ChannelIndex]]:
        return {cid: arrived for cid, (_, arrived) in self._tracked.items()}

    def on_barrier(
        self, channel: ChannelIndex, barrier: CheckpointBarrier, now: float = 0.0
    ) -> list[HandlerAction]:
        """``now`` plays no part: nothing here waits."""
        self._check_open(channel)
        cid = barrier.checkpoint_id
        if cid <= self._last_id or cid in self._aborted:
            return []
        _, arrived = self._tracked.get(cid, (barrier, frozenset()))
        if channel in arrived:
            raise ProtocolError(f"second barrier of checkpoint {cid} on channel {channel}")
        tracked = dict(self._tracked)
        tracked[cid] = (barrier, arrived | {channel})
        tracked = dict(sorted(tracked.items()))
        return self._complete(tracked, self._open)

    def on_end_of_input(self, channel: ChannelIndex) -> list[HandlerAction]:
        self._check_open(channel)
        open_now = self._open - {channel}
        actions = self._complete(dict(self._tracked), open_now)
        if not open_now:
            actions.append(AllInputsEnded())
        return actions

    def tick(self, now: float) -> list[HandlerAction]:
        """Nothing here waits, so time changes nothing."""
        return []

    def on_abort(self, checkpoint_id: CheckpointId) -> list[HandlerAction]:
        if checkpoint_id > self._last_id:
            self._tracked.pop(checkpoint_id, None)
            self._aborted = self._aborted | {checkpoint_id}
        return []

    def _complete(
        self,
        tracked: dict[CheckpointId, tuple[CheckpointBarrier, frozenset[ChannelIndex]]],
        open_channels: frozenset[ChannelIndex],
    ) -> list[HandlerAction]:
        complete = [cid for cid, (_, arrived) in tracked.items() if open_channels <= arrived]
        actions: list[HandlerAction] = []
        last = self._last_id
        if complete:
            newest = max(complete)
            for cid in [c for c in tracked if c < newest]:
                actions.append(AbortCheckpoint(cid, CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER))
                del tracked[cid]
            barrier, _ = tracked.pop(newest)
            actions.append(TakeSnapshot(barrier))
            last = newest
        # Commit only now: every check that can raise has passed.
        self._tracked = tracked
        self._open = open_channels
        self._last_id = last
        self._aborted = frozenset(c for c in self._aborted if c > last)
        return actions

    def _check_open(self, channel: ChannelIndex) -> None:
        if channel not in self._open:
            raise ProtocolError(f"event on channel {channel}, which is not open (open: {sorted(self._open)})")
