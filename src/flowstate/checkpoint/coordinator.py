"""The checkpoint coordinator's bookkeeping (Flink's JobManager side), as a pure state machine.

The runtime feeds it facts (``now`` is always a parameter) and executes the actions it returns, in
order. It never sleeps, reads a clock, writes a file or talks to a task.

Rules:

1. **Triggering.** Nothing is triggered before ``tasks_running``. Then checkpoint *n* is triggered
   when fewer than ``max_concurrent`` checkpoints are pending (or being stored), ``interval`` seconds
   have passed since the previous trigger (or since the tasks started) and ``min_pause`` seconds since
   the previous checkpoint completed. Ids increase by one from ``first_id``.
2. **Acknowledging.** Each task acknowledges with an opaque state handle. The result says whether it
   counted (``AckResult``). When the last task has acknowledged, the checkpoint moves to *storing* and
   the coordinator asks for its metadata to be written (``StoreCheckpoint``).
3. **Completing.** Only when the runtime reports the metadata durable (``stored``) is the checkpoint
   complete: then tasks are notified (``NotifyComplete``), pending checkpoints with smaller ids are
   aborted (``SUBSUMED``), and completed checkpoints beyond the ``retained`` newest are discarded.
   A checkpoint whose metadata becomes durable after a newer one completed is ``SUBSUMED`` too.
4. **Failing.** A decline, a timeout (``EXPIRED``, checked by ``tick``) or a failed metadata write
   aborts the checkpoint: tasks are notified (``NotifyAborted``), its files discarded. Every such
   failure counts; a completed checkpoint resets the count; when it exceeds ``tolerable_failures``
   the coordinator asks to fail the job (``FailJob``).
5. **Final checkpoint.** Once every source task has reported the end of its input, the next trigger
   is a *final* checkpoint, triggered as soon as concurrency allows (interval and pause ignored). No
   checkpoint follows it unless it fails, in which case another final checkpoint is triggered.
   ``finished`` is true once a final checkpoint is complete.
6. **On demand.** ``request`` asks for a checkpoint, a savepoint or a stop now. Requests are
   triggered in the order asked, before any periodic or final checkpoint, ignoring ``interval`` and
   ``min_pause``: a checkpoint as soon as fewer than ``max_concurrent`` are in flight, a savepoint or
   a stop only when nothing is in flight. While a request waits, nothing else is triggered. Its
   trigger carries the request's id. A request is refused (``RequestRefusal``) once a stop was asked,
   or once a final checkpoint is in flight or complete.
7. **Savepoints.** A savepoint is exclusive: nothing else is triggered while it is in flight (a
   newer barrier would make the tasks abort it). Once stored it is complete and tasks are notified
   with ``commit=False``: sinks do not publish what it pre-committed, because the job may still fail
   over to an older checkpoint whose replay writes that output again (the next completed checkpoint
   commits it). A savepoint is never one of the ``completed`` checkpoints: it subsumes nothing and is
   never subsumed nor discarded by retention. A failed savepoint is aborted and discarded like a
   checkpoint but never counts as a failure.
8. **Stop.** A stop request triggers a *final* checkpoint (a savepoint if asked) as soon as nothing is
   in flight. Sources read nothing after its barrier. Its completion is notified as final with
   ``commit=True`` (sinks publish, tasks end) and ``finished`` becomes true. If it fails, the job goes
   on as before the request.

The lifecycle (rules 5 and 8) is one value of ``flowstate.checkpoint.lifecycle``: ``Running``,
``Stopping``, ``Finishing`` or ``Finished``; the times the trigger rule counts from are a
``Schedule``. Both change only by their pure transitions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from flowstate.checkpoint.completed import CompletedCheckpoint
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId, RequestId, TaskId
from flowstate.checkpoint.lifecycle import Finished, Lifecycle, RequestRefusal, Running, Schedule
from flowstate.checkpoint.pending import AckResult, PendingCheckpoint

__all__ = [
    "CheckpointConfig", "CheckpointCoordinator", "CoordinatorAction", "DiscardCheckpoint", "FailJob",
    "NotifyAborted", "NotifyComplete", "RequestRefusal", "StoreCheckpoint", "TriggerCheckpoint",
]


@dataclass(frozen=True, slots=True)
class CheckpointConfig:
    """When and how checkpoints are taken. Durations are in seconds."""

    interval: float | None = 1.0
    """Seconds between triggers; ``None`` takes no periodic checkpoints (only a final one)."""
    timeout: float = 600.0
    min_pause: float = 0.0
    max_concurrent: int = 1
    tolerable_failures: int = 0
    retained: int = 1

    def __post_init__(self) -> None:
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"checkpoint interval must be positive, got {self.interval}")
        if self.timeout <= 0:
            raise ValueError(f"checkpoint timeout must be positive, got {self.timeout}")
        if self.min_pause < 0:
            raise ValueError(f"minimum pause between checkpoints must be ≥ 0, got {self.min_pause}")
        if self.max_concurrent < 1:
            raise ValueError(f"maximum concurrent checkpoints must be ≥ 1, got {self.max_concurrent}")
        if self.tolerable_failures < 0:
            raise ValueError(f"tolerable checkpoint failures must be ≥ 0, got {self.tolerable_failures}")
        if self.retained < 1:
            raise ValueError(f"retained checkpoints must be ≥ 1, got {self.retained}")


# ---- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerCheckpoint:
    """Send a trigger for ``checkpoint_id`` to every source task."""

    checkpoint_id: CheckpointId
    timestamp: float
    final: bool
    savepoint: bool = False
    """Write it as a savepoint (rule 7)."""
    request: RequestId | None = None
    """The request it answers (rule 6); ``None`` for a periodic or final checkpoint."""


@dataclass(frozen=True, slots=True)
class StoreCheckpoint:
    """Write the metadata of ``checkpoint`` durably, then call ``stored`` (or ``store_failed``)."""

    checkpoint: CompletedCheckpoint


@dataclass(frozen=True, slots=True)
class NotifyComplete:
    """Tell every task that ``checkpoint_id`` is complete; when ``commit``, sinks publish what it
    pre-committed."""

    checkpoint_id: CheckpointId
    final: bool
    savepoint: bool = False

    @property
    def commit(self) -> bool:
        """False only for a savepoint that does not stop the job (rule 7)."""
        return self.final or not self.savepoint


@dataclass(frozen=True, slots=True)
class NotifyAborted:
    """Tell every task that ``checkpoint_id`` was aborted."""

    checkpoint_id: CheckpointId
    reason: CheckpointFailureReason


@dataclass(frozen=True, slots=True)
class DiscardCheckpoint:
    """Delete every file of ``checkpoint_id`` (aborted, or subsumed by newer retained ones)."""

    checkpoint_id: CheckpointId


@dataclass(frozen=True, slots=True)
class FailJob:
    """Too many checkpoints failed in a row: fail the job (the restart strategy decides what next)."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Request:
    request_id: RequestId
    savepoint: bool
    stop: bool

    @property
    def exclusive(self) -> bool:
        return self.savepoint or self.stop


