"""Barrier tracking (``flowstate.checkpoint.tracker``): scripted barrier sequences and the exact
actions of the at-least-once input side, which counts barriers and never blocks a channel.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

import pytest

from flowstate.checkpoint.alignment import ProtocolError
from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.handler import AbortCheckpoint, AllInputsEnded, TakeSnapshot
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId
from flowstate.checkpoint.tracker import BarrierTracker

C0, C1, C2 = ChannelIndex(0), ChannelIndex(1), ChannelIndex(2)
SUBSUMED_BY_NEWER_BARRIER = CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER


def barrier(n: int, *, final: bool = False) -> CheckpointBarrier:
    """The barrier of checkpoint ``n``, triggered at time ``n``."""
    return CheckpointBarrier(CheckpointId(n), timestamp=float(n), final=final)


def subsumed(n: int) -> AbortCheckpoint:
    return AbortCheckpoint(CheckpointId(n), SUBSUMED_BY_NEWER_BARRIER)


def test_a_task_with_one_input_snapshots_at_once() -> None:
    tracker = BarrierTracker(1)

    assert tracker.on_barrier(C0, barrier(1)) == [TakeSnapshot(barrier(1))]
    assert tracker.on_barrier(C0, barrier(2)) == [TakeSnapshot(barrier(2))]


def test_barriers_are_only_counted_and_the_last_one_snapshots() -> None:
    tracker = BarrierTracker(3)

    assert tracker.on_barrier(C1, barrier(1)) == []
    assert tracker.tracked == {1: {C1}}
    assert tracker.on_barrier(C0, barrier(1)) == []
    assert tracker.tracked == {1: {C0, C1}}
    assert tracker.on_barrier(C2, barrier(1)) == [TakeSnapshot(barrier(1))]
    assert tracker.tracked == {}


def test_no_channel_is_ever_blocked() -> None:
    tracker = BarrierTracker(2)

    for event in (
        lambda: tracker.on_barrier(C0, barrier(1)),
        lambda: tracker.on_barrier(C0, barrier(2)),
        lambda: tracker.on_barrier(C1, barrier(1)),
        lambda: tracker.on_end_of_input(C1),
    ):
        event()
        assert tracker.blocked == frozenset()


def test_the_snapshot_carries_the_barrier_as_it_arrived() -> None:
    tracker = BarrierTracker(2)
    final = CheckpointBarrier(CheckpointId(4), timestamp=9.25, final=True)

    tracker.on_barrier(C0, final)

    assert tracker.on_barrier(C1, final) == [TakeSnapshot(final)]


def test_several_checkpoints_are_tracked_at_once() -> None:
    tracker = BarrierTracker(2)

    assert tracker.on_barrier(C0, barrier(1)) == []
    assert tracker.on_barrier(C0, barrier(2)) == []
    assert tracker.on_barrier(C0, barrier(3)) == []
    assert tracker.tracked == {1: {C0}, 2: {C0}, 3: {C0}}
    assert tracker.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1))]
    assert tracker.tracked == {2: {C0}, 3: {C0}}
    assert tracker.on_barrier(C1, barrier(2)) == [TakeSnapshot(barrier(2))]
    assert tracker.on_barrier(C1, barrier(3)) == [TakeSnapshot(barrier(3))]
    assert tracker.tracked == {}


def test_a_newer_checkpoint_completing_first_aborts_the_older_tracked_ones() -> None:
    tracker = BarrierTracker(2)
    tracker.on_barrier(C0, barrier(1))
    tracker.on_barrier(C0, barrier(2))
    tracker.on_barrier(C0, barrier(3))

    # Channel 1 never carried barriers 1 and 2: its producer gave them up.
    assert tracker.on_barrier(C1, barrier(3)) == [subsumed(1), subsumed(2), TakeSnapshot(barrier(3))]
    assert tracker.tracked == {}


def test_the_barriers_of_a_subsumed_checkpoint_are_late() -> None:
    tracker = BarrierTracker(2)
    tracker.on_barrier(C0, barrier(1))
    tracker.on_barrier(C0, barrier(2))
    tracker.on_barrier(C1, barrier(2))

    assert tracker.on_barrier(C1, barrier(1)) == []
    assert tracker.tracked == {}


def test_a_newer_checkpoint_still_incomplete_does_not_abort_an_older_one() -> None:
    tracker = BarrierTracker(3)
    tracker.on_barrier(C0, barrier(1))
    tracker.on_barrier(C0, barrier(2))
    tracker.on_barrier(C1, barrier(2))

    assert tracker.tracked == {1: {C0}, 2: {C0, C1}}
    assert tracker.on_barrier(C1, barrier(1)) == []
    assert tracker.on_barrier(C2, barrier(1)) == [TakeSnapshot(barrier(1))]


def test_a_barrier_of_a_checkpoint_already_snapshotted_is_ignored() -> None:
    tracker = BarrierTracker(2)
    tracker.on_barrier(C0, barrier(2))
    tracker.on_barrier(C1, barrier(2))

    assert tracker.on_barrier(C0, barrier(1)) == []
    assert tracker.on_barrier(C0, barrier(2)) == []
    assert tracker.tracked == {}


# ---- end of input ----------------------------------------------------------------------------------


def test_end_of_input_completes_the_checkpoints_that_every_other_channel_delivered() -> None:
    tracker = BarrierTracker(3)
    tracker.on_barrier(C0, barrier(1))
    tracker.on_barrier(C1, barrier(1))

    assert tracker.on_end_of_input(C2) == [TakeSnapshot(barrier(1))]
    assert tracker.tracked == {}


def test_end_of_input_that_completes_several_checkpoints_snapshots_the_newest_only() -> None:
    tracker = BarrierTracker(3)
    for channel in (C0, C1):
        tracker.on_barrier(channel, barrier(1))
        tracker.on_barrier(channel, barrier(2))

    assert tracker.on_end_of_input(C2) == [subsumed(1), TakeSnapshot(barrier(2))]


def test_end_of_input_while_others_are_still_awaited_completes_nothing() -> None:
    tracker = BarrierTracker(3)
    tracker.on_barrier(C0, barrier(1))

    assert tracker.on_end_of_input(C2) == []
    assert tracker.tracked == {1: {C0}}
    assert tracker.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1))]


def test_a_channel_that_ended_is_no_longer_waited_for() -> None:
    tracker = BarrierTracker(2)
    tracker.on_end_of_input(C1)

    assert tracker.on_barrier(C0, barrier(1)) == [TakeSnapshot(barrier(1))]


def test_end_of_input_on_every_channel_reports_all_inputs_ended_last() -> None:
    tracker = BarrierTracker(3)

    assert tracker.on_end_of_input(C0) == []
    assert tracker.on_end_of_input(C2) == []
    assert tracker.on_end_of_input(C1) == [AllInputsEnded()]


# ---- aborts from the coordinator -------------------------------------------------------------------


def test_coordinator_abort_stops_tracking_the_checkpoint_and_its_barriers_are_ignored() -> None:
    tracker = BarrierTracker(2)
    tracker.on_barrier(C0, barrier(1))

    assert tracker.on_abort(CheckpointId(1)) == []
    assert tracker.tracked == {}
    assert tracker.on_barrier(C1, barrier(1)) == []
    assert tracker.tracked == {}


def test_coordinator_abort_of_a_checkpoint_not_yet_seen_makes_its_barriers_ignored() -> None:
    tracker = BarrierTracker(1)

    assert tracker.on_abort(CheckpointId(2)) == []
    assert tracker.on_barrier(C0, barrier(2)) == []
    assert tracker.on_barrier(C0, barrier(3)) == [TakeSnapshot(barrier(3))]


def test_coordinator_abort_leaves_the_other_tracked_checkpoints_alone() -> None:
    tracker = BarrierTracker(2)
    tracker.on_barrier(C0, barrier(1))
    tracker.on_barrier(C0, barrier(2))

    tracker.on_abort(CheckpointId(2))

    assert tracker.tracked == {1: {C0}}
    assert tracker.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1))]


# ---- illegal events --------------------------------------------------------------------------------

Script = Callable[[BarrierTracker], object]


def _barriers_1_and_2_on_channel_0(tracker: BarrierTracker) -> None:
    tracker.on_barrier(C0, barrier(1))
    tracker.on_barrier(C0, barrier(2))


def _channel_0_ended_with_1_tracked(tracker: BarrierTracker) -> None:
    tracker.on_barrier(C1, barrier(1))
    tracker.on_end_of_input(C0)


ILLEGAL = {
    "a second barrier of a checkpoint on one channel": (
        _barriers_1_and_2_on_channel_0,
        lambda t: t.on_barrier(C0, barrier(1)),
    ),
    "a second barrier of the newest tracked checkpoint on one channel": (
        _barriers_1_and_2_on_channel_0,
        lambda t: t.on_barrier(C0, barrier(2)),
    ),
    "a barrier on a channel that ended": (_channel_0_ended_with_1_tracked, lambda t: t.on_barrier(C0, barrier(1))),
    "end of input on a channel that ended": (_channel_0_ended_with_1_tracked, lambda t: t.on_end_of_input(C0)),
    "a barrier on a channel the task does not have": (
        _barriers_1_and_2_on_channel_0,
        lambda t: t.on_barrier(ChannelIndex(3), barrier(1)),
    ),
}


@pytest.mark.parametrize(("setup", "illegal"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_an_illegal_event_raises_and_leaves_the_tracker_unchanged(setup: Script, illegal: Script) -> None:
    tracker = BarrierTracker(3)
    setup(tracker)
    before = (tracker.tracked, tracker.blocked)
    everything_before = deepcopy(vars(tracker))

    with pytest.raises(ProtocolError):
        illegal(tracker)

    assert (tracker.tracked, tracker.blocked) == before
    assert vars(tracker) == everything_before


def test_after_a_duplicate_barrier_the_tracker_still_completes_the_checkpoint() -> None:
    tracker = BarrierTracker(2)
    tracker.on_barrier(C0, barrier(1))

    with pytest.raises(ProtocolError):
        tracker.on_barrier(C0, barrier(1))

    assert tracker.tracked == {1: {C0}}
    assert tracker.on_barrier(C1, barrier(1)) == [TakeSnapshot(barrier(1))]


def test_after_an_event_on_a_closed_channel_the_open_channels_are_unchanged() -> None:
    tracker = BarrierTracker(2)
    tracker.on_barrier(C1, barrier(1))
    tracker.on_end_of_input(C0)  # completes checkpoint 1: channel 1 is the only one left

    with pytest.raises(ProtocolError):
        tracker.on_end_of_input(C0)

    # Channel 1 is still open, so it is still awaited and its end still ends the input.
    assert tracker.on_barrier(C1, barrier(2)) == [TakeSnapshot(barrier(2))]
    assert tracker.on_end_of_input(C1) == [AllInputsEnded()]


def test_a_task_with_inputs_has_at_least_one_channel() -> None:
    with pytest.raises(ValueError):
        BarrierTracker(0)
