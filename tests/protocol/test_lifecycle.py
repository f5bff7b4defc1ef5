"""The coordinator's lifecycle (``flowstate.checkpoint.lifecycle``): each state's answer to each fact,
then the lifecycle a coordinator goes through in the scripts of its rules 5 and 8."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flowstate.checkpoint.coordinator import RequestRefusal
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.lifecycle import Finished, Finishing, Lifecycle, Running, Schedule, Stopping

from .test_coordinator import SINK, all_sources_end, complete, running, two_sources

N, OTHER = CheckpointId(3), CheckpointId(2)
Fact = Callable[[Lifecycle], "Lifecycle | RequestRefusal"]

TRANSITIONS: list[tuple[str, Lifecycle, Fact, Lifecycle | RequestRefusal]] = [
    ("running: a checkpoint or savepoint is asked", Running(), lambda s: s.asked(stop=False), Running()),
    ("running: a stop is asked", Running(), lambda s: s.asked(stop=True), Stopping()),
    ("running: a periodic checkpoint is triggered", Running(), lambda s: s.triggered(N, final=False), Running()),
    ("running: the final checkpoint is triggered", Running(), lambda s: s.triggered(N, final=True), Finishing(N)),
    ("stopping: anything is asked", Stopping(), lambda s: s.asked(stop=False), RequestRefusal.STOPPING),
    ("stopping: a request asked before the stop is triggered", Stopping(),
     lambda s: s.triggered(OTHER, final=False), Stopping()),
    ("stopping: the stop's checkpoint is triggered", Stopping(), lambda s: s.triggered(N, final=True), Stopping(N)),
    ("stopping: another checkpoint fails", Stopping(N), lambda s: s.failed(OTHER), Stopping(N)),
    ("stopping: another checkpoint completes", Stopping(N), lambda s: s.completed(OTHER), Stopping(N)),
    ("stopping: the stop's checkpoint fails", Stopping(N), lambda s: s.failed(N), Running()),
    ("stopping: the stop's checkpoint completes", Stopping(N), lambda s: s.completed(N), Finished(N, stopped=True)),
    ("finishing: anything is asked", Finishing(N), lambda s: s.asked(stop=True), RequestRefusal.FINISHED),
    ("finishing: the final checkpoint fails", Finishing(N), lambda s: s.failed(N), Running()),
    ("finishing: the final checkpoint completes", Finishing(N), lambda s: s.completed(N), Finished(N, stopped=False)),
    ("finished by a stop: anything is asked", Finished(N, stopped=True), lambda s: s.asked(stop=False),
     RequestRefusal.STOPPING),
    ("finished: anything is asked", Finished(N, stopped=False), lambda s: s.asked(stop=False),
     RequestRefusal.FINISHED),
    ("finished: a late failure", Finished(N, stopped=False), lambda s: s.failed(N), Finished(N, stopped=False)),
]


@pytest.mark.parametrize(("state", "fact", "expected"), [pytest.param(*t[1:], id=t[0]) for t in TRANSITIONS])
def test_each_state_answers_a_fact_with_the_next_state(
    state: Lifecycle, fact: Fact, expected: Lifecycle | RequestRefusal,
) -> None:
    assert fact(state) == expected


@pytest.mark.parametrize("state", [Stopping(N), Finishing(N), Finished(N, stopped=True)], ids=str)
def test_a_trigger_beside_a_final_checkpoint_in_flight_or_complete_is_a_bug(state: Lifecycle) -> None:
    with pytest.raises(ValueError):
        state.triggered(CheckpointId(N + 1), final=False)


def test_the_periodic_trigger_counts_from_the_start_then_from_each_trigger_and_waits_the_pause() -> None:
    assert Schedule().periodic_due(interval=2.0, min_pause=0.0) is None
    started = Schedule().start(10.0)
    assert started.start(11.0) == started
    assert started.periodic_due(interval=2.0, min_pause=0.0) == 12.0
    assert started.triggered(12.0).periodic_due(interval=2.0, min_pause=0.0) == 14.0
    assert started.triggered(12.0).completed(13.5).periodic_due(interval=2.0, min_pause=1.0) == 14.5


# ---- the coordinator's lifecycle ---------------------------------------------------------------------


def test_a_stop_goes_from_running_to_stopping_to_finished() -> None:
    c = running(interval=None)
    assert c.lifecycle == Running()

    c.request(0.5, stop=True)
    assert c.lifecycle == Stopping(CheckpointId(1))
    complete(c, 1, 1.0)
    assert c.lifecycle == Finished(CheckpointId(1), stopped=True)
    assert c.finished and c.stopping


def test_a_stop_waiting_for_a_checkpoint_in_flight_is_stopping_without_a_checkpoint() -> None:
    c = running(interval=1.0)
    c.tick(1.0)

    c.request(1.5, stop=True)
    assert c.lifecycle == Stopping()
    complete(c, 1, 2.0)
    assert c.lifecycle == Stopping(CheckpointId(2))


def test_a_failed_stop_is_running_again() -> None:
    c = running(interval=None, tolerable_failures=1)
    c.request(0.5, stop=True)

    c.decline(SINK, CheckpointId(1), CheckpointFailureReason.TASK_FAILURE, 1.0)
    assert c.lifecycle == Running()
    assert not c.stopping


def test_the_end_of_every_source_finishes_and_a_failed_final_checkpoint_is_followed_by_another() -> None:
    c = two_sources(interval=None, tolerable_failures=1)

    all_sources_end(c, 1.0)
    assert c.lifecycle == Finishing(CheckpointId(1))
    c.decline(SINK, CheckpointId(1), CheckpointFailureReason.TASK_FAILURE, 2.0)
    assert c.lifecycle == Finishing(CheckpointId(2))
    complete(c, 2, 3.0)
    assert c.lifecycle == Finished(CheckpointId(2), stopped=False)
    assert c.finished and not c.stopping