CoordinatorAction = TriggerCheckpoint | StoreCheckpoint | NotifyComplete | NotifyAborted | DiscardCheckpoint | FailJob

_NOT_COUNTED = frozenset({
    CheckpointFailureReason.SUBSUMED,
    CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER,
    CheckpointFailureReason.JOB_RESTARTING,
})


class CheckpointCoordinator:
    """Bookkeeping of pending and completed checkpoints for one run of a job."""

    def __init__(
        self,
        config: CheckpointConfig,
        tasks: Iterable[TaskId],
        sources: Iterable[TaskId],
        *,
        first_id: CheckpointId = CheckpointId(1),
        completed: Iterable[CompletedCheckpoint] = (),
    ) -> None:
        self.config = config
        self.tasks = frozenset(tasks)
        self.sources = frozenset(sources)
        if not self.sources <= self.tasks:
            raise ValueError("every source task must also be a task")
        if first_id < 1:
            raise ValueError("checkpoint ids start at 1")
        self._lifecycle: Lifecycle = Running()
        self._schedule = Schedule()
        self._failures = 0
        """Checkpoint failures counted since the last completion (rule 4)."""
        self._sources_ended: frozenset[TaskId] = frozenset()
        self._requests: deque[_Request] = deque()
        self._last_request = RequestId(0)
        self._first_id = first_id
        self._next_id = first_id
        self._pending: dict[CheckpointId, PendingCheckpoint] = {}
        self._storing: dict[CheckpointId, CompletedCheckpoint] = {}
        self._completed: list[CompletedCheckpoint] = sorted(completed, key=lambda c: c.checkpoint_id)
        self._savepoints_completed: set[CheckpointId] = set()

    # ---- facts the runtime reports -----------------------------------------------------------------

    def tasks_running(self, now: float) -> list[CoordinatorAction]:
        """Every task is running; periodic triggering starts counting from ``now``."""
        self._schedule = self._schedule.start(now)
        return self.tick(now)

    def source_ended(self, task: TaskId, now: float) -> list[CoordinatorAction]:
        """Source ``task`` has read the end of its input and waits for the final checkpoint."""
        if task not in self.sources:
            raise ValueError(f"{task} is not a source task")
        self._sources_ended = self._sources_ended | {task}
        return self.tick(now)

    def tick(self, now: float) -> list[CoordinatorAction]:
        """Expire timed-out checkpoints and trigger one if it is due."""
        actions: list[CoordinatorAction] = []
        for cid, pending in list(self._pending.items()):
            if now - pending.trigger_time >= self.config.timeout:
                actions += self._abort(cid, CheckpointFailureReason.EXPIRED)
        if self.finished or any(isinstance(a, FailJob) for a in actions):
            return actions
        trigger = self._due(now)
        if trigger is not None:
            actions.append(trigger)
        return actions

    def request(
        self, now: float, *, savepoint: bool = False, stop: bool = False
    ) -> tuple[RequestId | RequestRefusal, list[CoordinatorAction]]:
        """Ask for a checkpoint (a savepoint with ``savepoint``; the job's last one with ``stop``) now
        (rules 6-8). Returns the request's id, or why it was refused, and what to do at once."""
        lifecycle = self._lifecycle.asked(stop=stop)
        if isinstance(lifecycle, RequestRefusal):
            return lifecycle, []
        self._lifecycle = lifecycle
        self._last_request = RequestId(self._last_request + 1)
        self._requests.append(_Request(self._last_request, savepoint, stop))
        return self._last_request, self._trigger_now(now, [])

    def acknowledge(
        self, task: TaskId, checkpoint_id: CheckpointId, state: object, now: float
    ) -> tuple[AckResult, list[CoordinatorAction]]:
        pending = self._pending.get(checkpoint_id)
        if pending is None:
            if task not in self.tasks or checkpoint_id >= self._next_id or checkpoint_id < self._first_id:
                return AckResult.UNKNOWN, []
            if checkpoint_id in self._storing or self._is_completed(checkpoint_id):
                return AckResult.DUPLICATE, []
            return AckResult.DISCARDED, [DiscardCheckpoint(checkpoint_id)]
        pending, result = pending.acknowledge(task, state)
        if result is not AckResult.SUCCESS:
            return result, []
        if not pending.fully_acknowledged:
            self._pending[checkpoint_id] = pending
            return result, []
        del self._pending[checkpoint_id]
        completed = pending.to_completed(now)
        self._storing[checkpoint_id] = completed
        return result, [StoreCheckpoint(completed)]

    def decline(
        self, task: TaskId, checkpoint_id: CheckpointId, reason: CheckpointFailureReason, now: float
    ) -> list[CoordinatorAction]:
        if checkpoint_id not in self._pending or task not in self.tasks:
            return []
        actions = self._abort(checkpoint_id, reason)
        return actions + self._trigger_now(now, actions)

    def stored(self, checkpoint_id: CheckpointId, now: float) -> list[CoordinatorAction]:
        """The metadata of ``checkpoint_id`` is durable: it is complete."""
        completed = self._storing.pop(checkpoint_id, None)
        if completed is None:
            raise ValueError(f"checkpoint {checkpoint_id} is not being stored")
        if completed.savepoint:
            # Rule 7: complete, but none of the completed checkpoints (nothing subsumed, no retention).
            self._savepoints_completed.add(checkpoint_id)
            self._completed_now(checkpoint_id, now)
            actions: list[CoordinatorAction] = [NotifyComplete(checkpoint_id, completed.final, savepoint=True)]
            if self.finished:
                return actions
            return actions + self._trigger_now(now, actions)
        latest = self.latest_completed
        if latest is not None and latest.checkpoint_id > checkpoint_id:
            # With max_concurrent > 1 the metadata of n + 1 can become durable before n's. Then n is
            # subsumed: tasks were told n + 1 is complete (sinks committed up to it), and a later
            # NotifyComplete(n) would make the completed ids go backwards.
            subsumed = self._fail(checkpoint_id, CheckpointFailureReason.SUBSUMED)
            return subsumed + self._trigger_now(now, subsumed)
        actions = [NotifyComplete(checkpoint_id, completed.final)]
        self._completed.append(completed)
        self._completed.sort(key=lambda c: c.checkpoint_id)
        self._completed_now(checkpoint_id, now)
        for older in [cid for cid in self._pending if cid < checkpoint_id]:
            actions += self._abort(older, CheckpointFailureReason.SUBSUMED)
        while len(self._completed) > self.config.retained:
            actions.append(DiscardCheckpoint(self._completed.pop(0).checkpoint_id))
        if not self.finished:
            actions += self._trigger_now(now, actions)
        return actions

    def store_failed(self, checkpoint_id: CheckpointId, now: float) -> list[CoordinatorAction]:
        completed = self._storing.pop(checkpoint_id, None)
        if completed is None:
            raise ValueError(f"checkpoint {checkpoint_id} is not being stored")
        actions = self._fail(checkpoint_id, CheckpointFailureReason.STORAGE_FAILURE, counted=not completed.savepoint)
        return actions + self._trigger_now(now, actions)

    def abort_all(self, reason: CheckpointFailureReason) -> list[CoordinatorAction]:
        """Abort every pending checkpoint (the job is going down). Not counted as failures."""
        actions: list[CoordinatorAction] = []
        for cid in sorted(self._pending):
            del self._pending[cid]
            actions += [NotifyAborted(cid, reason), DiscardCheckpoint(cid)]
            self._lifecycle = self._lifecycle.failed(cid)
        return actions

    # ---- queries ---------------------------------------------------------------------------------

    @property
    def pending(self) -> dict[CheckpointId, PendingCheckpoint]:
        return dict(self._pending)

    @property
    def completed(self) -> list[CompletedCheckpoint]:
        return list(self._completed)

    @property
    def latest_completed(self) -> CompletedCheckpoint | None:
        return self._completed[-1] if self._completed else None

    @property
    def lifecycle(self) -> Lifecycle:
        """Where the job is in its life, as far as checkpoints are concerned (rules 5 and 8)."""
        return self._lifecycle

    @property
    def finished(self) -> bool:
        """A final checkpoint is complete: nothing is triggered any more."""
        return isinstance(self._lifecycle, Finished)

    @property
    def next_id(self) -> CheckpointId:
        return self._next_id

    @property
    def stopping(self) -> bool:
        """A stop was asked and has not failed (rule 8)."""
        return self._lifecycle.stopping

    def next_deadline(self, now: float) -> float | None:
        """The earliest time at which ``tick`` has something to do, or ``None``."""
        times = [p.trigger_time + self.config.timeout for p in self._pending.values()]
        # A trigger blocked by max_concurrent is not a deadline: the completion or abort that frees
        # a slot arrives as a fact and triggers from there (otherwise the runtime would spin).
        running = self._schedule.started is not None and not self.finished
        if running and self._requests:
            # A request is triggered by the fact that makes it ready (rule 6); this is a safeguard.
            times += [now] if self._request_ready(self._requests[0]) else []
        elif (running and self.config.interval is not None and self._lifecycle.final_in_flight is None
                and self._in_flight() < self.config.max_concurrent and not self._savepoint_in_flight()):
            due = self._schedule.periodic_due(self.config.interval, self.config.min_pause)
            assert due is not None
            times.append(due)
        return min(times) if times else None

    # ---- internals -------------------------------------------------------------------------------

    def _is_completed(self, checkpoint_id: CheckpointId) -> bool:
        return checkpoint_id in self._savepoints_completed or any(
            c.checkpoint_id == checkpoint_id for c in self._completed)

    def _in_flight(self) -> int:
        return len(self._pending) + len(self._storing)

    def _savepoint_in_flight(self) -> bool:
        return any(p.savepoint for p in self._pending.values()) or any(c.savepoint for c in self._storing.values())

    def _request_ready(self, request: _Request) -> bool:
        if request.exclusive:
            return self._in_flight() == 0
        return self._in_flight() < self.config.max_concurrent and not self._savepoint_in_flight()

    def _due(self, now: float) -> TriggerCheckpoint | None:
        if self._schedule.started is None or self.finished:
            return None
        if self._requests:
            # Rule 6: requests go first, in order; while one waits, nothing else is triggered.
            request = self._requests[0]
            if not self._request_ready(request):
                return None
            trigger = self._trigger(now, final=request.stop, savepoint=request.savepoint, request=request.request_id)
            self._requests.popleft()
            return trigger
        if (self._in_flight() >= self.config.max_concurrent or self._savepoint_in_flight()
                or self._lifecycle.final_in_flight is not None):
            return None
        if self._sources_ended == self.sources:
            return self._trigger(now, final=True)
        if self.config.interval is None:
            return None
        due = self._schedule.periodic_due(self.config.interval, self.config.min_pause)
        if due is None or now < due:
            return None
        return self._trigger(now, final=False)

    def _trigger(
        self, now: float, *, final: bool, savepoint: bool = False, request: RequestId | None = None,
    ) -> TriggerCheckpoint:
        cid = self._next_id
        self._lifecycle = self._lifecycle.triggered(cid, final=final)  # first: it refuses a trigger in error
        self._next_id = CheckpointId(cid + 1)
        self._schedule = self._schedule.triggered(now)
        self._pending[cid] = PendingCheckpoint(cid, now, final, self.tasks, savepoint=savepoint)
        return TriggerCheckpoint(cid, now, final, savepoint, request)

    def _completed_now(self, checkpoint_id: CheckpointId, now: float) -> None:
        self._schedule = self._schedule.completed(now)
        self._lifecycle = self._lifecycle.completed(checkpoint_id)
        self._failures = 0

    def _trigger_now(self, now: float, so_far: list[CoordinatorAction]) -> list[CoordinatorAction]:
        """A trigger that is due whatever the interval: a waiting request (rule 6) or the final
        checkpoint (rule 5)."""
        if self.finished or any(isinstance(a, FailJob) for a in so_far):
            return []
        if not self._requests and self._sources_ended != self.sources:
            return []
        trigger = self._due(now)
        return [trigger] if trigger is not None else []

    def _abort(self, checkpoint_id: CheckpointId, reason: CheckpointFailureReason) -> list[CoordinatorAction]:
        pending = self._pending.pop(checkpoint_id)
        return self._fail(checkpoint_id, reason, counted=not pending.savepoint)

    def _fail(
        self, checkpoint_id: CheckpointId, reason: CheckpointFailureReason, *, counted: bool = True,
    ) -> list[CoordinatorAction]:
        actions: list[CoordinatorAction] = [NotifyAborted(checkpoint_id, reason), DiscardCheckpoint(checkpoint_id)]
        # Rule 8: a failed stop leaves the job running as before the request; rule 5: a failed final
        # checkpoint is followed by another.
        self._lifecycle = self._lifecycle.failed(checkpoint_id)
        if counted and reason not in _NOT_COUNTED:
            self._failures += 1
            if self._failures > self.config.tolerable_failures:
                actions.append(
                    FailJob(
                        f"{self._failures} checkpoint(s) failed in a row (tolerable: "
                        f"{self.config.tolerable_failures}); the last, {checkpoint_id}: {reason.value}"
                    )
                )
        return actions
