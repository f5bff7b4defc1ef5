"""The checkpoint coordinator's lifecycle and trigger schedule, as values.

The lifecycle is one of four states, each answering the coordinator's facts with the next state:

- ``Running``: checkpoints are triggered periodically and on request.
- ``Stopping(checkpoint)``: a stop was asked (rule 8 of ``flowstate.checkpoint.coordinator``);
  ``checkpoint`` is its final checkpoint once triggered. No request is taken. When that checkpoint
  fails, the job runs on as before the request (``Running``).
- ``Finishing(checkpoint)``: every source ended and the final checkpoint ``checkpoint`` is in flight
  (rule 5). No request is taken. When it fails, the job is ``Running`` again, and since every source
  ended, its next trigger is another final checkpoint.
- ``Finished(checkpoint, stopped)``: the final checkpoint is complete (``stopped``: it was a stop's).
  Nothing is triggered any more.

::

                    stop asked                  stop's final triggered
      Running -------------------> Stopping(None) -------------> Stopping(n) -- complete --+
       ^  |  ^                                                       |                      |
       |  |  +------------------------ n failed ---------------------+                      v
       |  | final triggered (every source ended)                                Finished(n, stopped)
       |  v                                                                                 ^
      Finishing(n) -------------------------------- complete -------------------------------+
       |   ^ n failed: Running, which triggers another final checkpoint
       +---+

A state answers only with a state: these are pure values, compared by value, and a combination the
coordinator must never be in (finished while a stop's checkpoint is in flight, a stop's checkpoint
without a stop) has no representation. ``Schedule`` holds the times the trigger rule counts from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from flowstate.checkpoint.ids import CheckpointId


class RequestRefusal(StrEnum):
    """Why the coordinator refused a request (rule 6)."""

    STOPPING = "stopping"
    """A stop was asked already."""
    FINISHED = "finished"
    """The job's final checkpoint is in flight or complete."""


@dataclass(frozen=True, slots=True)
class Running:
    """Checkpoints are triggered periodically and on request."""

    @property
    def final_in_flight(self) -> CheckpointId | None:
        return None

    @property
    def stopping(self) -> bool:
        return False

    def asked(self, *, stop: bool) -> Lifecycle | RequestRefusal:
        return Stopping() if stop else self

    def triggered(self, checkpoint_id: CheckpointId, *, final: bool) -> Lifecycle:
        """A final checkpoint triggered while running is the one after the end of every source."""
        return Finishing(checkpoint_id) if final else self

    def completed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return self

    def failed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return self


@dataclass(frozen=True, slots=True)
class Stopping:
    """A stop was asked; ``checkpoint`` is its final checkpoint once triggered."""

    checkpoint: CheckpointId | None = None

    @property
    def final_in_flight(self) -> CheckpointId | None:
        return self.checkpoint

    @property
    def stopping(self) -> bool:
        return True

    def asked(self, *, stop: bool) -> Lifecycle | RequestRefusal:
        return RequestRefusal.STOPPING

    def triggered(self, checkpoint_id: CheckpointId, *, final: bool) -> Lifecycle:
        """Requests asked before the stop are triggered before it; the stop's is the final one."""
        if self.checkpoint is not None:
            raise ValueError(f"checkpoint {checkpoint_id} triggered while the stop's {self.checkpoint} is in flight")
        return Stopping(checkpoint_id) if final else self

    def completed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return Finished(checkpoint_id, stopped=True) if checkpoint_id == self.checkpoint else self

    def failed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return Running() if checkpoint_id == self.checkpoint else self


@dataclass(frozen=True, slots=True)
class Finishing:
    """Every source ended; the final checkpoint ``checkpoint`` is in flight."""

    checkpoint: CheckpointId

    @property
    def final_in_flight(self) -> CheckpointId | None:
        return self.checkpoint

    @property
    def stopping(self) -> bool:
        return False

    def asked(self, *, stop: bool) -> Lifecycle | RequestRefusal:
        return RequestRefusal.FINISHED

    def triggered(self, checkpoint_id: CheckpointId, *, final: bool) -> Lifecycle:
        raise ValueError(f"checkpoint {checkpoint_id} triggered while the final {self.checkpoint} is in flight")

    def completed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return Finished(checkpoint_id, stopped=False) if checkpoint_id == self.checkpoint else self

    def failed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return Running() if checkpoint_id == self.checkpoint else self


@dataclass(frozen=True, slots=True)
class Finished:
    """The final checkpoint ``checkpoint`` is complete; ``stopped``: it was a stop's."""

    checkpoint: CheckpointId
    stopped: bool

    @property
    def final_in_flight(self) -> CheckpointId | None:
        return None

    @property
    def stopping(self) -> bool:
        return self.stopped

    def asked(self, *, stop: bool) -> Lifecycle | RequestRefusal:
        return RequestRefusal.STOPPING if self.stopped else RequestRefusal.FINISHED

    def triggered(self, checkpoint_id: CheckpointId, *, final: bool) -> Lifecycle:
        raise ValueError(f"checkpoint {checkpoint_id} triggered after the final {self.checkpoint} completed")

    def completed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return self

    def failed(self, checkpoint_id: CheckpointId) -> Lifecycle:
        return self


Lifecycle = Running | Stopping | Finishing | Finished


@dataclass(frozen=True, slots=True)
class Schedule:
    """The times the trigger rule (rule 1 of the coordinator) counts from."""

    started: float | None = None
    """When every task was running; nothing is triggered before."""
    last_trigger: float | None = None
    last_completion: float | None = None

    def start(self, now: float) -> Schedule:
        return self if self.started is not None else replace(self, started=now)

    def triggered(self, now: float) -> Schedule:
        return replace(self, last_trigger=now)

    def completed(self, now: float) -> Schedule:
        return replace(self, last_completion=now)

    def periodic_due(self, interval: float, min_pause: float) -> float | None:
        """When the next periodic checkpoint is due: ``interval`` after the previous trigger (or the
        start) and ``min_pause`` after the previous completion; ``None`` before the start."""
        if self.started is None:
            return None
        due = (self.last_trigger if self.last_trigger is not None else self.started) + interval
        if self.last_completion is not None:
            due = max(due, self.last_completion + min_pause)
        return due
