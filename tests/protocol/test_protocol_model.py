"""The barrier handlers and the coordinator against small reference models (Hypothesis state machines).

Each machine plays the runtime: it feeds random but legal facts to the pure protocol, executes the
actions it answers with on a reference model that is small enough to be obviously right, and checks
after every step that the protocol kept its promises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from flowstate.checkpoint.alignment import AlignedBarrierHandler
from flowstate.checkpoint.barrier import CheckpointBarrier
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
from flowstate.checkpoint.handler import (
    AbortCheckpoint,
    AllInputsEnded,
    BlockChannel,
    HandlerAction,
    ResumeChannels,
    TakeSnapshot,
)
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId, TaskId, task_id
from flowstate.checkpoint.pending import AckResult
from flowstate.checkpoint.tracker import BarrierTracker

FAST = settings(max_examples=150, stateful_step_count=40, deadline=None)
THOROUGH = settings(FAST, max_examples=200)


def barrier(n: int) -> CheckpointBarrier:
    return CheckpointBarrier(CheckpointId(n), timestamp=float(n))


# ---- the input side of a task ----------------------------------------------------------------------


class InputChannels:
    """What the runtime knows of a task's input channels, and the rules it plays by.

    Barrier ids increase on each channel but a channel may skip ids (its producer gave a checkpoint
    up). A record is read only from a channel that is open and not blocked.
    """

    def __init__(self, count: int) -> None:
        self.open = set(range(count))
        self.blocked: dict[int, int] = {}  # channel -> the checkpoint whose barrier blocked it
        self.last_barrier = dict.fromkeys(range(count), 0)
        self.barriers: dict[int, set[int]] = {c: set() for c in range(count)}
        self.read_since_barrier = dict.fromkeys(range(count), False)
        self.snapshots: list[int] = []
        self.declined: set[int] = set()
        self.aborted_by_coordinator: set[int] = set()
        self.all_ended = False

    @property
    def readable(self) -> list[int]:
        return sorted(self.open - set(self.blocked))

    @property
    def newest_id(self) -> int:
        return max([0, *self.last_barrier.values(), *self.aborted_by_coordinator])

    def deliver(self, channel: int, n: int) -> None:
        self.last_barrier[channel] = n
        self.barriers[channel].add(n)
        self.read_since_barrier[channel] = False


class AlignedHandlerMachine(RuleBasedStateMachine):
    """``AlignedBarrierHandler`` against the channels it reads."""

    @initialize(count=st.integers(1, 4))
    def start(self, count: int) -> None:
        self.handler = AlignedBarrierHandler(count)
        self.model = InputChannels(count)

    @precondition(lambda self: self.model.readable)
    @rule(data=st.data())
    def read_a_record(self, data: st.DataObject) -> None:
        channel = data.draw(st.sampled_from(self.model.readable))
        assert channel not in self.handler.blocked, "a record was read from a blocked channel"
        self.model.read_since_barrier[channel] = True

    @precondition(lambda self: self.model.readable)
    @rule(data=st.data(), skip=st.sampled_from([0, 0, 0, 1, 2]))
    def read_a_barrier(self, data: st.DataObject, skip: int) -> None:
        channel = data.draw(st.sampled_from(self.model.readable))
        n = self.model.last_barrier[channel] + 1 + skip
        self.model.deliver(channel, n)
        self._execute(self.handler.on_barrier(ChannelIndex(channel), barrier(n)), channel=channel, n=n)

    @precondition(lambda self: self.model.readable)
    @rule(data=st.data())
    def read_end_of_input(self, data: st.DataObject) -> None:
        channel = data.draw(st.sampled_from(self.model.readable))
        self.model.open.discard(channel)
        self._execute(self.handler.on_end_of_input(ChannelIndex(channel)), channel=channel, end=True)

    @rule(data=st.data())
    def coordinator_aborts(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, self.model.newest_id + 2))
        self.model.aborted_by_coordinator.add(n)
        self._execute(self.handler.on_abort(CheckpointId(n)))

    def _execute(
        self, actions: list[HandlerAction], *, channel: int | None = None, n: int | None = None, end: bool = False
    ) -> None:
        m = self.model
        for i, action in enumerate(actions):
            match action:
                case BlockChannel(channel=c):
                    assert n is not None and c == channel, "only the channel that delivered a barrier is blocked"
                    assert c not in m.blocked
                    m.blocked[c] = n
                case ResumeChannels(channels=cs):
                    assert cs and list(cs) == sorted(set(cs))
                    assert set(cs) <= set(m.blocked), f"resumed {cs} but blocked are {sorted(m.blocked)}"
                    for c in cs:
                        del m.blocked[c]
                case TakeSnapshot(barrier=b):
                    k = b.checkpoint_id
                    assert not m.snapshots or k > m.snapshots[-1], "snapshot ids go backwards"
                    assert k not in m.declined and k not in m.aborted_by_coordinator
                    for c in m.open:
                        assert m.last_barrier[c] == k, f"snapshot {k} before channel {c} delivered its barrier"
                        assert not m.read_since_barrier[c], f"a record after barrier {k} on {c} is in snapshot {k}"
                        # The snapshot comes before the channels that waited for it are resumed.
                        assert c in m.blocked or c == channel
                    m.snapshots.append(k)
                case AbortCheckpoint(checkpoint_id=k):
                    assert k not in m.snapshots
                    m.declined.add(k)
                case AllInputsEnded():
                    assert end and not m.open and not m.all_ended
                    assert i == len(actions) - 1, "AllInputsEnded comes last"
                    m.all_ended = True
        if end and not m.open:
            assert m.all_ended, "the last end of input did not report AllInputsEnded"

    @invariant()
    def the_handler_blocks_what_the_runtime_blocked(self) -> None:
        assert self.handler.blocked == set(self.model.blocked)
        assert self.handler.open_channels == self.model.open

    @invariant()
    def one_checkpoint_is_aligned_at_a_time(self) -> None:
        assert len(set(self.model.blocked.values())) <= 1

    @invariant()
    def a_channel_is_blocked_only_for_a_checkpoint_that_can_still_align(self) -> None:
        m = self.model
        for n in m.blocked.values():
            assert n not in m.declined and all(n > s for s in m.snapshots)
            assert all(n > a for a in m.aborted_by_coordinator), f"blocked for {n} after a newer abort"
            # Some open channel has not delivered n yet: otherwise the task should have snapshotted.
            assert any(m.last_barrier[c] != n for c in m.open)
            # And it can still be read: the task never blocks all of its input.
            assert m.readable


TestAlignedHandlerAgainstItsChannels = AlignedHandlerMachine.TestCase
TestAlignedHandlerAgainstItsChannels.settings = FAST


class TrackerMachine(RuleBasedStateMachine):
    """``BarrierTracker`` against the channels it reads: it never blocks, and only counts."""

    @initialize(count=st.integers(1, 4))
    def start(self, count: int) -> None:
        self.tracker = BarrierTracker(count)
        self.model = InputChannels(count)

    @precondition(lambda self: self.model.readable)
    @rule(data=st.data(), skip=st.sampled_from([0, 0, 0, 1, 2]))
    def read_a_barrier(self, data: st.DataObject, skip: int) -> None:
        channel = data.draw(st.sampled_from(self.model.readable))
        n = self.model.last_barrier[channel] + 1 + skip
        self.model.deliver(channel, n)
        self._execute(self.tracker.on_barrier(ChannelIndex(channel), barrier(n)), end=False)

    @precondition(lambda self: self.model.readable)
    @rule(data=st.data())
    def read_end_of_input(self, data: st.DataObject) -> None:
        channel = data.draw(st.sampled_from(self.model.readable))
        self.model.open.discard(channel)
        self._execute(self.tracker.on_end_of_input(ChannelIndex(channel)), end=True)

    @rule(data=st.data())
    def coordinator_aborts(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, self.model.newest_id + 2))
        self.model.aborted_by_coordinator.add(n)
        assert self.tracker.on_abort(CheckpointId(n)) == []

    def _execute(self, actions: list[HandlerAction], *, end: bool) -> None:
        m = self.model
        snapshots = [a.barrier.checkpoint_id for a in actions if isinstance(a, TakeSnapshot)]
        assert len(snapshots) <= 1
        for i, action in enumerate(actions):
            match action:
                case TakeSnapshot(barrier=b):
                    k = b.checkpoint_id
                    assert not m.snapshots or k > m.snapshots[-1], "snapshot ids go backwards"
                    assert k not in m.aborted_by_coordinator
                    assert all(k in m.barriers[c] for c in m.open), f"snapshot {k} before every barrier arrived"
                    m.snapshots.append(k)
                case AbortCheckpoint(checkpoint_id=k, reason=reason):
                    assert reason is CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER
                    assert snapshots and k < snapshots[0], "only a checkpoint older than the snapshot is given up"
                    m.declined.add(k)
                case AllInputsEnded():
                    assert end and not m.open and i == len(actions) - 1
                case BlockChannel() | ResumeChannels():
                    raise AssertionError(f"the tracker answered {action}")

    @invariant()
    def no_channel_is_blocked(self) -> None:
        assert self.tracker.blocked == frozenset()

    @invariant()
    def no_tracked_checkpoint_is_complete_or_decided(self) -> None:
        m = self.model
        for n, arrived in self.tracker.tracked.items():
            assert not m.open <= arrived, f"checkpoint {n} is complete but was not snapshotted"
            assert n not in m.declined and n not in m.aborted_by_coordinator
            assert all(n > s for s in m.snapshots)
            assert all(n in m.barriers[c] for c in arrived)


TestTrackerAgainstItsChannels = TrackerMachine.TestCase
TestTrackerAgainstItsChannels.settings = FAST


# ---- the coordinator -------------------------------------------------------------------------------

SOURCES = (task_id("source", 0), task_id("source", 1))
TASKS = (*SOURCES, task_id("sink", 0))
STRANGER = task_id("elsewhere", 0)
REASONS = list(CheckpointFailureReason)
OPTIONAL_FACTS = ("source_ended", "random_ack", "decline", "store_failed", "abort_all")
NOT_FAILURES = {
    CheckpointFailureReason.SUBSUMED,
    CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER,
    CheckpointFailureReason.JOB_RESTARTING,
}


@dataclass
class Pending:
    trigger_time: float
    final: bool
    acks: dict[TaskId, object] = field(default_factory=dict)


class CoordinatorMachine(RuleBasedStateMachine):
    """``CheckpointCoordinator`` against a reference model of its checkpoints."""

    @initialize(
        interval=st.sampled_from([1.0, 2.5, None]),
        timeout=st.sampled_from([4.0, 10.0, 60.0]),
        min_pause=st.sampled_from([0.0, 1.5]),
        max_concurrent=st.integers(1, 3),
        tolerable_failures=st.integers(0, 2),
        retained=st.integers(1, 3),
        optional=st.frozensets(st.sampled_from(OPTIONAL_FACTS)),
        fast_storage=st.booleans(),
    )
    def start(self, optional: frozenset[str], fast_storage: bool, **config: object) -> None:
        # Swarm testing: each run leaves some kinds of fact out, so that a run without declines (or
        # without sources ending, ...) gets far enough to have several checkpoints in flight.
        self.optional = optional
        # With slow storage a metadata write ends only once another one started (or nothing else is
        # pending), so that writes overlap and may end in any order.
        self.fast_storage = fast_storage
        self.config = CheckpointConfig(**config)  # type: ignore[arg-type]
        self.coordinator = CheckpointCoordinator(self.config, TASKS, SOURCES)
        self.now = 0.0
        self.running_since: float | None = None
        self.next_id = 1
        self.pending: dict[int, Pending] = {}
        self.storing: dict[int, bool] = {}  # id -> final
        self.store_requested: set[int] = set()
        self.completed: list[int] = []  # every id notified complete, in order
        self.retained: list[int] = []  # completed and not discarded
        self.final_ids: list[int] = []
        self.failures = 0
        self.sources_ended: set[TaskId] = set()
        self.last_trigger: float | None = None
        self.last_completion: float | None = None
        self.finished = False
        self.job_failed = False
        self.aborted_all = False
        self.most_writes_at_once = 0

    # ---- facts -----------------------------------------------------------------------------------

    @precondition(lambda self: self.running_since is None)
    @rule()
    def tasks_running(self) -> None:
        self.running_since = self.now
        self._execute(self.coordinator.tasks_running(self.now), "tick")

    @rule(dt=st.sampled_from([1.0, 0.5, 2.5, 6.0]))
    def tick(self, dt: float) -> None:
        deadline = self.coordinator.next_deadline(self.now)
        self.now += dt
        actions = self.coordinator.tick(self.now)
        if self.running_since is not None and not (self.job_failed or self.aborted_all):
            if deadline is None or self.now < deadline:
                assert actions == [], f"tick({self.now}) acts before the deadline {deadline}"
        self._execute(actions, "tick")

    @precondition(lambda self: "source_ended" in self.optional)
    @rule(source=st.sampled_from(SOURCES))
    def source_ended(self, source: TaskId) -> None:
        self.sources_ended.add(source)
        self._execute(self.coordinator.source_ended(source, self.now), "tick")

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def a_task_acknowledges_a_pending_checkpoint(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(sorted(self.pending)))
        task = data.draw(st.sampled_from([t for t in TASKS if t not in self.pending[n].acks] or list(TASKS)))
        self._acknowledge(task, n)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def every_remaining_task_acknowledges_a_pending_checkpoint(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(sorted(self.pending)))
        for task in [t for t in TASKS if t not in self.pending[n].acks]:
            self._acknowledge(task, n)

    @precondition(lambda self: "random_ack" in self.optional)
    @rule(data=st.data())
    def any_task_acknowledges_any_checkpoint(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, self.next_id))
        task = data.draw(st.sampled_from([*TASKS, STRANGER]))
        self._acknowledge(task, n)

    @precondition(lambda self: "decline" in self.optional)
    @rule(data=st.data(), reason=st.sampled_from(REASONS))
    def a_task_declines(self, data: st.DataObject, reason: CheckpointFailureReason) -> None:
        n = data.draw(st.integers(0, self.next_id))
        task = data.draw(st.sampled_from([*TASKS, STRANGER]))
        actions = self.coordinator.decline(task, CheckpointId(n), reason, self.now)
        if n not in self.pending or task == STRANGER:
            assert actions == []
        self._execute(actions, "decline", subject=n, reason=reason)

    @precondition(lambda self: self.storing and (self.fast_storage or len(self.storing) > 1 or not self.pending))
    @rule(data=st.data())
    def metadata_stored(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(sorted(self.storing)))
        self.storing.pop(n)
        self._execute(self.coordinator.stored(CheckpointId(n), self.now), "stored", subject=n)

    @precondition(lambda self: self.storing and "store_failed" in self.optional)
    @rule(data=st.data())
    def metadata_write_failed(self, data: st.DataObject) -> None:
        n = data.draw(st.sampled_from(sorted(self.storing)))
        self.storing.pop(n)
        actions = self.coordinator.store_failed(CheckpointId(n), self.now)
        self._execute(actions, "store_failed", subject=n, reason=CheckpointFailureReason.STORAGE_FAILURE)

    @precondition(lambda self: not self.aborted_all and "abort_all" in self.optional)
    @rule(reason=st.sampled_from(REASONS))
    def abort_all(self, reason: CheckpointFailureReason) -> None:
        self.aborted_all = True
        self._execute(self.coordinator.abort_all(reason), "abort_all", reason=reason)

    # ---- the reference model ---------------------------------------------------------------------

    def _in_flight(self) -> int:
        return len(self.pending) + len(self.storing)

    def _all_sources_ended(self) -> bool:
        return self.sources_ended == set(SOURCES)

    def _final_is_live(self) -> bool:
        if not self.final_ids:
            return False
        n = self.final_ids[-1]
        return n in self.pending or n in self.storing or n in self.completed

    def _final_due(self) -> bool:
        return (
            self.running_since is not None
            and not self.finished
            and self._all_sources_ended()
            and not self._final_is_live()
            and self._in_flight() < self.config.max_concurrent
        )

    def _periodic_due(self) -> bool:
        if self.running_since is None or self.finished or self._all_sources_ended() or self.config.interval is None:
            return False
        if self._in_flight() >= self.config.max_concurrent:
            return False
        last = self.last_trigger if self.last_trigger is not None else self.running_since
        paused = self.last_completion is not None and self.now < self.last_completion + self.config.min_pause
        return self.now >= last + self.config.interval and not paused

    def _acknowledge(self, task: TaskId, n: int) -> None:
        result, actions = self.coordinator.acknowledge(task, CheckpointId(n), (task, n), self.now)
        pending = self.pending.get(n)
        if task not in TASKS or not 1 <= n < self.next_id:
            assert (result, actions) == (AckResult.UNKNOWN, [])
        elif pending is not None and task in pending.acks:
            assert (result, actions) == (AckResult.DUPLICATE, [])
        elif pending is not None:
            pending.acks[task] = (task, n)
            assert result is AckResult.SUCCESS
            if len(pending.acks) < len(TASKS):
                assert actions == []
            else:
                expected = CompletedCheckpoint(
                    CheckpointId(n), pending.trigger_time, self.now, pending.final, dict(pending.acks)
                )
                assert actions == [StoreCheckpoint(expected)]
                del self.pending[n]
                self.storing[n] = pending.final
                self.store_requested.add(n)
        elif n in self.storing or n in self.retained:
            assert (result, actions) == (AckResult.DUPLICATE, [])
        else:
            assert (result, actions) == (AckResult.DISCARDED, [DiscardCheckpoint(CheckpointId(n))])

    def _execute(
        self,
        actions: list[CoordinatorAction],
        fact: str,
        *,
        subject: int | None = None,
        reason: CheckpointFailureReason | None = None,
    ) -> None:
        owed: list[CoordinatorAction] = []  # what must come next, in this order
        failed_now = False
        for action in actions:
            if owed:
                expected = owed.pop(0)
                if isinstance(expected, FailJob):
                    assert isinstance(action, FailJob), f"expected FailJob, got {action}"
                else:
                    assert action == expected, f"expected {expected}, got {action}"
                if isinstance(action, FailJob):
                    failed_now = self.job_failed = True
                continue
            match action:
                case TriggerCheckpoint(checkpoint_id=n, timestamp=at, final=final):
                    assert fact in ("tick", "decline", "stored", "store_failed") and not failed_now
                    assert self.running_since is not None and not self.finished
                    assert n == self.next_id and at == self.now
                    assert self._in_flight() < self.config.max_concurrent, "too many checkpoints in flight"
                    assert final == self._all_sources_ended()
                    assert final or fact == "tick", "a periodic checkpoint is only triggered by tick"
                    self.next_id += 1
                    self.pending[n] = Pending(at, final)
                    self.last_trigger = at
                    if final:
                        self.final_ids.append(n)
                case NotifyComplete(checkpoint_id=n, final=final):
                    assert fact == "stored" and n == subject, "NotifyComplete without its metadata stored"
                    assert n in self.store_requested, "NotifyComplete without StoreCheckpoint"
                    assert not self.completed or n > self.completed[-1], "completed ids go backwards"
                    assert final == (n in self.final_ids)
                    self.completed.append(n)
                    self.retained.append(n)
                    self.failures = 0
                    self.last_completion = self.now
                    self.finished = self.finished or final
                case NotifyAborted(checkpoint_id=n, reason=why):
                    if fact == "tick":
                        assert why is CheckpointFailureReason.EXPIRED
                        assert self.pending[n].trigger_time + self.config.timeout <= self.now
                    elif fact == "stored":
                        assert why is CheckpointFailureReason.SUBSUMED
                        assert subject is not None and (n < subject or n == subject and self.completed[-1] > n)
                    else:
                        assert why is reason and (fact == "abort_all" or n == subject)
                    if n in self.pending:
                        del self.pending[n]
                    else:
                        assert fact in ("stored", "store_failed") and n == subject
                    owed.append(DiscardCheckpoint(CheckpointId(n)))
                    if fact != "abort_all" and why not in NOT_FAILURES:
                        self.failures += 1
                        if self.failures > self.config.tolerable_failures:
                            owed.append(FailJob(""))
                case DiscardCheckpoint(checkpoint_id=n):
                    # Not right after an abort: retention after a completion.
                    assert fact == "stored" and self.retained and self.retained[0] == n
                    assert len(self.retained) > self.config.retained
                    self.retained.pop(0)
                case FailJob():
                    tolerable = self.config.tolerable_failures
                    raise AssertionError(f"FailJob after {self.failures} failures (tolerable: {tolerable})")
                case StoreCheckpoint():
                    raise AssertionError("StoreCheckpoint answers an acknowledgement only")
        assert not owed, f"missing {owed}"
        if failed_now or fact == "abort_all":
            return  # the job is going down: nothing more is due
        # Whatever was due has been done. A fact that changed nothing (a decline of a checkpoint
        # that is not pending) is no occasion to trigger.
        if fact == "tick" or actions:
            assert not self._final_due(), "the final checkpoint is due but was not triggered"
        if fact == "tick":
            assert not self._periodic_due(), "a checkpoint is due but tick did not trigger it"
            assert all(p.trigger_time + self.config.timeout > self.now for p in self.pending.values())

    # ---- invariants ------------------------------------------------------------------------------

    @invariant()
    def the_coordinator_agrees_with_the_model(self) -> None:
        assert sorted(self.coordinator.pending) == sorted(self.pending)
        assert [c.checkpoint_id for c in self.coordinator.completed] == self.retained
        assert self.coordinator.finished == self.finished
        assert self.coordinator.next_id == self.next_id

    @invariant()
    def completed_ids_strictly_increase(self) -> None:
        assert all(a < b for a, b in zip(self.completed, self.completed[1:]))

    @invariant()
    def at_most_max_concurrent_checkpoints_are_in_flight(self) -> None:
        assert self._in_flight() <= self.config.max_concurrent
        self.most_writes_at_once = max(self.most_writes_at_once, len(self.storing))

    def teardown(self) -> None:
        # Steer the search towards overlapping checkpoints, where the interesting interleavings are.
        target(float(getattr(self, "most_writes_at_once", 0)), label="overlapping metadata writes")

    @invariant()
    def at_most_retained_completed_checkpoints_are_kept(self) -> None:
        assert len(self.coordinator.completed) <= self.config.retained


TestCoordinatorAgainstAReferenceModel = CoordinatorMachine.TestCase
TestCoordinatorAgainstAReferenceModel.settings = THOROUGH
