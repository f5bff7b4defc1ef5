"""Unaligned checkpoints (``flowstate.checkpoint.unaligned``): scripted barrier sequences and the exact
actions the task must execute, in order.

Each test reads as a script: the event that arrives on a channel, then the list of actions the
handler answers with. Channels are numbered from 0; checkpoint ids from 1. ``barrier(n)`` is the
barrier of checkpoint ``n`` as it travels behind the data; ``unaligned(n)`` is the same barrier put
ahead of the data, which is also what the task forwards when it snapshots without aligning.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from itertools import permutations

import pytest

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
    ResumeChannels,
    StartCapture,
    StopCapture,
    TakeSnapshot,
)
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId
from flowstate.checkpoint.unaligned import (
    Aligning,
    Capturing,
    Idle,
    UnalignedBarrierHandler,
)

C0, C1, C2 = ChannelIndex(0), ChannelIndex(1), ChannelIndex(2)
SUBSUMED_BY_NEWER_BARRIER = CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER
CANCELLED_BY_COORDINATOR = CheckpointFailureReason.CANCELLED_BY_COORDINATOR
TIMEOUT = 5.0


def barrier(n: int, *, final: bool = False) -> CheckpointBarrier:
    """The barrier of checkpoint ``n``, triggered at time ``10 n``, behind the data."""
    return CheckpointBarrier(CheckpointId(n), timestamp=10.0 * n, final=final)


def unaligned(n: int) -> CheckpointBarrier:
    """The barrier of checkpoint ``n``, ahead of the data it overtook."""
    return CheckpointBarrier(CheckpointId(n), timestamp=10.0 * n, unaligned=True)


def cid(n: int) -> CheckpointId:
    return CheckpointId(n)


def capture(n: int, *channels: ChannelIndex) -> StartCapture:
    return StartCapture(CheckpointId(n), tuple(channels))


def resume(*channels: ChannelIndex) -> ResumeChannels:
    return ResumeChannels(tuple(channels))


def arrived(channel: ChannelIndex) -> list[object]:
    """What the barrier of a channel being captured answers when it is not the last one."""
    return [CaptureOvertaken(channel), StopCapture(channel)]


def subsumed(n: int) -> AbortCheckpoint:
    return AbortCheckpoint(CheckpointId(n), SUBSUMED_BY_NEWER_BARRIER)


# ---- unaligned: the first barrier --------------------------------------------------------------------


@pytest.mark.parametrize(("first", "others"), [(C0, (C1, C2)), (C1, (C0, C2)), (C2, (C0, C1))], ids=str)
def test_the_first_barrier_snapshots_at_once_and_captures_the_other_channels(
    first: ChannelIndex, others: tuple[ChannelIndex, ...]
) -> None:
    handler = UnalignedBarrierHandler(3)

    assert handler.on_barrier(first, unaligned(1)) == [
        TakeSnapshot(unaligned(1)),
        capture(1, *others),
        CaptureOvertaken(first),
    ]
    assert handler.blocked == frozenset()
    assert handler.capturing == set(others)
    assert handler.state == Capturing(unaligned(1), frozenset({first}))


def test_a_barrier_that_overtook_nothing_is_still_forwarded_as_unaligned() -> None:
    # Without an alignment timeout every checkpoint is unaligned: the task forwards the barrier ahead
    # of its queued output, whatever the upstream did.
    handler = UnalignedBarrierHandler(3)

    assert handler.on_barrier(C0, barrier(1)) == [TakeSnapshot(unaligned(1)), capture(1, C1, C2), CaptureOvertaken(C0)]


def test_the_forwarded_barrier_keeps_the_id_and_timestamp_of_the_barrier_that_arrived() -> None:
    handler = UnalignedBarrierHandler(2)
    arriving = CheckpointBarrier(CheckpointId(7), timestamp=12.5)

    [snapshot, *_] = handler.on_barrier(C1, arriving)

    assert snapshot == TakeSnapshot(CheckpointBarrier(CheckpointId(7), timestamp=12.5, unaligned=True))


def test_a_task_with_one_input_snapshots_records_what_was_overtaken_and_finishes_at_once() -> None:
    handler = UnalignedBarrierHandler(1)

    assert handler.on_barrier(C0, unaligned(1)) == [
        TakeSnapshot(unaligned(1)),
        CaptureOvertaken(C0),
        FinishCapture(cid(1)),
    ]
    assert handler.state == Idle()
    assert handler.capturing == frozenset()
    assert handler.on_barrier(C0, unaligned(2)) == [
        TakeSnapshot(unaligned(2)),
        CaptureOvertaken(C0),
        FinishCapture(cid(2)),
    ]


# ---- unaligned: the other barriers -------------------------------------------------------------------


def test_each_later_barrier_records_what_it_overtook_and_stops_the_capture_of_its_channel() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))

    assert handler.on_barrier(C1, unaligned(1)) == [CaptureOvertaken(C1), StopCapture(C1)]
    assert handler.capturing == {C2}
    assert handler.state == Capturing(unaligned(1), frozenset({C0, C1}))


def test_the_last_barrier_finishes_the_capture() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))
    handler.on_barrier(C1, unaligned(1))

    assert handler.on_barrier(C2, unaligned(1)) == [CaptureOvertaken(C2), StopCapture(C2), FinishCapture(cid(1))]
    assert handler.capturing == frozenset()
    assert handler.state == Idle()


@pytest.mark.parametrize("order", list(permutations([C0, C1, C2])), ids=str)
def test_barriers_may_arrive_in_any_channel_order(order: tuple[ChannelIndex, ...]) -> None:
    handler = UnalignedBarrierHandler(3)
    first, second, last = order

    assert handler.on_barrier(first, unaligned(1)) == [
        TakeSnapshot(unaligned(1)),
        capture(1, *sorted([second, last])),
        CaptureOvertaken(first),
    ]
    assert handler.on_barrier(second, barrier(1)) == arrived(second)
    assert handler.capturing == {last}
    assert handler.on_barrier(last, unaligned(1)) == [*arrived(last), FinishCapture(cid(1))]


def test_consecutive_checkpoints_are_captured_one_after_the_other() -> None:
    handler = UnalignedBarrierHandler(2)

    assert handler.on_barrier(C1, unaligned(1)) == [TakeSnapshot(unaligned(1)), capture(1, C0), CaptureOvertaken(C1)]
    assert handler.on_barrier(C0, unaligned(1)) == [*arrived(C0), FinishCapture(cid(1))]
    assert handler.on_barrier(C0, unaligned(2)) == [TakeSnapshot(unaligned(2)), capture(2, C1), CaptureOvertaken(C0)]
    assert handler.on_barrier(C1, unaligned(2)) == [*arrived(C1), FinishCapture(cid(2))]


# ---- unaligned: end of input -------------------------------------------------------------------------


def test_end_of_input_of_a_channel_being_captured_stops_its_capture() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))

    assert handler.on_end_of_input(C1) == [StopCapture(C1)]
    assert handler.capturing == {C2}
    assert handler.open_channels == {C0, C2}


def test_end_of_input_of_the_last_channel_being_captured_finishes_the_capture() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))
    handler.on_barrier(C2, unaligned(1))

    assert handler.on_end_of_input(C1) == [StopCapture(C1), FinishCapture(cid(1))]
    assert handler.state == Idle()


def test_end_of_input_of_a_channel_whose_barrier_arrived_stops_nothing_and_finishes_nothing() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))

    assert handler.on_end_of_input(C0) == []
    assert handler.capturing == {C1, C2}
    assert handler.on_barrier(C1, unaligned(1)) == arrived(C1)
    assert handler.on_barrier(C2, unaligned(1)) == [*arrived(C2), FinishCapture(cid(1))]


def test_the_capture_finished_by_end_of_input_comes_before_all_inputs_ended() -> None:
    handler = UnalignedBarrierHandler(2)
    handler.on_barrier(C0, unaligned(1))

    assert handler.on_end_of_input(C1) == [StopCapture(C1), FinishCapture(cid(1))]
    assert handler.on_barrier(C0, unaligned(2)) == [
        TakeSnapshot(unaligned(2)),
        CaptureOvertaken(C0),
        FinishCapture(cid(2)),
    ]
    assert handler.on_end_of_input(C0) == [AllInputsEnded()]


def test_a_channel_that_ended_is_not_captured() -> None:
    handler = UnalignedBarrierHandler(3)

    assert handler.on_end_of_input(C1) == []
    assert handler.on_barrier(C2, unaligned(1)) == [TakeSnapshot(unaligned(1)), capture(1, C0), CaptureOvertaken(C2)]
    assert handler.on_barrier(C0, unaligned(1)) == [*arrived(C0), FinishCapture(cid(1))]


# ---- unaligned: newer, late and older barriers -------------------------------------------------------


def test_a_newer_barrier_during_a_capture_aborts_and_discards_it_then_captures_the_newer() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))

    assert handler.on_barrier(C1, unaligned(2)) == [
        subsumed(1),
        DiscardCapture(cid(1)),
        TakeSnapshot(unaligned(2)),
        capture(2, C0, C2),
        CaptureOvertaken(C1),
    ]
    assert handler.state == Capturing(unaligned(2), frozenset({C1}))
    assert handler.capturing == {C0, C2}


def test_a_newer_barrier_on_a_channel_whose_older_barrier_arrived_captures_the_others_again() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))
    handler.on_barrier(C1, unaligned(1))

    assert handler.on_barrier(C1, unaligned(2)) == [
        subsumed(1),
        DiscardCapture(cid(1)),
        TakeSnapshot(unaligned(2)),
        capture(2, C0, C2),
        CaptureOvertaken(C1),
    ]


def test_after_a_newer_barrier_the_older_checkpoint_is_late_and_the_newer_one_finishes() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))
    handler.on_barrier(C1, unaligned(2))

    assert handler.on_barrier(C2, unaligned(1)) == []
    assert handler.capturing == {C0, C2}
    assert handler.on_barrier(C0, unaligned(2)) == arrived(C0)
    assert handler.on_barrier(C2, unaligned(2)) == [*arrived(C2), FinishCapture(cid(2))]


def test_a_barrier_older_than_the_capture_is_ignored_and_its_channel_is_still_captured() -> None:
    # Channel 1 still holds records ahead of its barrier 2: they belong to checkpoint 2's channel state.
    handler = UnalignedBarrierHandler(2)
    handler.on_barrier(C0, unaligned(2))

    assert handler.on_barrier(C1, barrier(1)) == []
    assert handler.capturing == {C1}
    assert handler.on_barrier(C1, barrier(2)) == [*arrived(C1), FinishCapture(cid(2))]


def test_a_barrier_of_a_checkpoint_already_finished_is_ignored() -> None:
    handler = UnalignedBarrierHandler(2)
    handler.on_barrier(C0, unaligned(2))
    handler.on_barrier(C1, unaligned(2))

    assert handler.on_barrier(C0, unaligned(2)) == []
    assert handler.on_barrier(C1, unaligned(1)) == []
    assert handler.state == Idle()
    assert handler.capturing == frozenset()


# ---- unaligned: aborts from the coordinator ----------------------------------------------------------


def test_coordinator_abort_during_a_capture_discards_it() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))

    assert handler.on_abort(cid(1)) == [DiscardCapture(cid(1))]
    assert handler.state == Idle()
    assert handler.capturing == frozenset()


def test_after_a_coordinator_abort_the_barriers_of_that_checkpoint_are_ignored() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))
    handler.on_abort(cid(1))

    assert handler.on_barrier(C1, unaligned(1)) == []
    assert handler.on_barrier(C2, unaligned(1)) == []
    assert handler.capturing == frozenset()
    assert handler.on_barrier(C1, unaligned(2)) == [
        TakeSnapshot(unaligned(2)),
        capture(2, C0, C2),
        CaptureOvertaken(C1),
    ]


def test_coordinator_abort_of_a_newer_checkpoint_declines_and_discards_the_capture() -> None:
    handler = UnalignedBarrierHandler(2)
    handler.on_barrier(C0, unaligned(3))

    assert handler.on_abort(cid(5)) == [AbortCheckpoint(cid(3), CANCELLED_BY_COORDINATOR), DiscardCapture(cid(3))]
    assert handler.on_barrier(C1, unaligned(3)) == []
    assert handler.on_barrier(C1, unaligned(5)) == []
    assert handler.on_barrier(C1, unaligned(6)) == [TakeSnapshot(unaligned(6)), capture(6, C0), CaptureOvertaken(C1)]


def test_coordinator_abort_of_an_older_checkpoint_leaves_the_capture_alone() -> None:
    handler = UnalignedBarrierHandler(2)
    handler.on_barrier(C0, unaligned(2))

    assert handler.on_abort(cid(1)) == []
    assert handler.capturing == {C1}
    assert handler.on_barrier(C1, unaligned(2)) == [*arrived(C1), FinishCapture(cid(2))]


def test_coordinator_abort_of_a_checkpoint_not_yet_seen_makes_its_barriers_late() -> None:
    handler = UnalignedBarrierHandler(2)

    assert handler.on_abort(cid(1)) == []
    assert handler.on_barrier(C0, unaligned(1)) == []
    assert handler.state == Idle()


# ---- unaligned: the final checkpoint (rule 7) ------------------------------------------------------


def test_the_final_barrier_aligns_even_without_an_alignment_timeout() -> None:
    handler = UnalignedBarrierHandler(3)

    assert handler.on_barrier(C0, barrier(4, final=True)) == [BlockChannel(C0)]
    assert handler.on_barrier(C1, barrier(4, final=True)) == [BlockChannel(C1)]
    assert handler.capturing == frozenset()
    assert handler.tick(1000.0) == []
    assert handler.on_barrier(C2, barrier(4, final=True)) == [TakeSnapshot(barrier(4, final=True)), resume(C0, C1)]


def test_the_final_barrier_of_a_task_with_one_input_snapshots_aligned_at_once() -> None:
    handler = UnalignedBarrierHandler(1)

    assert handler.on_barrier(C0, barrier(4, final=True)) == [TakeSnapshot(barrier(4, final=True))]


def test_the_final_barrier_during_a_capture_aborts_it_and_aligns() -> None:
    handler = UnalignedBarrierHandler(2)
    handler.on_barrier(C0, unaligned(3))

    assert handler.on_barrier(C0, barrier(4, final=True)) == [subsumed(3), DiscardCapture(cid(3)), BlockChannel(C0)]
    assert handler.on_barrier(C1, barrier(4, final=True)) == [TakeSnapshot(barrier(4, final=True)), resume(C0)]


def savepoint(n: int) -> CheckpointBarrier:
    """The barrier of savepoint ``n``, triggered at time ``10 n``, behind the data."""
    return CheckpointBarrier(CheckpointId(n), timestamp=10.0 * n, savepoint=True)


def test_a_savepoint_barrier_aligns_even_without_an_alignment_timeout() -> None:
    handler = UnalignedBarrierHandler(2)

    assert handler.on_barrier(C0, savepoint(4)) == [BlockChannel(C0)]
    assert handler.capturing == frozenset()
    assert handler.on_barrier(C1, savepoint(4)) == [TakeSnapshot(savepoint(4)), resume(C0)]


def test_a_savepoint_alignment_never_switches_to_unaligned_at_the_timeout() -> None:
    handler = UnalignedBarrierHandler(2, alignment_timeout=TIMEOUT)

    assert handler.on_barrier(C0, savepoint(4), now=1000.0) == [BlockChannel(C0)]
    assert handler.tick(5000.0) == []
    assert handler.on_barrier(C1, savepoint(4), now=5000.0) == [TakeSnapshot(savepoint(4)), resume(C0)]


# ---- aligned with a timeout ----------------------------------------------------------------------------


def aligning(at: float = 10.0) -> UnalignedBarrierHandler:
    """A task with 3 inputs and an alignment timeout whose channel 0 delivered barrier 1 at ``at``."""
    handler = UnalignedBarrierHandler(3, alignment_timeout=TIMEOUT)
    assert handler.on_barrier(C0, barrier(1), now=at) == [BlockChannel(C0)]
    return handler


def test_with_a_timeout_a_barrier_behind_the_data_blocks_its_channel() -> None:
    handler = aligning(at=10.0)

    assert handler.blocked == {C0}
    assert handler.capturing == frozenset()
    assert handler.state == Aligning(barrier(1), frozenset({C0}), 10.0)


def test_a_tick_before_the_timeout_does_nothing() -> None:
    handler = aligning(at=10.0)

    assert handler.tick(10.0) == []
    assert handler.tick(14.9) == []
    assert handler.state == Aligning(barrier(1), frozenset({C0}), 10.0)


def test_at_the_timeout_the_alignment_switches_to_unaligned() -> None:
    handler = aligning(at=10.0)

    assert handler.tick(15.0) == [TakeSnapshot(unaligned(1)), resume(C0), capture(1, C1, C2)]
    assert handler.blocked == frozenset()
    assert handler.capturing == {C1, C2}
    assert handler.state == Capturing(unaligned(1), frozenset({C0}))


def test_after_the_switch_the_other_barriers_finish_the_capture_as_in_an_unaligned_checkpoint() -> None:
    handler = aligning(at=10.0)
    assert handler.on_barrier(C1, barrier(1), now=11.0) == [BlockChannel(C1)]
    assert handler.tick(15.0) == [TakeSnapshot(unaligned(1)), resume(C0, C1), capture(1, C2)]

    assert handler.tick(30.0) == []
    assert handler.on_barrier(C2, barrier(1), now=31.0) == [*arrived(C2), FinishCapture(cid(1))]
    assert handler.state == Idle()


def test_the_timeout_counts_from_the_start_of_the_checkpoint_not_from_the_first_barrier() -> None:
    # Checkpoint 1 started at 10.0; its first barrier reached this task only at 13.0 (it was queued
    # behind data), yet the switch comes 5 s after the start.
    handler = UnalignedBarrierHandler(3, alignment_timeout=TIMEOUT)
    assert handler.on_barrier(C0, barrier(1), now=13.0) == [BlockChannel(C0)]

    assert handler.tick(14.9) == []
    assert handler.tick(15.0) == [TakeSnapshot(unaligned(1)), resume(C0), capture(1, C1, C2)]


def test_a_first_barrier_that_arrives_after_the_timeout_switches_at_once() -> None:
    handler = UnalignedBarrierHandler(3, alignment_timeout=TIMEOUT)

    assert handler.on_barrier(C1, barrier(1), now=15.0) == [TakeSnapshot(unaligned(1)), capture(1, C0, C2)]
    assert handler.blocked == frozenset()
    assert handler.capturing == {C0, C2}


def test_an_unaligned_barrier_from_an_upstream_that_switched_switches_at_once() -> None:
    handler = aligning(at=10.0)

    assert handler.on_barrier(C1, unaligned(1), now=11.0) == [
        TakeSnapshot(unaligned(1)),
        resume(C0),
        capture(1, C2),
        CaptureOvertaken(C1),
    ]
    assert handler.capturing == {C2}
    assert handler.on_barrier(C2, barrier(1), now=12.0) == [*arrived(C2), FinishCapture(cid(1))]


def test_an_unaligned_barrier_as_the_last_one_switches_and_finishes_at_once() -> None:
    handler = aligning(at=10.0)
    handler.on_barrier(C1, barrier(1), now=11.0)

    assert handler.on_barrier(C2, unaligned(1), now=12.0) == [
        TakeSnapshot(unaligned(1)),
        resume(C0, C1),
        CaptureOvertaken(C2),
        FinishCapture(cid(1)),
    ]


def test_with_a_timeout_an_unaligned_first_barrier_captures_without_aligning() -> None:
    handler = UnalignedBarrierHandler(3, alignment_timeout=TIMEOUT)

    assert handler.on_barrier(C2, unaligned(1), now=10.0) == [
        TakeSnapshot(unaligned(1)),
        capture(1, C0, C1),
        CaptureOvertaken(C2),
    ]
    assert handler.blocked == frozenset()


def test_an_alignment_that_completes_before_the_timeout_is_an_ordinary_aligned_snapshot() -> None:
    handler = aligning(at=10.0)

    assert handler.on_barrier(C1, barrier(1), now=12.0) == [BlockChannel(C1)]
    assert handler.on_barrier(C2, barrier(1), now=14.9) == [TakeSnapshot(barrier(1)), resume(C0, C1)]
    assert handler.state == Idle()
    assert handler.tick(100.0) == []


def test_with_a_timeout_a_task_with_one_input_snapshots_aligned_at_once() -> None:
    handler = UnalignedBarrierHandler(1, alignment_timeout=TIMEOUT)

    assert handler.on_barrier(C0, barrier(1), now=10.0) == [TakeSnapshot(barrier(1))]


def test_end_of_input_on_the_last_awaited_channel_completes_the_alignment_aligned() -> None:
    handler = aligning(at=10.0)
    handler.on_barrier(C1, barrier(1), now=11.0)

    assert handler.on_end_of_input(C2) == [TakeSnapshot(barrier(1)), resume(C0, C1)]
    assert handler.tick(100.0) == []


def test_a_channel_that_ended_during_the_alignment_is_not_captured_after_the_switch() -> None:
    handler = aligning(at=10.0)

    assert handler.on_end_of_input(C1) == []
    assert handler.tick(15.0) == [TakeSnapshot(unaligned(1)), resume(C0), capture(1, C2)]


def test_a_newer_barrier_during_the_alignment_aborts_it_and_times_out_from_its_own_start() -> None:
    handler = aligning(at=10.0)

    assert handler.on_barrier(C1, barrier(2), now=20.0) == [subsumed(1), resume(C0), BlockChannel(C1)]
    assert handler.tick(24.9) == []  # checkpoint 2 started at 20.0
    assert handler.tick(25.0) == [TakeSnapshot(unaligned(2)), resume(C1), capture(2, C0, C2)]


def test_a_newer_unaligned_barrier_during_the_alignment_aborts_it_and_captures_the_newer() -> None:
    handler = aligning(at=10.0)

    assert handler.on_barrier(C1, unaligned(2), now=11.0) == [
        subsumed(1),
        resume(C0),
        TakeSnapshot(unaligned(2)),
        capture(2, C0, C2),
        CaptureOvertaken(C1),
    ]


def test_coordinator_abort_during_the_alignment_resumes_and_nothing_switches_later() -> None:
    handler = aligning(at=10.0)

    assert handler.on_abort(cid(1)) == [resume(C0)]
    assert handler.tick(100.0) == []
    assert handler.on_barrier(C1, barrier(1), now=101.0) == []


def test_a_zero_timeout_makes_every_checkpoint_start_unaligned() -> None:
    handler = UnalignedBarrierHandler(2, alignment_timeout=0.0)

    assert handler.on_barrier(C0, barrier(1), now=10.0) == [TakeSnapshot(unaligned(1)), capture(1, C1)]
    assert handler.blocked == frozenset()


# ---- aligned with a timeout: the final checkpoint (rule 7) -----------------------------------------


def test_the_final_barrier_never_switches_even_long_after_the_timeout() -> None:
    handler = UnalignedBarrierHandler(3, alignment_timeout=TIMEOUT)
    assert handler.on_barrier(C0, barrier(4, final=True), now=10.0) == [BlockChannel(C0)]

    assert handler.tick(15.0) == []
    assert handler.tick(1000.0) == []
    assert handler.state == Aligning(barrier(4, final=True), frozenset({C0}), barrier(4).timestamp)
    assert handler.on_barrier(C1, barrier(4, final=True), now=1001.0) == [BlockChannel(C1)]
    assert handler.on_barrier(C2, barrier(4, final=True), now=1002.0) == [
        TakeSnapshot(barrier(4, final=True)),
        resume(C0, C1),
    ]


def test_an_unaligned_barrier_does_not_switch_the_final_checkpoint_either() -> None:
    handler = UnalignedBarrierHandler(2, alignment_timeout=TIMEOUT)
    handler.on_barrier(C0, barrier(4, final=True), now=10.0)
    overtaking_final = CheckpointBarrier(CheckpointId(4), timestamp=40.0, final=True, unaligned=True)

    assert handler.on_barrier(C1, overtaking_final, now=11.0) == [TakeSnapshot(barrier(4, final=True)), resume(C0)]


# ---- illegal events ----------------------------------------------------------------------------------

Script = Callable[[UnalignedBarrierHandler], object]


FINAL = barrier(4, final=True)


def _aligning_on_channel_0(handler: UnalignedBarrierHandler) -> None:
    handler.on_barrier(C0, barrier(1), now=10.0)


def _aligning_the_final_barrier_on_channel_0(handler: UnalignedBarrierHandler) -> None:
    handler.on_barrier(C0, FINAL, now=10.0)


def _capturing_after_channel_0(handler: UnalignedBarrierHandler) -> None:
    handler.on_barrier(C0, unaligned(1), now=10.0)


def _capturing_with_channel_1_ended(handler: UnalignedBarrierHandler) -> None:
    handler.on_barrier(C0, unaligned(1), now=10.0)
    handler.on_end_of_input(C1)


def _aligning_with_channel_1_ended(handler: UnalignedBarrierHandler) -> None:
    handler.on_end_of_input(C1)
    handler.on_barrier(C0, barrier(1), now=10.0)


WITH_TIMEOUT = {  # channel 0 is blocked by an aligned barrier only when there is an alignment timeout
    "the same barrier again on a blocked channel": (_aligning_on_channel_0, lambda h: h.on_barrier(C0, barrier(1))),
    "an unaligned barrier on a blocked channel": (_aligning_on_channel_0, lambda h: h.on_barrier(C0, unaligned(1))),
    "a newer barrier on a blocked channel": (_aligning_on_channel_0, lambda h: h.on_barrier(C0, unaligned(2))),
    "end of input on a blocked channel": (_aligning_on_channel_0, lambda h: h.on_end_of_input(C0)),
    "a barrier on a channel that ended, while aligning": (
        _aligning_with_channel_1_ended,
        lambda h: h.on_barrier(C1, barrier(1)),
    ),
    "end of input on a channel the task does not have, while aligning": (
        _aligning_on_channel_0,
        lambda h: h.on_end_of_input(ChannelIndex(-1)),
    ),
}
IN_EITHER_MODE = {
    "a barrier on a channel blocked by the final barrier": (
        _aligning_the_final_barrier_on_channel_0,
        lambda h: h.on_barrier(C0, FINAL),
    ),
    "end of input on a channel blocked by the final barrier": (
        _aligning_the_final_barrier_on_channel_0,
        lambda h: h.on_end_of_input(C0),
    ),
    "a second barrier of the checkpoint on a channel that delivered it": (
        _capturing_after_channel_0,
        lambda h: h.on_barrier(C0, unaligned(1)),
    ),
    "a barrier on a channel that ended, while capturing": (
        _capturing_with_channel_1_ended,
        lambda h: h.on_barrier(C1, unaligned(1)),
    ),
    "a newer barrier on a channel that ended, while capturing": (
        _capturing_with_channel_1_ended,
        lambda h: h.on_barrier(C1, unaligned(2)),
    ),
    "end of input on a channel that ended": (_capturing_with_channel_1_ended, lambda h: h.on_end_of_input(C1)),
    "a barrier on a channel the task does not have": (
        _capturing_after_channel_0,
        lambda h: h.on_barrier(ChannelIndex(3), unaligned(2)),
    ),
}
ILLEGAL = [
    *(pytest.param(TIMEOUT, setup, illegal, id=f"{name} (aligned with a timeout)")
      for name, (setup, illegal) in WITH_TIMEOUT.items()),
    *(pytest.param(timeout, setup, illegal, id=f"{name} ({mode})")
      for name, (setup, illegal) in IN_EITHER_MODE.items()
      for timeout, mode in [(None, "unaligned"), (TIMEOUT, "aligned with a timeout")]),
]


@pytest.mark.parametrize(("alignment_timeout", "setup", "illegal"), ILLEGAL)
def test_an_illegal_event_raises_and_leaves_the_handler_unchanged(
    alignment_timeout: float | None, setup: Script, illegal: Script
) -> None:
    handler = UnalignedBarrierHandler(3, alignment_timeout)
    setup(handler)
    before = (handler.state, handler.blocked, handler.open_channels, handler.capturing)
    everything_before = deepcopy(vars(handler))

    with pytest.raises(ProtocolError):
        illegal(handler)

    assert (handler.state, handler.blocked, handler.open_channels, handler.capturing) == before
    assert vars(handler) == everything_before


def test_after_a_refused_newer_barrier_on_a_blocked_channel_the_alignment_still_completes() -> None:
    handler = UnalignedBarrierHandler(3, alignment_timeout=TIMEOUT)
    handler.on_barrier(C0, barrier(1), now=10.0)

    with pytest.raises(ProtocolError):
        handler.on_barrier(C0, unaligned(2), now=11.0)

    # Had the refused barrier 2 been taken into account, checkpoint 1 would be aborted and its
    # barriers now late.
    assert handler.on_barrier(C1, barrier(1), now=12.0) == [BlockChannel(C1)]
    assert handler.on_barrier(C2, barrier(1), now=13.0) == [TakeSnapshot(barrier(1)), resume(C0, C1)]


def test_after_a_refused_end_of_input_on_a_blocked_channel_it_is_still_open_and_switched_at_the_timeout() -> None:
    handler = UnalignedBarrierHandler(2, alignment_timeout=TIMEOUT)
    handler.on_barrier(C0, barrier(1), now=10.0)

    with pytest.raises(ProtocolError):
        handler.on_end_of_input(C0)

    assert handler.open_channels == {C0, C1}
    assert handler.tick(15.0) == [TakeSnapshot(unaligned(1)), resume(C0), capture(1, C1)]
    assert handler.on_end_of_input(C0) == []


def test_after_a_refused_second_barrier_the_capture_goes_on() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))

    with pytest.raises(ProtocolError):
        handler.on_barrier(C0, unaligned(1))

    assert handler.capturing == {C1, C2}
    assert handler.on_barrier(C1, unaligned(1)) == arrived(C1)
    assert handler.on_barrier(C2, unaligned(1)) == [*arrived(C2), FinishCapture(cid(1))]


def test_after_an_event_on_a_channel_that_ended_the_capture_of_the_others_goes_on() -> None:
    handler = UnalignedBarrierHandler(3)
    handler.on_barrier(C0, unaligned(1))
    handler.on_end_of_input(C1)

    with pytest.raises(ProtocolError):
        handler.on_barrier(C1, unaligned(2))
    with pytest.raises(ProtocolError):
        handler.on_end_of_input(C1)

    assert handler.capturing == {C2}
    assert handler.on_barrier(C2, unaligned(1)) == [*arrived(C2), FinishCapture(cid(1))]


# ---- construction ------------------------------------------------------------------------------------


def test_a_task_with_inputs_has_at_least_one_channel() -> None:
    with pytest.raises(ValueError):
        UnalignedBarrierHandler(0)


def test_the_alignment_timeout_is_not_negative() -> None:
    with pytest.raises(ValueError):
        UnalignedBarrierHandler(2, alignment_timeout=-1.0)
