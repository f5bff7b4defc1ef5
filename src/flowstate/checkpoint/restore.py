"""The choice of a restore point, pure.

Rules:

1. Candidates are considered newest first (highest checkpoint id).
2. The first candidate whose metadata is valid and whose every referenced file verifies is chosen.
3. Every newer candidate that was passed over is reported with its reason; it is never restored
   from, and its files are never taken for valid state.
4. With no valid candidate the job starts from scratch, and says why each candidate was refused.

Validation costs I/O (checksums of every file), so the caller validates lazily: ``choose`` takes an
iterable and stops at the first valid candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from flowstate.checkpoint.ids import CheckpointId

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Valid(Generic[M]):
    checkpoint_id: CheckpointId
    metadata: M


@dataclass(frozen=True, slots=True)
class Invalid:
    checkpoint_id: CheckpointId
    reason: str


@dataclass(frozen=True, slots=True)
class RestoreFrom(Generic[M]):
    checkpoint_id: CheckpointId
    metadata: M
    skipped: tuple[Invalid, ...]


@dataclass(frozen=True, slots=True)
class StartFresh:
    skipped: tuple[Invalid, ...]


RestoreDecision = RestoreFrom[M] | StartFresh


def choose(candidates_newest_first: Iterable[Valid[M] | Invalid]) -> RestoreFrom[M] | StartFresh:
    skipped: list[Invalid] = []
    last: CheckpointId | None = None
    for candidate in candidates_newest_first:
        if last is not None and candidate.checkpoint_id >= last:
            raise ValueError("restore candidates must come newest first, without repeats")
        last = candidate.checkpoint_id
        match candidate:
            case Valid(checkpoint_id=cid, metadata=metadata):
                return RestoreFrom(cid, metadata, tuple(skipped))
            case Invalid():
                skipped.append(candidate)
    return StartFresh(tuple(skipped))
