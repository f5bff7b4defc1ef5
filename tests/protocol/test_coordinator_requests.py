"""On-demand checkpoints, savepoints and stops in the checkpoint coordinator (rules 6-8 of
``flowstate.checkpoint.coordinator``): scripted requests and the exact actions they produce."""

from __future__ import annotations

from flowstate.checkpoint.coordinator import (
    DiscardCheckpoint,
    NotifyAborted,
    NotifyComplete,
    RequestRefusal,
    StoreCheckpoint,
    TriggerCheckpoint,
)
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId, RequestId

from .test_coordinator import (
    SINK,
    SOURCE,
    aborted,
    acknowledge_all,
    all_sources_end,
    complete,
    completed_ids,
    coordinator,
    running,
    trigger,
    two_sources,
)

Reason = CheckpointFailureReason


def requested(n: int, at: float, request: int, *, savepoint: bool = False, stop: bool = False) -> TriggerCheckpoint:
    return TriggerCheckpoint(CheckpointId(n), at, stop, savepoint, RequestId(request))


# ---- on-demand checkpoints ---------------------------------------------------------------------------


def test_a_requested_checkpoint_is_triggered_at_once_whatever_the_interval_and_pause() -> None:
    c = running(interval=100.0, min_pause=50.0)

    assert c.request(1.0) == (RequestId(1), [requested(1, 1.0, 1)])
    complete(c, 1, 2.0)
    assert c.request(3.0) == (RequestId(2), [requested(2, 3.0, 2)])


def test_a_request_before_the_tasks_run_is_triggered_when_they_do() -> None:
    c = coordinator(interval=None)

    assert c.request(0.0) == (RequestId(1), [])
    assert c.tasks_running(1.0) == [requested(1, 1.0, 1)]


def test_a_requested_checkpoint_waits_for_a_free_slot_and_goes_before_the_periodic_ones() -> None:
    c = running(interval=1.0, max_concurrent=1)
    assert c.tick(1.0) == [trigger(1, 1.0)]

    assert c.request(1.5) == (RequestId(1), [])
    assert c.tick(5.0) == []
    # The completion that frees the slot triggers the request in the same step.
    assert complete(c, 1, 6.0) == [NotifyComplete(CheckpointId(1), False), requested(2, 6.0, 1)]


def test_a_request_waiting_for_a_slot_is_triggered_by_the_abort_that_frees_it() -> None:
    c = running(interval=1.0, tolerable_failures=5)
    c.tick(1.0)
    c.request(1.5)

    assert c.decline(SINK, CheckpointId(1), Reason.TASK_FAILURE, 2.0) == [
        *aborted(1, Reason.TASK_FAILURE), requested(2, 2.0, 1),
    ]


def test_requests_are_triggered_in_the_order_asked() -> None:
    c = running(interval=None, max_concurrent=1)

    assert c.request(1.0) == (RequestId(1), [requested(1, 1.0, 1)])
    assert c.request(1.1, savepoint=True) == (RequestId(2), [])
    assert c.request(1.2) == (RequestId(3), [])
    assert complete(c, 1, 2.0) == [NotifyComplete(CheckpointId(1), False), requested(2, 2.0, 2, savepoint=True)]
    assert complete(c, 2, 3.0) == [NotifyComplete(CheckpointId(2), False, savepoint=True), requested(3, 3.0, 3)]


def test_a_request_waiting_for_a_slot_is_no_deadline() -> None:
    c = running(interval=100.0, max_concurrent=1, timeout=600.0)
    c.tick(100.0)
    c.request(101.0)

    # Only the timeout of checkpoint 1: the completion that frees the slot triggers the request.
    assert c.next_deadline(101.0) == 700.0
    acknowledge_all(c, 1, 102.0)
    assert c.next_deadline(102.0) is None


# ---- savepoints --------------------------------------------------------------------------------------


def test_a_savepoint_completes_without_committing_and_is_never_among_the_completed_checkpoints() -> None:
    c = running(interval=None, retained=1)
    c.request(1.0)
    complete(c, 1, 1.5)

    assert c.request(2.0, savepoint=True) == (RequestId(2), [requested(2, 2.0, 2, savepoint=True)])
    [store] = acknowledge_all(c, 2, 3.0)
    assert isinstance(store, StoreCheckpoint) and store.checkpoint.savepoint
    [notify] = c.stored(CheckpointId(2), 3.5)
    assert notify == NotifyComplete(CheckpointId(2), False, savepoint=True)
    assert not notify.commit
    assert completed_ids(c) == [1]


def test_retention_never_discards_a_savepoint_and_a_savepoint_subsumes_nothing() -> None:
    c = running(interval=None, retained=1)
    c.request(1.0, savepoint=True)
    complete(c, 1, 1.5)

    c.request(2.0)
    c.request(2.0)
    assert complete(c, 2, 3.0) == [NotifyComplete(CheckpointId(2), False), requested(3, 3.0, 3)]
    actions = complete(c, 3, 4.0)
    assert actions == [NotifyComplete(CheckpointId(3), False), DiscardCheckpoint(CheckpointId(2))]
    assert completed_ids(c) == [3]


def test_a_savepoint_waits_until_nothing_is_in_flight_and_nothing_is_triggered_beside_it() -> None:
    c = running(interval=1.0, max_concurrent=3)
    assert c.tick(1.0) == [trigger(1, 1.0)]

    assert c.request(1.5, savepoint=True) == (RequestId(1), [])
    assert c.tick(2.0) == []  # the waiting savepoint holds the periodic trigger back
    assert complete(c, 1, 2.5) == [NotifyComplete(CheckpointId(1), False), requested(2, 2.5, 1, savepoint=True)]
    assert c.tick(10.0) == []  # nothing beside a savepoint in flight
    assert c.request(10.0) == (RequestId(2), [])
    assert complete(c, 2, 11.0) == [NotifyComplete(CheckpointId(2), False, savepoint=True), requested(3, 11.0, 2)]
    assert c.tick(12.0) == [trigger(4, 12.0)]


