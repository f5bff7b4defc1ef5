"""In-band control events that travel through the data channels beside record batches.

A ``CheckpointBarrier`` separates the records that belong to checkpoint *n* (before it) from those
that belong to checkpoint *n + 1* (after it). ``EndOfInput`` says that nothing more will come on a
channel. Both are immutable and carried by reference: one instance is broadcast to every channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowstate.checkpoint.ids import CheckpointId


@dataclass(frozen=True, slots=True)
class CheckpointBarrier:
    """Marks the cut of checkpoint ``checkpoint_id`` in a channel.

    ``timestamp`` is the coordinator's clock when it triggered the checkpoint. ``final`` is set on the
    last checkpoint of a bounded job, taken after every source reached the end of its input.
    ``unaligned`` is set on a barrier that overtakes the data queued ahead of it (an unaligned
    checkpoint, or an aligned one that timed out): whoever reads it captures what it overtook.
    ``savepoint`` is set on the barrier of a savepoint; a final barrier that is not the end of a
    bounded input (a stop) makes the sources read nothing after it.
    """

    checkpoint_id: CheckpointId
    timestamp: float
    final: bool = False
    unaligned: bool = False
    savepoint: bool = False
    target: str | None = None
    """A savepoint's directory: every task writes its part there, wherever the task runs."""

    @property
    def always_aligned(self) -> bool:
        """A final checkpoint and a savepoint never overtake data nor switch to unaligned: the final
        one must see every record before it, and a savepoint holds no channel state, so that it can
        be restored after the job's topology changed."""
        return self.final or self.savepoint


@dataclass(frozen=True, slots=True)
class EndOfInput:
    """Nothing more (no record, no barrier) will arrive on the channel that carried this event."""


END_OF_INPUT = EndOfInput()
