"""Aligned barriers (``flowstate.checkpoint.alignment``): scripted barrier sequences and the exact
actions the task must execute, in order.

Each test reads as a script: the event that arrives on a channel, then the list of actions the
handler answers with. Channels are numbered from 0; checkpoint ids from 1.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from itertools import permutations

import pytest

from flowstate.checkpoint.alignment import (
    AlignedBarrierHandler,
    CollectingBarriers,
    ProtocolError,
    WaitingForFirstBarrier,
)
from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.handler import (
    AbortCheckpoint,
    AllInputsEnded,
    BlockChannel,
    ResumeChannels,
    TakeSnapshot,
)
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId

C0, C1, C2 = ChannelIndex(0), ChannelIndex(1), ChannelIndex(2)
SUBSUMED_BY_NEWER_BARRIER = CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER


def barrier(n: int, *, final: bool = False) -> CheckpointBarrier:
    """The barrier of checkpoint ``n``, triggered at time ``n``."""
    return CheckpointBarrier(CheckpointId(n), timestamp=float(n), final=final)


def resume(*channels: ChannelIndex) -> ResumeChannels:
    return ResumeChannels(tuple(channels))


# ---- one input channel -----------------------------------------------------------------------------


def test_a_task_with_one_input_snapshots_at_once_without_blocking_its_channel() -> None:
    handler = AlignedBarrierHandler(1)

    assert handler.on_barrier(C0, barrier(1)) == [TakeSnapshot(barrier(1))]
    assert handler.blocked == frozenset()
    assert handler.state == WaitingForFirstBarrier()


def test_a_task_with_one_input_snapshots_every_checkpoint_in_turn() -> None:
    handler = AlignedBarrierHandler(1)

    assert handler.on_barrier(C0, barrier(1)) == [TakeSnapshot(barrier(1))]
    assert handler.on_barrier(C0, barrier(2)) == [TakeSnapshot(barrier(2))]
    assert handler.on_barrier(C0, barrier(4)) == [TakeSnapshot(barrier(4))]


def test_the_snapshot_carries_the_barrier_as_it_arrived() -> None:
    handler = AlignedBarrierHandler(2)
    final = CheckpointBarrier(CheckpointId(7), timestamp=12.5, final=True)

    handler.on_barrier(C0, final)
    [snapshot, _] = handler.on_barrier(C1, final)

    assert snapshot == TakeSnapshot(final)
    assert isinstance(snapshot, TakeSnapshot) and snapshot.barrier.final


# ---- alignment over several channels ---------------------------------------------------------------


def test_each_barrier_blocks_its_channel_until_the_last_one_snapshots_then_resumes() -> None:
    handler = AlignedBarrierHandler(3)

    assert handler.on_barrier(C0, barrier(1)) == [BlockChannel(C0)]
    assert handler.blocked == {C0}
    assert handler.on_barrier(C1, barrier(1)) == [BlockChannel(C1)]
    assert handler.blocked == {C0, C1}
    assert handler.on_barrier(C2, barrier(1)) == [TakeSnapshot(barrier(1)), resume(C0, C1)]
    assert handler.blocked == frozenset()
    assert handler.state == WaitingForFirstBarrier()


def test_while_aligning_the_state_names_the_checkpoint_and_the_channels_that_delivered_it() -> None:
    handler = AlignedBarrierHandler(3)

    handler.on_barrier(C2, barrier(1))
    handler.on_barrier(C0, barrier(1))

    assert handler.state == CollectingBarriers(barrier(1), frozenset({C0, C2}))


@pytest.mark.parametrize("order", list(permutations([C0, C1, C2])), ids=str)
def test_barriers_may_arrive_in_any_channel_order(order: tuple[ChannelIndex, ...]) -> None:
    handler = AlignedBarrierHandler(3)
    first, second, last = order

    assert handler.on_barrier(first, barrier(1)) == [BlockChannel(first)]
    assert handler.on_barrier(second, barrier(1)) == [BlockChannel(second)]
    assert handler.on_barrier(last, barrier(1)) == [
        TakeSnapshot(barrier(1)),
        resume(*sorted([first, second])),
    ]


def test_consecutive_checkpoints_align_one_after_the_other() -> None:
    handler = AlignedBarrierHandler(2)

    assert handler.on_barrier(C1, barrier(1)) == [BlockChannel(C1)]
    assert handler.on_barrier(C0, barrier(1)) == [TakeSnapshot(barrier(1)), resume(C1)]
    assert handler.on_barrier(C0, barrier(2)) == [BlockChannel(C0)]
    assert handler.on_barrier(C1, barrier(2)) == [TakeSnapshot(barrier(2)), resume(C0)]


# ---- late and older barriers -----------------------------------------------------------------------


def test_a_barrier_of_a_checkpoint_already_snapshotted_is_ignored() -> None:
    handler = AlignedBarrierHandler(2)
    handler.on_barrier(C0, barrier(2))
    handler.on_barrier(C1, barrier(2))

    assert handler.on_barrier(C0, barrier(2)) == []
    assert handler.on_barrier(C1, barrier(1)) == []
    assert handler.blocked == frozenset()
    assert handler.state == WaitingForFirstBarrier()


def test_a_barrier_older_than_the_checkpoint_being_aligned_is_ignored() -> None:
    # Channel 0 never carried barrier 1 (its producer gave checkpoint 1 up); channel 1 still does.
    # Counting that barrier for checkpoint 2 would snapshot 2 before the records that channel 1 holds
    # ahead of its barrier 2, and they would be lost on a restore from checkpoint 2.
    handler = AlignedBarrierHandler(2)

    assert handler.on_barrier(C0, barrier(2)) == [BlockChannel(C0)]
    assert handler.on_barrier(C1, barrier(1)) == []
    assert handler.state == CollectingBarriers(barrier(2), frozenset({C0}))
    assert handler.on_barrier(C1, barrier(2)) == [TakeSnapshot(barrier(2)), resume(C0)]


def test_newer_barrier_during_alignment_aborts_the_older_checkpoint() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))
    handler.on_barrier(C1, barrier(1))

    assert handler.on_barrier(C2, barrier(2)) == [
        AbortCheckpoint(CheckpointId(1), SUBSUMED_BY_NEWER_BARRIER),
        resume(C0, C1),
        BlockChannel(C2),
    ]
    assert handler.blocked == {C2}
    assert handler.state == CollectingBarriers(barrier(2), frozenset({C2}))


def test_after_a_newer_barrier_the_aborted_checkpoint_is_late_and_the_newer_one_aligns() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))
    handler.on_barrier(C1, barrier(1))
    handler.on_barrier(C2, barrier(2))

    assert handler.on_barrier(C0, barrier(2)) == [BlockChannel(C0)]
    assert handler.on_barrier(C1, barrier(2)) == [TakeSnapshot(barrier(2)), resume(C0, C2)]


def test_a_newer_barrier_that_completes_its_own_alignment_at_once_still_aborts_the_older() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))
    handler.on_end_of_input(C2)

    # Only channels 0 and 1 are open; channel 0 is blocked for checkpoint 1.
    assert handler.on_barrier(C1, barrier(3)) == [
        AbortCheckpoint(CheckpointId(1), SUBSUMED_BY_NEWER_BARRIER),
        resume(C0),
        BlockChannel(C1),
    ]
    assert handler.on_barrier(C0, barrier(3)) == [TakeSnapshot(barrier(3)), resume(C1)]


# ---- end of input ----------------------------------------------------------------------------------


def test_end_of_input_on_the_last_awaited_channel_completes_the_alignment() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))
    handler.on_barrier(C1, barrier(1))

    assert handler.on_end_of_input(C2) == [TakeSnapshot(barrier(1)), resume(C0, C1)]
    assert handler.open_channels == {C0, C1}
    assert handler.blocked == frozenset()


def test_end_of_input_on_a_channel_while_others_are_still_awaited_completes_nothing() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))

    assert handler.on_end_of_input(C2) == []
    assert handler.blocked == {C0}
    assert handler.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1)), resume(C0)]


def test_a_channel_that_ended_is_no_longer_waited_for() -> None:
    handler = AlignedBarrierHandler(3)

    assert handler.on_end_of_input(C1) == []
    assert handler.on_barrier(C0, barrier(1)) == [BlockChannel(C0)]
    assert handler.on_barrier(C2, barrier(1)) == [TakeSnapshot(barrier(1)), resume(C0)]


def test_once_one_channel_is_left_its_barriers_snapshot_at_once() -> None:
    handler = AlignedBarrierHandler(2)
    handler.on_end_of_input(C0)

    assert handler.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1))]
    assert handler.blocked == frozenset()


def test_end_of_input_on_every_channel_reports_all_inputs_ended_last() -> None:
    handler = AlignedBarrierHandler(3)

    assert handler.on_end_of_input(C1) == []
    assert handler.on_end_of_input(C0) == []
    assert handler.on_end_of_input(C2) == [AllInputsEnded()]
    assert handler.open_channels == frozenset()


def test_the_alignment_completed_by_end_of_input_comes_before_all_inputs_ended() -> None:
    handler = AlignedBarrierHandler(2)
    handler.on_barrier(C0, barrier(1))

    assert handler.on_end_of_input(C1) == [TakeSnapshot(barrier(1)), resume(C0)]
    assert handler.on_barrier(C0, barrier(2)) == [TakeSnapshot(barrier(2))]
    assert handler.on_end_of_input(C0) == [AllInputsEnded()]


# ---- aborts from the coordinator -------------------------------------------------------------------


def test_coordinator_abort_during_alignment_resumes_the_blocked_channels() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))
    handler.on_barrier(C1, barrier(1))

    assert handler.on_abort(CheckpointId(1)) == [resume(C0, C1)]
    assert handler.blocked == frozenset()
    assert handler.state == WaitingForFirstBarrier()


def test_after_a_coordinator_abort_the_barriers_of_that_checkpoint_are_ignored() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))
    handler.on_abort(CheckpointId(1))

    assert handler.on_barrier(C1, barrier(1)) == []
    assert handler.on_barrier(C2, barrier(1)) == []
    assert handler.blocked == frozenset()
    assert handler.on_barrier(C0, barrier(2)) == [BlockChannel(C0)]


def test_coordinator_abort_of_a_checkpoint_not_yet_seen_makes_its_barriers_late() -> None:
    handler = AlignedBarrierHandler(2)

    assert handler.on_abort(CheckpointId(1)) == []
    assert handler.on_barrier(C0, barrier(1)) == []
    assert handler.blocked == frozenset()


def test_coordinator_abort_of_an_older_checkpoint_leaves_the_alignment_alone() -> None:
    handler = AlignedBarrierHandler(2)
    handler.on_barrier(C0, barrier(2))

    assert handler.on_abort(CheckpointId(1)) == []
    assert handler.blocked == {C0}
    assert handler.on_barrier(C1, barrier(2)) == [TakeSnapshot(barrier(2)), resume(C0)]


def test_coordinator_abort_of_a_newer_checkpoint_gives_up_the_current_alignment() -> None:
    # Aborting 5 makes every barrier up to 5 late here, so checkpoint 3 can no longer align: keeping
    # channel 0 blocked for it would stall that channel until some barrier newer than 5 arrived.
    handler = AlignedBarrierHandler(2)
    handler.on_barrier(C0, barrier(3))

    assert handler.on_abort(CheckpointId(5)) == [
        AbortCheckpoint(CheckpointId(3), CheckpointFailureReason.CANCELLED_BY_COORDINATOR),
        resume(C0),
    ]
    assert handler.blocked == frozenset()
    assert handler.on_barrier(C1, barrier(3)) == []
    assert handler.on_barrier(C1, barrier(5)) == []
    assert handler.on_barrier(C1, barrier(6)) == [BlockChannel(C1)]


def test_coordinator_abort_while_waiting_for_the_first_barrier_does_nothing_now() -> None:
    handler = AlignedBarrierHandler(2)
    handler.on_barrier(C0, barrier(1))
    handler.on_barrier(C1, barrier(1))

    assert handler.on_abort(CheckpointId(1)) == []
    assert handler.on_abort(CheckpointId(2)) == []
    assert handler.state == WaitingForFirstBarrier()


# ---- illegal events --------------------------------------------------------------------------------

Script = Callable[[AlignedBarrierHandler], object]


def _blocked_channel_0(handler: AlignedBarrierHandler) -> None:
    handler.on_barrier(C0, barrier(1))


def _blocked_channel_0_after_checkpoint_1(handler: AlignedBarrierHandler) -> None:
    for channel in (C0, C1, C2):
        handler.on_barrier(channel, barrier(1))
    handler.on_barrier(C0, barrier(2))


def _closed_channel_0(handler: AlignedBarrierHandler) -> None:
    handler.on_barrier(C1, barrier(1))
    handler.on_end_of_input(C0)


ILLEGAL = {
    "the same barrier again on a blocked channel": (_blocked_channel_0, lambda h: h.on_barrier(C0, barrier(1))),
    "a newer barrier on a blocked channel": (_blocked_channel_0, lambda h: h.on_barrier(C0, barrier(2))),
    "a late barrier on a blocked channel": (
        _blocked_channel_0_after_checkpoint_1,
        lambda h: h.on_barrier(C0, barrier(1)),
    ),
    "end of input on a blocked channel": (_blocked_channel_0, lambda h: h.on_end_of_input(C0)),
    "a barrier on a channel that ended": (_closed_channel_0, lambda h: h.on_barrier(C0, barrier(1))),
    "end of input on a channel that ended": (_closed_channel_0, lambda h: h.on_end_of_input(C0)),
    "a barrier on a channel the task does not have": (
        _blocked_channel_0,
        lambda h: h.on_barrier(ChannelIndex(3), barrier(1)),
    ),
    "end of input on a channel the task does not have": (
        _closed_channel_0,
        lambda h: h.on_end_of_input(ChannelIndex(-1)),
    ),
}


@pytest.mark.parametrize(("setup", "illegal"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_an_illegal_event_raises_and_leaves_the_handler_unchanged(setup: Script, illegal: Script) -> None:
    handler = AlignedBarrierHandler(3)
    setup(handler)
    before = (handler.state, handler.blocked, handler.open_channels)
    everything_before = deepcopy(vars(handler))

    with pytest.raises(ProtocolError):
        illegal(handler)

    assert (handler.state, handler.blocked, handler.open_channels) == before
    assert vars(handler) == everything_before


def test_after_an_illegal_barrier_the_alignment_still_completes() -> None:
    handler = AlignedBarrierHandler(3)
    handler.on_barrier(C0, barrier(1))

    with pytest.raises(ProtocolError):
        handler.on_barrier(C0, barrier(2))

    # Had the refused barrier 2 been taken into account, barrier 1 would now abort or be late.
    assert handler.on_barrier(C1, barrier(1)) == [BlockChannel(C1)]
    assert handler.on_barrier(C2, barrier(1)) == [TakeSnapshot(barrier(1)), resume(C0, C1)]


def test_after_an_illegal_end_of_input_the_channel_is_still_open_and_awaited() -> None:
    handler = AlignedBarrierHandler(2)
    handler.on_barrier(C0, barrier(1))

    with pytest.raises(ProtocolError):
        handler.on_end_of_input(C0)

    assert handler.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1)), resume(C0)]
    assert handler.on_end_of_input(C0) == []
    assert handler.on_end_of_input(C1) == [AllInputsEnded()]


def test_after_an_event_on_a_closed_channel_the_other_channels_still_work() -> None:
    handler = AlignedBarrierHandler(2)
    handler.on_end_of_input(C0)

    with pytest.raises(ProtocolError):
        handler.on_end_of_input(C0)
    with pytest.raises(ProtocolError):
        handler.on_barrier(C0, barrier(1))

    assert handler.open_channels == {C1}
    assert handler.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1))]
    assert handler.on_end_of_input(C1) == [AllInputsEnded()]


def test_a_task_with_inputs_has_at_least_one_channel() -> None:
    with pytest.raises(ValueError):
        AlignedBarrierHandler(0)