def test_a_failed_savepoint_is_discarded_but_never_fails_the_job() -> None:
    c = running(interval=None, tolerable_failures=0, timeout=5.0)
    c.request(1.0, savepoint=True)

    assert c.decline(SINK, CheckpointId(1), Reason.TASK_FAILURE, 2.0) == aborted(1, Reason.TASK_FAILURE)
    c.request(3.0, savepoint=True)
    assert c.tick(8.0) == aborted(2, Reason.EXPIRED)
    c.request(9.0, savepoint=True)
    acknowledge_all(c, 3, 9.5)
    assert c.store_failed(CheckpointId(3), 10.0) == aborted(3, Reason.STORAGE_FAILURE)


def test_a_late_acknowledgement_of_a_completed_savepoint_is_a_duplicate_and_discards_nothing() -> None:
    c = running(interval=None)
    c.request(1.0, savepoint=True)
    complete(c, 1, 2.0)

    result, actions = c.acknowledge(SOURCE, CheckpointId(1), "late", 3.0)
    assert result.value == "duplicate" and actions == []


# ---- stop --------------------------------------------------------------------------------------------


def test_a_stop_is_a_final_checkpoint_that_commits_and_finishes_the_job() -> None:
    c = running(interval=1.0)

    assert c.request(0.5, stop=True) == (RequestId(1), [requested(1, 0.5, 1, stop=True)])
    assert c.stopping
    assert c.tick(5.0) == []
    [notify] = complete(c, 1, 6.0)
    assert notify == NotifyComplete(CheckpointId(1), True) and notify.commit
    assert c.finished
    assert c.next_deadline(6.0) is None


def test_a_stop_with_a_savepoint_commits_and_finishes_the_job() -> None:
    c = running(interval=1.0)

    assert c.request(0.5, savepoint=True, stop=True) == (
        RequestId(1), [requested(1, 0.5, 1, savepoint=True, stop=True)])
    [notify] = complete(c, 1, 6.0)
    assert notify == NotifyComplete(CheckpointId(1), True, savepoint=True) and notify.commit
    assert c.finished
    assert completed_ids(c) == []


def test_a_stop_waits_for_every_checkpoint_in_flight_and_holds_back_periodic_ones() -> None:
    c = running(interval=1.0, max_concurrent=2)
    c.tick(1.0)
    c.tick(2.0)

    assert c.request(2.5, stop=True) == (RequestId(1), [])
    assert c.tick(3.0) == []
    assert complete(c, 1, 3.5) == [NotifyComplete(CheckpointId(1), False)]
    assert complete(c, 2, 4.0) == [
        NotifyComplete(CheckpointId(2), False), DiscardCheckpoint(CheckpointId(1)), requested(3, 4.0, 1, stop=True)]


def test_a_failed_stop_leaves_the_job_running_with_periodic_checkpoints() -> None:
    c = running(interval=1.0, tolerable_failures=5)
    c.request(0.5, stop=True)

    assert c.decline(SINK, CheckpointId(1), Reason.TASK_FAILURE, 0.7) == aborted(1, Reason.TASK_FAILURE)
    assert not c.stopping and not c.finished
    assert c.tick(1.5) == [trigger(2, 1.5)]
    assert c.request(1.6, stop=True) == (RequestId(2), [])


def test_requests_after_a_stop_are_refused_and_change_nothing() -> None:
    c = running(interval=None)
    c.request(0.5, stop=True)

    assert c.request(1.0) == (RequestRefusal.STOPPING, [])
    assert c.request(1.0, savepoint=True) == (RequestRefusal.STOPPING, [])
    assert sorted(c.pending) == [1]
    complete(c, 1, 2.0)
    assert c.request(3.0) == (RequestRefusal.STOPPING, [])


def test_requests_once_the_final_checkpoint_is_in_flight_are_refused() -> None:
    c = two_sources(interval=None)
    assert all_sources_end(c, 1.0) == [trigger(1, 1.0, final=True)]

    assert c.request(1.5) == (RequestRefusal.FINISHED, [])
    assert c.request(1.5, stop=True) == (RequestRefusal.FINISHED, [])
    complete(c, 1, 2.0)
    assert c.request(2.5, savepoint=True) == (RequestRefusal.FINISHED, [])


def test_a_stop_waiting_when_every_source_ends_becomes_the_final_checkpoint() -> None:
    c = two_sources(interval=1.0, max_concurrent=1)
    c.tick(1.0)
    c.request(1.5, stop=True)

    assert all_sources_end(c, 2.0) == []
    assert complete(c, 1, 3.0) == [NotifyComplete(CheckpointId(1), False), requested(2, 3.0, 1, stop=True)]
    assert complete(c, 2, 4.0) == [NotifyComplete(CheckpointId(2), True), DiscardCheckpoint(CheckpointId(1))]
    assert c.finished


def test_aborting_everything_ends_a_stop_in_flight() -> None:
    c = running(interval=None)
    c.request(0.5, stop=True)

    assert c.abort_all(Reason.JOB_RESTARTING) == [
        NotifyAborted(CheckpointId(1), Reason.JOB_RESTARTING), DiscardCheckpoint(CheckpointId(1))]
    assert not c.stopping
