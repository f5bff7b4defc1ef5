"""The checkpoint coordinator (``flowstate.checkpoint.coordinator``) and the pending checkpoint it
keeps (``flowstate.checkpoint.pending``): scripted facts and the exact actions they produce.

The job in most scripts has one source, one map and one sink task. Times are plain seconds.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowstate.checkpoint.completed import CompletedCheckpoint
from flowstate.checkpoint.coordinator import (
    CheckpointConfig,
    CheckpointCoordinator,
    CoordinatorAction,
    DiscardCheckpoint,
    FailJob,
    NotifyAborted,
    NotifyComplete,
    StoreCheckpoint,
    TriggerCheckpoint,
)
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId, TaskId, task_id
from flowstate.checkpoint.pending import AckResult, PendingCheckpoint

SOURCE, MAP, SINK = task_id("source", 0), task_id("map", 0), task_id("sink", 0)
TASKS = (SOURCE, MAP, SINK)
STRANGER = task_id("elsewhere", 0)

Reason = CheckpointFailureReason


def coordinator(**config: Any) -> CheckpointCoordinator:
    return CheckpointCoordinator(CheckpointConfig(**config), TASKS, [SOURCE])


def running(**config: Any) -> CheckpointCoordinator:
    """A coordinator whose tasks started running at time 0."""
    c = coordinator(**config)
    assert c.tasks_running(0.0) == []
    return c


def trigger(n: int, at: float, *, final: bool = False) -> TriggerCheckpoint:
    return TriggerCheckpoint(CheckpointId(n), at, final)


def aborted(n: int, reason: CheckpointFailureReason) -> list[CoordinatorAction]:
    return [NotifyAborted(CheckpointId(n), reason), DiscardCheckpoint(CheckpointId(n))]


def state_of(task: TaskId, n: int) -> str:
    return f"state of {task} for checkpoint {n}"


def acknowledge_all(c: CheckpointCoordinator, n: int, now: float) -> list[CoordinatorAction]:
    """Every task acknowledges checkpoint ``n``; the actions of the last acknowledgement."""
    actions: list[CoordinatorAction] = []
    for task in c.tasks:
        result, actions = c.acknowledge(task, CheckpointId(n), state_of(task, n), now)
        assert result is AckResult.SUCCESS
    return actions


def complete(c: CheckpointCoordinator, n: int, now: float) -> list[CoordinatorAction]:
    """Every task acknowledges checkpoint ``n`` and its metadata is stored; the actions of ``stored``."""
    [store] = acknowledge_all(c, n, now)
    assert isinstance(store, StoreCheckpoint)
    return c.stored(CheckpointId(n), now)


def completed_ids(c: CheckpointCoordinator) -> list[int]:
    return [cp.checkpoint_id for cp in c.completed]


# ---- triggering ------------------------------------------------------------------------------------


def test_nothing_is_triggered_before_the_tasks_are_running() -> None:
    c = coordinator(interval=1.0)

    assert c.tick(0.0) == []
    assert c.tick(50.0) == []
    assert c.pending == {}
    assert c.next_id == 1


def test_the_first_interval_counts_from_the_moment_the_tasks_started_running() -> None:
    c = coordinator(interval=2.0)

    assert c.tasks_running(10.0) == []
    assert c.tick(11.9) == []
    assert c.tick(12.0) == [trigger(1, 12.0)]


def test_reporting_tasks_running_again_does_not_restart_the_interval() -> None:
    c = coordinator(interval=2.0)
    c.tasks_running(0.0)

    assert c.tasks_running(2.0) == [trigger(1, 2.0)]


def test_checkpoints_are_triggered_every_interval_after_the_previous_trigger() -> None:
    c = running(interval=1.0, max_concurrent=4)

    assert c.tick(1.0) == [trigger(1, 1.0)]
    assert c.tick(1.5) == []
    assert c.tick(2.0) == [trigger(2, 2.0)]
    # A late tick triggers at once, and the next interval counts from this trigger.
    assert c.tick(3.5) == [trigger(3, 3.5)]
    assert c.tick(4.4) == []
    assert c.tick(4.5) == [trigger(4, 4.5)]
    assert sorted(c.pending) == [1, 2, 3, 4]


def test_at_most_max_concurrent_checkpoints_are_pending() -> None:
    c = running(interval=1.0, max_concurrent=2)
    c.tick(1.0)
    c.tick(2.0)

    assert c.tick(3.0) == []
    assert c.tick(30.0) == []
    assert sorted(c.pending) == [1, 2]


def test_max_concurrent_one_blocks_a_second_trigger_until_the_first_is_stored() -> None:
    c = running(interval=1.0, max_concurrent=1)

    assert c.tick(1.0) == [trigger(1, 1.0)]
    assert c.tick(2.0) == []
    assert c.tick(5.0) == []
    acknowledge_all(c, 1, 5.5)
    assert c.tick(6.0) == []  # being stored still counts as in flight
    assert c.stored(CheckpointId(1), 6.5) == [NotifyComplete(CheckpointId(1), False)]
    assert c.tick(6.5) == [trigger(2, 6.5)]


def test_min_pause_delays_the_next_trigger_after_a_completion() -> None:
    c = running(interval=1.0, min_pause=3.0)
    c.tick(1.0)
    complete(c, 1, now=2.0)

    assert c.tick(2.0) == []
    assert c.tick(4.9) == []
    assert c.tick(5.0) == [trigger(2, 5.0)]


def test_the_first_checkpoint_of_a_restarted_job_continues_the_ids() -> None:
    c = CheckpointCoordinator(CheckpointConfig(interval=1.0), TASKS, [SOURCE], first_id=CheckpointId(7))
    c.tasks_running(0.0)

    assert c.tick(1.0) == [trigger(7, 1.0)]
    assert c.next_id == 8


# ---- acknowledging ---------------------------------------------------------------------------------


def test_the_first_acknowledgement_of_a_task_succeeds() -> None:
    c = running(interval=1.0)
    c.tick(1.0)

    assert c.acknowledge(SOURCE, CheckpointId(1), "handle", 1.5) == (AckResult.SUCCESS, [])
    assert c.pending[CheckpointId(1)].not_yet_acknowledged == {MAP, SINK}
    assert c.pending[CheckpointId(1)].acknowledged == {SOURCE: "handle"}


def test_a_second_acknowledgement_from_the_same_task_is_a_duplicate_and_the_first_stands() -> None:
    c = running(interval=1.0)
    c.tick(1.0)
    c.acknowledge(SOURCE, CheckpointId(1), "first", 1.5)

    assert c.acknowledge(SOURCE, CheckpointId(1), "second", 1.6) == (AckResult.DUPLICATE, [])
    c.acknowledge(MAP, CheckpointId(1), "map", 1.7)
    [store] = c.acknowledge(SINK, CheckpointId(1), "sink", 1.8)[1]
    assert isinstance(store, StoreCheckpoint)
    assert store.checkpoint.task_states == {SOURCE: "first", MAP: "map", SINK: "sink"}


def test_an_acknowledgement_after_every_task_acknowledged_is_a_duplicate() -> None:
    c = running(interval=1.0)
    c.tick(1.0)
    acknowledge_all(c, 1, 1.5)

    assert c.acknowledge(MAP, CheckpointId(1), "again", 1.6) == (AckResult.DUPLICATE, [])
    c.stored(CheckpointId(1), 2.0)
    assert c.acknowledge(MAP, CheckpointId(1), "again", 2.1) == (AckResult.DUPLICATE, [])


@pytest.mark.parametrize("n", [0, 2, 9])
def test_an_acknowledgement_for_a_checkpoint_never_triggered_is_unknown(n: int) -> None:
    c = running(interval=1.0)
    c.tick(1.0)

    assert c.acknowledge(SOURCE, CheckpointId(n), "handle", 1.5) == (AckResult.UNKNOWN, [])
    assert c.pending[CheckpointId(1)].acknowledged == {}


def test_an_acknowledgement_for_a_checkpoint_of_a_previous_run_is_unknown() -> None:
    c = CheckpointCoordinator(CheckpointConfig(interval=1.0), TASKS, [SOURCE], first_id=CheckpointId(5))
    c.tasks_running(0.0)
    c.tick(1.0)

    assert c.acknowledge(SOURCE, CheckpointId(4), "handle", 1.5) == (AckResult.UNKNOWN, [])


def test_an_acknowledgement_from_a_task_outside_the_job_is_unknown() -> None:
    c = running(interval=1.0, tolerable_failures=5)
    c.tick(1.0)

    assert c.acknowledge(STRANGER, CheckpointId(1), "handle", 1.5) == (AckResult.UNKNOWN, [])
    assert c.pending[CheckpointId(1)].not_yet_acknowledged == set(TASKS)
    c.decline(MAP, CheckpointId(1), Reason.TASK_FAILURE, 1.6)
    assert c.acknowledge(STRANGER, CheckpointId(1), "handle", 1.7) == (AckResult.UNKNOWN, [])


def test_an_acknowledgement_for_an_aborted_checkpoint_is_discarded() -> None:
    c = running(interval=1.0, tolerable_failures=5)
    c.tick(1.0)
    c.decline(MAP, CheckpointId(1), Reason.TASK_FAILURE, 1.5)

    assert c.acknowledge(SOURCE, CheckpointId(1), "handle", 1.6) == (
        AckResult.DISCARDED,
        [DiscardCheckpoint(CheckpointId(1))],
    )


def test_the_last_acknowledgement_asks_to_store_the_completed_checkpoint() -> None:
    c = running(interval=1.0)
    c.tick(1.0)
    c.acknowledge(SOURCE, CheckpointId(1), "s", 1.2)
    c.acknowledge(SINK, CheckpointId(1), "k", 1.3)

    assert c.acknowledge(MAP, CheckpointId(1), "m", 1.5) == (
        AckResult.SUCCESS,
        [
            StoreCheckpoint(
                CompletedCheckpoint(
                    checkpoint_id=CheckpointId(1),
                    trigger_time=1.0,
                    completion_time=1.5,
                    final=False,
                    task_states={SOURCE: "s", MAP: "m", SINK: "k"},
                )
            )
        ],
    )
    assert c.pending == {}


def test_a_fully_acknowledged_checkpoint_is_not_complete_until_its_metadata_is_stored() -> None:
    c = running(interval=1.0)
    c.tick(1.0)
    acknowledge_all(c, 1, 1.5)

    assert c.completed == []
    assert c.latest_completed is None


# ---- completing ------------------------------------------------------------------------------------


def test_stored_notifies_every_task_that_the_checkpoint_is_complete() -> None:
    c = running(interval=1.0)
    c.tick(1.0)
    acknowledge_all(c, 1, 1.5)

    assert c.stored(CheckpointId(1), 2.0) == [NotifyComplete(CheckpointId(1), False)]
    assert completed_ids(c) == [1]
    latest = c.latest_completed
    assert latest is not None
    assert latest.task_states == {task: state_of(task, 1) for task in TASKS}
    assert latest.duration == 0.5


def test_stored_for_a_checkpoint_that_is_not_being_stored_raises() -> None:
    c = running(interval=1.0)
    with pytest.raises(ValueError):
        c.stored(CheckpointId(1), 0.5)  # never triggered
    c.tick(1.0)
    with pytest.raises(ValueError):
        c.stored(CheckpointId(1), 1.5)  # still pending
    complete(c, 1, 2.0)
    with pytest.raises(ValueError):
        c.stored(CheckpointId(1), 2.5)  # already complete
    assert completed_ids(c) == [1]


@pytest.mark.parametrize(
    ("retained", "expected"),
    [
        (1, [[], [DiscardCheckpoint(CheckpointId(1))], [DiscardCheckpoint(CheckpointId(2))]]),
        (2, [[], [], [DiscardCheckpoint(CheckpointId(1))]]),
    ],
    ids=["retained=1", "retained=2"],
)
def test_completed_checkpoints_beyond_the_retained_newest_are_discarded(
    retained: int, expected: list[list[CoordinatorAction]]
) -> None:
    c = running(interval=1.0, retained=retained)

    for n, discards in enumerate(expected, start=1):
        assert c.tick(float(n)) == [trigger(n, float(n))]
        assert complete(c, n, n + 0.5) == [NotifyComplete(CheckpointId(n), False), *discards]

    assert completed_ids(c) == list(range(4 - retained, 4))


def test_completed_checkpoints_of_a_previous_run_count_towards_retention() -> None:
    previous = CompletedCheckpoint(CheckpointId(4), 0.0, 1.0, False, {})
    c = CheckpointCoordinator(
        CheckpointConfig(interval=1.0), TASKS, [SOURCE], first_id=CheckpointId(5), completed=[previous]
    )
    assert c.latest_completed == previous
    c.tasks_running(0.0)
    c.tick(1.0)

    assert complete(c, 5, 2.0) == [NotifyComplete(CheckpointId(5), False), DiscardCheckpoint(CheckpointId(4))]


def test_completing_a_checkpoint_subsumes_the_older_pending_ones() -> None:
    c = running(interval=1.0, max_concurrent=3, tolerable_failures=0)
    c.tick(1.0)
    c.tick(2.0)
    c.tick(3.0)
    acknowledge_all(c, 2, 3.5)

    assert c.stored(CheckpointId(2), 4.0) == [
        NotifyComplete(CheckpointId(2), False),
        *aborted(1, Reason.SUBSUMED),
    ]
    assert sorted(c.pending) == [3]
    assert c.acknowledge(SOURCE, CheckpointId(1), "late", 4.1) == (
        AckResult.DISCARDED,
        [DiscardCheckpoint(CheckpointId(1))],
    )


def test_the_metadata_of_an_older_checkpoint_stored_after_a_newer_one_completed_is_subsumed() -> None:
    # Both metadata writes run at once and the newer one finishes first: the tasks were told that 2
    # is complete, so 1 must not be announced complete after it.
    c = running(interval=1.0, max_concurrent=2, retained=2, tolerable_failures=0)
    c.tick(1.0)
    c.tick(2.0)
    acknowledge_all(c, 1, 2.5)
    acknowledge_all(c, 2, 2.6)

    assert c.stored(CheckpointId(2), 3.0) == [NotifyComplete(CheckpointId(2), False)]
    assert c.stored(CheckpointId(1), 3.5) == aborted(1, Reason.SUBSUMED)
    assert completed_ids(c) == [2]
    assert c.tick(3.5) == [trigger(3, 3.5)]


# ---- timeouts --------------------------------------------------------------------------------------


def test_a_checkpoint_not_acknowledged_before_the_timeout_expires_on_tick() -> None:
    c = running(interval=1.0, timeout=10.0, tolerable_failures=1)
    c.tick(1.0)
    c.acknowledge(SOURCE, CheckpointId(1), "s", 2.0)

    assert c.tick(10.9) == []
    assert c.tick(11.0) == [*aborted(1, Reason.EXPIRED), trigger(2, 11.0)]
    assert sorted(c.pending) == [2]
    assert c.acknowledge(MAP, CheckpointId(1), "m", 11.5)[0] is AckResult.DISCARDED


def test_every_expired_checkpoint_is_aborted_in_id_order() -> None:
    c = running(interval=1.0, timeout=5.0, max_concurrent=2, tolerable_failures=5)
    c.tick(1.0)
    c.tick(2.0)

    assert c.tick(7.5) == [*aborted(1, Reason.EXPIRED), *aborted(2, Reason.EXPIRED), trigger(3, 7.5)]


def test_a_checkpoint_whose_metadata_is_being_stored_does_not_expire() -> None:
    c = running(interval=1.0, timeout=5.0)
    c.tick(1.0)
    acknowledge_all(c, 1, 2.0)

    assert c.tick(100.0) == []
    assert c.stored(CheckpointId(1), 100.0) == [NotifyComplete(CheckpointId(1), False)]


# ---- declines, failed writes and tolerable failures ------------------------------------------------


def test_a_decline_aborts_the_checkpoint_with_the_tasks_reason() -> None:
    c = running(interval=1.0, tolerable_failures=1)
    c.tick(1.0)

    assert c.decline(SINK, CheckpointId(1), Reason.SNAPSHOT_FAILURE, 1.5) == aborted(1, Reason.SNAPSHOT_FAILURE)
    assert c.pending == {}


def test_a_decline_of_a_checkpoint_that_is_not_pending_is_ignored() -> None:
    c = running(interval=1.0, max_concurrent=2, tolerable_failures=0)
    c.tick(1.0)
    c.tick(2.0)
    acknowledge_all(c, 1, 2.5)

    assert c.decline(MAP, CheckpointId(9), Reason.TASK_FAILURE, 3.0) == []  # never triggered
    assert c.decline(MAP, CheckpointId(1), Reason.TASK_FAILURE, 3.0) == []  # being stored
    assert c.decline(STRANGER, CheckpointId(2), Reason.TASK_FAILURE, 3.0) == []  # not a task of the job
    assert sorted(c.pending) == [2]
    assert c.stored(CheckpointId(1), 3.5) == [NotifyComplete(CheckpointId(1), False)]


def test_a_failed_metadata_write_aborts_the_checkpoint() -> None:
    c = running(interval=1.0, tolerable_failures=1)
    c.tick(1.0)
    acknowledge_all(c, 1, 1.5)

    assert c.store_failed(CheckpointId(1), 2.0) == aborted(1, Reason.STORAGE_FAILURE)
    assert c.completed == []
    assert c.acknowledge(MAP, CheckpointId(1), "m", 2.1)[0] is AckResult.DISCARDED
    assert c.tick(2.0) == [trigger(2, 2.0)]


def test_store_failed_for_a_checkpoint_that_is_not_being_stored_raises() -> None:
    c = running(interval=1.0)
    c.tick(1.0)

    with pytest.raises(ValueError):
        c.store_failed(CheckpointId(1), 1.5)
    assert sorted(c.pending) == [1]


def test_with_no_tolerable_failures_the_first_failure_fails_the_job() -> None:
    c = running(interval=1.0, tolerable_failures=0)
    c.tick(1.0)

    actions = c.decline(MAP, CheckpointId(1), Reason.TASK_FAILURE, 1.5)

    assert actions[:2] == aborted(1, Reason.TASK_FAILURE)
    assert len(actions) == 3 and isinstance(actions[2], FailJob)


def test_the_job_fails_only_after_more_consecutive_failures_than_tolerable() -> None:
    c = running(interval=1.0, tolerable_failures=2)

    for n in (1, 2):
        c.tick(float(n))
        assert c.decline(MAP, CheckpointId(n), Reason.TASK_FAILURE, n + 0.5) == aborted(n, Reason.TASK_FAILURE)
    c.tick(3.0)
    actions = c.decline(MAP, CheckpointId(3), Reason.TASK_FAILURE, 3.5)

    assert actions[:2] == aborted(3, Reason.TASK_FAILURE)
    assert len(actions) == 3 and isinstance(actions[2], FailJob)


def test_a_completed_checkpoint_resets_the_count_of_failures() -> None:
    c = running(interval=1.0, tolerable_failures=1)
    c.tick(1.0)
    assert c.decline(MAP, CheckpointId(1), Reason.TASK_FAILURE, 1.5) == aborted(1, Reason.TASK_FAILURE)
    c.tick(2.0)
    complete(c, 2, 2.5)
    c.tick(3.0)
    assert c.decline(MAP, CheckpointId(3), Reason.TASK_FAILURE, 3.5) == aborted(3, Reason.TASK_FAILURE)
    c.tick(4.0)

    assert any(isinstance(a, FailJob) for a in c.decline(MAP, CheckpointId(4), Reason.TASK_FAILURE, 4.5))


@pytest.mark.parametrize(
    "failure",
    [
        lambda c: c.decline(MAP, CheckpointId(1), Reason.SNAPSHOT_FAILURE, 1.5),
        lambda c: c.tick(1.0 + 600.0),
        lambda c: (acknowledge_all(c, 1, 1.5), c.store_failed(CheckpointId(1), 2.0))[1],
    ],
    ids=["decline", "timeout", "failed metadata write"],
)
def test_every_kind_of_failure_counts(failure: Any) -> None:
    c = running(interval=1.0, timeout=600.0, tolerable_failures=0)
    c.tick(1.0)

    actions = failure(c)

    assert isinstance(actions[-1], FailJob)
    assert not any(isinstance(a, TriggerCheckpoint) for a in actions)


@pytest.mark.parametrize("reason", [Reason.SUBSUMED_BY_NEWER_BARRIER, Reason.JOB_RESTARTING])
def test_a_decline_that_is_no_failure_of_the_checkpoint_is_not_counted(reason: CheckpointFailureReason) -> None:
    c = running(interval=1.0, tolerable_failures=0)
    c.tick(1.0)

    assert c.decline(MAP, CheckpointId(1), reason, 1.5) == aborted(1, reason)


def test_after_the_job_is_failed_by_a_timeout_the_same_tick_triggers_nothing() -> None:
    c = running(interval=1.0, timeout=10.0, tolerable_failures=0)
    c.tick(1.0)

    actions = c.tick(11.0)

    assert actions[:2] == aborted(1, Reason.EXPIRED)
    assert len(actions) == 3 and isinstance(actions[2], FailJob)


# ---- the final checkpoint --------------------------------------------------------------------------

SOURCE_0, SOURCE_1 = task_id("source", 0), task_id("source", 1)


def two_sources(**config: Any) -> CheckpointCoordinator:
    c = CheckpointCoordinator(CheckpointConfig(**config), [SOURCE_0, SOURCE_1, SINK], [SOURCE_0, SOURCE_1])
    c.tasks_running(0.0)
    return c


def all_sources_end(c: CheckpointCoordinator, now: float) -> list[CoordinatorAction]:
    assert c.source_ended(SOURCE_0, now) == []
    return c.source_ended(SOURCE_1, now)


def test_the_final_checkpoint_is_triggered_as_soon_as_every_source_ended() -> None:
    c = two_sources(interval=100.0)

    assert c.source_ended(SOURCE_1, 1.0) == []
    assert c.source_ended(SOURCE_0, 2.0) == [trigger(1, 2.0, final=True)]


def test_a_source_that_ended_before_the_tasks_ran_gets_its_final_checkpoint_when_they_do() -> None:
    c = coordinator(interval=100.0)

    assert c.source_ended(SOURCE, 0.0) == []
    assert c.tasks_running(1.0) == [trigger(1, 1.0, final=True)]


def test_the_final_checkpoint_is_triggered_even_without_periodic_checkpoints() -> None:
    c = two_sources(interval=None)

    assert c.tick(1000.0) == []
    assert all_sources_end(c, 1001.0) == [trigger(1, 1001.0, final=True)]


def test_the_final_checkpoint_waits_until_concurrency_allows_it() -> None:
    c = two_sources(interval=1.0, max_concurrent=1)
    c.tick(1.0)

    assert all_sources_end(c, 1.5) == []
    assert complete(c, 1, 2.0) == [NotifyComplete(CheckpointId(1), False), trigger(2, 2.0, final=True)]


def test_min_pause_does_not_delay_the_final_checkpoint() -> None:
    c = two_sources(interval=1.0, min_pause=100.0)
    c.tick(1.0)
    complete(c, 1, 2.0)

    assert all_sources_end(c, 3.0) == [trigger(2, 3.0, final=True)]


def test_when_a_pending_checkpoint_expires_the_final_one_follows_in_the_same_tick() -> None:
    c = two_sources(interval=1.0, timeout=5.0, tolerable_failures=1)
    c.tick(1.0)
    all_sources_end(c, 2.0)

    assert c.tick(6.0) == [*aborted(1, Reason.EXPIRED), trigger(2, 6.0, final=True)]


def test_no_periodic_checkpoint_follows_the_final_one() -> None:
    c = two_sources(interval=1.0, max_concurrent=3)
    all_sources_end(c, 0.5)

    assert c.tick(1.0) == []
    assert c.tick(10.0) == []
    assert sorted(c.pending) == [1]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (lambda c: c.decline(SINK, CheckpointId(1), Reason.TASK_FAILURE, 3.0), Reason.TASK_FAILURE),
        (lambda c: c.tick(3.0), Reason.EXPIRED),
        (lambda c: (acknowledge_all(c, 1, 2.5), c.store_failed(CheckpointId(1), 3.0))[1], Reason.STORAGE_FAILURE),
    ],
    ids=["declined", "expired", "failed metadata write"],
)
def test_a_failed_final_checkpoint_is_followed_by_another_final_one(
    failure: Any, reason: CheckpointFailureReason
) -> None:
    c = two_sources(interval=1.0, timeout=2.0, tolerable_failures=1)
    all_sources_end(c, 0.5)

    assert failure(c) == [*aborted(1, reason), trigger(2, 3.0, final=True)]


def test_no_final_checkpoint_follows_a_failure_that_fails_the_job() -> None:
    c = two_sources(interval=1.0, tolerable_failures=0)
    all_sources_end(c, 0.5)

    actions = c.decline(SINK, CheckpointId(1), Reason.TASK_FAILURE, 1.0)

    assert actions[:2] == aborted(1, Reason.TASK_FAILURE)
    assert len(actions) == 3 and isinstance(actions[2], FailJob)


def test_the_job_is_finished_once_the_final_checkpoint_is_stored() -> None:
    c = two_sources(interval=1.0)
    all_sources_end(c, 0.5)
    [store] = acknowledge_all(c, 1, 1.0)

    assert isinstance(store, StoreCheckpoint) and store.checkpoint.final
    assert not c.finished
    assert c.stored(CheckpointId(1), 1.5) == [NotifyComplete(CheckpointId(1), True)]
    assert c.finished
    assert c.tick(1000.0) == []
    assert c.next_deadline(1000.0) is None
    assert c.next_id == 2


def test_a_task_that_is_not_a_source_cannot_report_the_end_of_its_input() -> None:
    c = running(interval=1.0)

    with pytest.raises(ValueError):
        c.source_ended(MAP, 1.0)


# ---- next deadline ---------------------------------------------------------------------------------


def test_next_deadline_is_the_next_trigger_or_timeout_whichever_comes_first() -> None:
    c = coordinator(interval=5.0, timeout=3.0, min_pause=4.0, tolerable_failures=5)
    assert c.next_deadline(0.0) is None

    c.tasks_running(0.0)
    assert c.next_deadline(0.0) == 5.0
    assert c.tick(4.99) == []
    assert c.tick(5.0) == [trigger(1, 5.0)]

    assert c.next_deadline(5.0) == 8.0  # the timeout of 1 comes before the trigger due at 10
    acknowledge_all(c, 1, 7.0)
    c.stored(CheckpointId(1), 7.0)

    assert c.next_deadline(7.0) == 11.0  # the pause after the completion at 7 outlasts the interval
    assert c.tick(10.99) == []
    assert c.tick(11.0) == [trigger(2, 11.0)]


def test_a_trigger_blocked_by_max_concurrent_is_not_a_deadline() -> None:
    c = running(interval=1.0, timeout=100.0)
    assert c.tick(1.0) == [trigger(1, 1.0)]

    # The next trigger would be due at 2.0, but checkpoint 1 still holds the only slot: the next
    # deadline is its timeout, so a runtime waiting on next_deadline does not spin past 2.0.
    assert c.next_deadline(2.5) == 101.0
    assert c.tick(2.5) == []
    complete(c, 1, 3.0)
    assert c.next_deadline(3.0) == 3.0  # due now that the slot is free: tick at once
    assert c.tick(3.0) == [trigger(2, 3.0)]


def test_next_deadline_is_the_timeout_when_it_comes_first() -> None:
    c = running(interval=5.0, timeout=3.0, max_concurrent=2, tolerable_failures=5)
    c.tick(5.0)

    assert c.next_deadline(5.0) == 8.0
    assert c.tick(7.99) == []
    assert c.tick(8.0) == aborted(1, Reason.EXPIRED)


def test_without_an_interval_only_timeouts_are_deadlines() -> None:
    c = two_sources(interval=None, timeout=3.0)
    assert c.next_deadline(0.0) is None

    all_sources_end(c, 1.0)

    assert c.next_deadline(1.0) == 4.0


# ---- abort all -------------------------------------------------------------------------------------


def test_abort_all_aborts_every_pending_checkpoint_in_id_order() -> None:
    c = running(interval=1.0, max_concurrent=2, tolerable_failures=0)
    c.tick(1.0)
    c.tick(2.0)

    assert c.abort_all(Reason.JOB_RESTARTING) == [
        *aborted(1, Reason.JOB_RESTARTING),
        *aborted(2, Reason.JOB_RESTARTING),
    ]
    assert c.pending == {}
    assert c.acknowledge(SOURCE, CheckpointId(2), "s", 2.5)[0] is AckResult.DISCARDED


def test_abort_all_does_not_count_as_a_failure_whatever_the_reason() -> None:
    c = running(interval=1.0, tolerable_failures=1)
    c.tick(1.0)

    assert c.abort_all(Reason.TASK_FAILURE) == aborted(1, Reason.TASK_FAILURE)
    c.tick(2.0)
    assert c.decline(MAP, CheckpointId(2), Reason.TASK_FAILURE, 2.5) == aborted(2, Reason.TASK_FAILURE)


# ---- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"interval": 0.0},
        {"interval": -1.0},
        {"timeout": 0.0},
        {"min_pause": -0.5},
        {"max_concurrent": 0},
        {"tolerable_failures": -1},
        {"retained": 0},
    ],
    ids=str,
)
def test_an_invalid_configuration_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CheckpointConfig(**config)


def test_the_smallest_valid_configuration_is_accepted() -> None:
    config = CheckpointConfig(
        interval=None, timeout=0.001, min_pause=0.0, max_concurrent=1, tolerable_failures=0, retained=1
    )

    assert config.interval is None


def test_every_source_must_be_a_task_of_the_job() -> None:
    with pytest.raises(ValueError):
        CheckpointCoordinator(CheckpointConfig(), [MAP, SINK], [SOURCE])


def test_checkpoint_ids_start_at_one() -> None:
    with pytest.raises(ValueError):
        CheckpointCoordinator(CheckpointConfig(), TASKS, [SOURCE], first_id=CheckpointId(0))


# ---- the pending checkpoint ------------------------------------------------------------------------


def _pending() -> PendingCheckpoint:
    return PendingCheckpoint(CheckpointId(3), trigger_time=10.0, final=False, not_yet_acknowledged=frozenset(TASKS))


def test_acknowledging_a_pending_checkpoint_returns_a_new_value_and_leaves_the_old_one_unchanged() -> None:
    before = _pending()

    after, result = before.acknowledge(SOURCE, "handle")

    assert result is AckResult.SUCCESS
    assert after.acknowledged == {SOURCE: "handle"}
    assert after.not_yet_acknowledged == {MAP, SINK}
    assert before == _pending()


def test_a_pending_checkpoint_becomes_completed_only_once_fully_acknowledged() -> None:
    pending = _pending()
    for task in (SOURCE, MAP):
        pending, _ = pending.acknowledge(task, task)
    with pytest.raises(ValueError):
        pending.to_completed(11.0)

    pending, _ = pending.acknowledge(SINK, SINK)
    completed = pending.to_completed(12.5)

    assert pending.fully_acknowledged
    assert completed == CompletedCheckpoint(CheckpointId(3), 10.0, 12.5, False, {t: t for t in TASKS})
    assert completed.duration == 2.5
