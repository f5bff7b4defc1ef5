"""Two-phase-commit decisions for transactional sinks (Flink's ``Committer``), pure.

A sink writer produces *committables* (for the file sink: a closed, hidden pending file). Rules:

1. **Pre-commit** on the barrier of checkpoint *n*: what the writer produced since the previous
   barrier is recorded under *n*. The snapshot of the sink holds every committable not yet known to
   be committed, so a restore can finish the job.
2. **Commit** when checkpoint *n* completes: every committable recorded under an id ≤ *n* is
   committed, in checkpoint order. An abort of *n* commits nothing; its committables stay pending and
   are committed with the next checkpoint that completes (they are part of its snapshot too).
3. **Restore** from checkpoint *n*: *n* is complete, so every committable in its snapshot is committed
   again. Committers must be idempotent: committing twice is the same as once.
4. **Clean-up** after a restore: any in-progress or pending output of this writer that the restored
   snapshot does not name belongs to a checkpoint that never completed: it is deleted (its records
   will be produced again by the replay).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from flowstate.checkpoint.ids import CheckpointId

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class CommitLog(Generic[C]):
    """Committables waiting for their checkpoint to complete, oldest first."""

    pending: tuple[tuple[CheckpointId, C], ...] = ()
    last: int = 0
    """The newest checkpoint id pre-committed so far, even if it produced nothing."""

    def pre_commit(self, checkpoint_id: CheckpointId, committables: Iterable[C]) -> CommitLog[C]:
        """Rule 1: record what was produced before barrier ``checkpoint_id``."""
        if checkpoint_id <= self.last:
            raise ValueError(f"pre-commit for checkpoint {checkpoint_id} after checkpoint {self.last}")
        return CommitLog(self.pending + tuple((checkpoint_id, c) for c in committables), checkpoint_id)

    def complete(self, checkpoint_id: CheckpointId) -> tuple[CommitLog[C], list[C]]:
        """Rule 2: checkpoint ``checkpoint_id`` completed; returns what to commit now, in order."""
        commit = [c for cid, c in self.pending if cid <= checkpoint_id]
        keep = tuple((cid, c) for cid, c in self.pending if cid > checkpoint_id)
        return CommitLog(keep, self.last), commit

    def snapshot(self) -> list[tuple[int, C]]:
        return [(int(cid), c) for cid, c in self.pending]

    @staticmethod
    def restore(snapshot: Iterable[tuple[int, C]]) -> tuple[CommitLog[C], list[C]]:
        """Rule 3: after restoring the (complete) checkpoint that holds ``snapshot``, commit it all."""
        return CommitLog(), [c for _, c in snapshot]


def stray_outputs(existing: Iterable[str], referenced: Iterable[str]) -> list[str]:
    """Rule 4: the writer's uncommitted outputs found on restore that the snapshot does not name."""
    keep = set(referenced)
    return sorted(name for name in existing if name not in keep)
