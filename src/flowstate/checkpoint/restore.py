"""The restore decision, pure: from what was found to ``RestoreFrom``, ``StartFresh`` or ``Refuse``.

Committed output is sacred: nothing the sinks published is ever written a second time. A
checkpoint whose metadata was written completed, so the sinks may have committed its output; a
checkpoint without metadata never completed, so nothing of it was committed. Rules:

1. Candidates are considered newest first (highest checkpoint id); validation costs I/O (checksums
   of every file), so they are an iterable that is consumed only as far as the decision needs.
2. ``fresh`` (``--fresh``): every candidate is discarded. The run starts from scratch, unless a sink
   holds committed output and no savepoint is given: then ``Refuse(EARLIER_OUTPUT)``, before any
   checkpoint is discarded (rule 5).
3. Otherwise the first valid candidate is restored from, and every newer one it passes over is
   discarded with its reason; it is never restored from, and its files are never taken for valid
   state. But if one of them is *corrupt* (it completed) while a sink holds committed output, the
   restore would write that checkpoint's committed output again: ``Refuse(FALLBACK_PAST_COMMITTED)``.
4. With no valid candidate: if one of them is corrupt, the directory held completed checkpoints and
   none can be restored: ``Refuse(NONE_RESTORABLE)``, whatever the sinks hold (starting from scratch
   would silently drop the state and, with committed output, duplicate it). Only incomplete
   candidates (a crash before the first checkpoint completed) are discarded, and the run starts from
   scratch, under rule 5.
5. A start from scratch in the first attempt of a run, without a savepoint, while a sink holds
   committed output (of an earlier run: this run has written nothing yet) is
   ``Refuse(EARLIER_OUTPUT)``. A later attempt of the same run may start from scratch beside the
   output of its own earlier attempts (a sink commits only what a checkpoint completed, so there is
   none unless a bounded task finished).
6. With a savepoint (``--from-savepoint``), ``StartFresh`` means: restore the savepoint. Its sinks'
   state continues the output the savepoint's run committed, so rule 5 does not apply.

Refusing rather than rolling the sinks back: output that was committed is visible and may already
have been read downstream; deleting it would be a silent change of what the job promised, and the
files of the checkpoints after the restore point cannot be told apart without their (damaged)
state. A refusal names what was found and the ways forward, and leaves everything as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar, assert_never

from flowstate.checkpoint.ids import CheckpointId

M = TypeVar("M")


class CandidateStatus(StrEnum):
    """Why a candidate cannot be restored from, as far as committed output is concerned."""

    INCOMPLETE = "incomplete"
    """No metadata: the checkpoint never completed, so no sink committed anything for it."""
    CORRUPT = "corrupt"
    """Metadata written (the checkpoint completed), but it or a file it references fails verification."""


@dataclass(frozen=True, slots=True)
class Valid(Generic[M]):
    checkpoint_id: CheckpointId
    metadata: M


@dataclass(frozen=True, slots=True)
class Invalid:
    checkpoint_id: CheckpointId
    reason: str
    status: CandidateStatus = CandidateStatus.CORRUPT


@dataclass(frozen=True, slots=True)
class CommittedOutput:
    """What one sink has committed and is visible now."""

    sink: str
    """The sink's name."""
    location: str
    """Where its committed output is (a directory, or e.g. ``table public.orders``)."""
    items: tuple[str, ...]
    """The committed items (file names), never empty."""
    unit: str = "file"
    """What one item is, for messages (``file``, ``commit marker``)."""
    clear: str | None = None
    """How to clear this output, for messages; ``None``: move the directory's files away."""


@dataclass(frozen=True, slots=True)
class RestoreFacts:
    """Everything the decision needs besides the candidates."""

    where: str
    """The checkpoint directory (for messages); empty when the run has none."""
    committed: tuple[CommittedOutput, ...] = ()
    """Every sink that holds committed output now."""
    fresh: bool = False
    """``--fresh``: discard every checkpoint and start from scratch."""
    savepoint: str | None = None
    """The savepoint to restore when no checkpoint is (``--from-savepoint``)."""
    first_attempt: bool = True
    """The first attempt of this run: committed output found now is an earlier run's."""


@dataclass(frozen=True, slots=True)
class Discard:
    """A checkpoint to delete, and why."""

    checkpoint_id: CheckpointId
    reason: str


@dataclass(frozen=True, slots=True)
class RestoreFrom(Generic[M]):
    """Restore from ``checkpoint_id``; delete ``discards`` (all newer), then sweep every other
    directory without valid metadata."""

    checkpoint_id: CheckpointId
    metadata: M
    discards: tuple[Discard, ...]


@dataclass(frozen=True, slots=True)
class StartFresh:
    """Delete ``discards``, sweep, and start from scratch (or from the savepoint given)."""

    discards: tuple[Discard, ...]


class RefusalReason(StrEnum):
    NONE_RESTORABLE = "none-restorable"
    """The directory holds completed checkpoints and none of them can be restored."""
    FALLBACK_PAST_COMMITTED = "fallback-past-committed"
    """The newest restorable checkpoint is older than a completed one while sinks hold committed output."""
    EARLIER_OUTPUT = "earlier-output"
    """A start from scratch while a sink holds committed output of an earlier run."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not run: change nothing, and tell the user ``message`` (what was found, the ways forward)."""

    reason: RefusalReason
    message: str


RestoreDecision = RestoreFrom[M] | StartFresh | Refuse


@dataclass(frozen=True, slots=True)
class Chosen(Generic[M]):
    """``choose``: the newest valid candidate, and every newer one passed over (newest first)."""

    checkpoint_id: CheckpointId
    metadata: M
    skipped: tuple[Invalid, ...]


@dataclass(frozen=True, slots=True)
class NoneValid:
    """``choose``: no candidate is valid; every one of them, newest first."""

    skipped: tuple[Invalid, ...]


def choose(candidates_newest_first: Iterable[Valid[M] | Invalid]) -> Chosen[M] | NoneValid:
    """Rule 3's search, on its own: the first valid candidate, consuming no further. Raises
    ``ValueError`` for candidates out of order."""
    skipped: list[Invalid] = []
    for candidate in _in_order(candidates_newest_first):
        match candidate:
            case Valid(checkpoint_id=cid, metadata=metadata):
                return Chosen(cid, metadata, tuple(skipped))
            case Invalid():
                skipped.append(candidate)
    return NoneValid(tuple(skipped))


def plan_restore(candidates_newest_first: Iterable[Valid[M] | Invalid], facts: RestoreFacts) -> RestoreDecision[M]:
    """The decision of the module rules. Raises ``ValueError`` for candidates out of order."""
    if facts.fresh:
        found = [c.checkpoint_id for c in _in_order(candidates_newest_first)]
        return _start_fresh(tuple(Discard(cid, "--fresh") for cid in found), facts)
    chosen = choose(candidates_newest_first)
    corrupt = [c for c in chosen.skipped if c.status is CandidateStatus.CORRUPT]
    discards = tuple(Discard(c.checkpoint_id, c.reason) for c in chosen.skipped)
    match chosen:
        case Chosen(checkpoint_id=cid, metadata=metadata):
            if corrupt and facts.committed:
                return Refuse(RefusalReason.FALLBACK_PAST_COMMITTED, _fallback_past_committed(cid, corrupt, facts))
            return RestoreFrom(cid, metadata, discards)
        case NoneValid():
            if corrupt:
                return Refuse(RefusalReason.NONE_RESTORABLE, _none_restorable(corrupt, facts))
            return _start_fresh(discards, facts)
        case _:
            assert_never(chosen)


def _in_order(candidates: Iterable[Valid[M] | Invalid]) -> Iterator[Valid[M] | Invalid]:
    last: CheckpointId | None = None
    for candidate in candidates:
        if last is not None and candidate.checkpoint_id >= last:
            raise ValueError("restore candidates must come newest first, without repeats")
        last = candidate.checkpoint_id
        yield candidate


def _start_fresh(discards: tuple[Discard, ...], facts: RestoreFacts) -> StartFresh | Refuse:
    if facts.committed and facts.first_attempt and facts.savepoint is None:
        return Refuse(RefusalReason.EARLIER_OUTPUT, _earlier_output(discards, facts))
    return StartFresh(discards)


# ---- messages: what was found, then the ways forward ---------------------------------------------------


def _checkpoints(found: list[Invalid]) -> str:
    return "; ".join(f"checkpoint {c.checkpoint_id}: {' '.join(c.reason.split())}" for c in found)


def _output(committed: tuple[CommittedOutput, ...]) -> str:
    def one(out: CommittedOutput) -> str:
        n = len(out.items)
        return f"sink {out.sink!r} holds {n} committed {out.unit}{'s' if n != 1 else ''} in {out.location} (e.g. {out.items[0]})"

    return "; ".join(one(out) for out in committed)


def _clear(committed: tuple[CommittedOutput, ...]) -> str:
    files = [out.location for out in committed if out.clear is None]
    ways = [f"move the committed output away (or delete it) from {', '.join(files)}, or give the sink another "
            "directory"] if files else []
    return "; ".join(ways + [out.clear for out in committed if out.clear is not None])


def _repair(facts: RestoreFacts) -> str:
    return (f"put back the damaged or missing checkpoint files (from a backup or copy of the directory; "
            f"`flowstate checkpoints verify {facts.where}` names them) and run again")


def _none_restorable(corrupt: list[Invalid], facts: RestoreFacts) -> str:
    n = len(corrupt)
    found = (f"{facts.where} holds {n} completed checkpoint{'s' if n != 1 else ''} and none can be restored "
             f"({_checkpoints(corrupt)})")
    if facts.savepoint is not None:
        why = f"restoring the savepoint {facts.savepoint} instead might go back past their committed output"
        fresh = "or, if they are not checkpoints of the run that descends from the savepoint, run with --fresh"
    elif facts.committed:
        why = f"starting from scratch would write again the output the sinks already committed: {_output(facts.committed)}"
        fresh = f"or start over: {_clear(facts.committed)}, then run with --fresh"
    else:
        why = "starting from scratch would silently lose the job's state"
        fresh = "or start over from scratch with --fresh"
    return f"cannot restore: {found}; {why}. Ways forward: {_repair(facts)}; {fresh}"


def _fallback_past_committed(chosen: CheckpointId, corrupt: list[Invalid], facts: RestoreFacts) -> str:
    newer = ", ".join(str(c.checkpoint_id) for c in corrupt)
    return (
        f"cannot restore: in {facts.where} the newest restorable checkpoint is {chosen}, but the "
        f"newer completed checkpoint(s) {newer} cannot be restored ({_checkpoints(corrupt)}), and the sinks may "
        f"already have committed their output: {_output(facts.committed)}. Restoring checkpoint "
        f"{chosen} would write that output again. Ways forward: {_repair(facts)}; or start over: "
        f"{_clear(facts.committed)}, then run with --fresh"
    )


def _earlier_output(discards: tuple[Discard, ...], facts: RestoreFacts) -> str:
    if facts.fresh:
        what = "cannot start from scratch (--fresh)"
        keep = ("; nothing was discarded: to continue the earlier run instead, run without --fresh"
                if discards else "")
    else:
        what = (f"cannot start from scratch: {facts.where} holds no checkpoint to restore from" if facts.where
                else "cannot start from scratch: the run has no checkpoint directory to restore from")
        keep = ""
    return (
        f"{what}, and the sinks hold committed output of an earlier run: {_output(facts.committed)}. A run "
        f"from scratch would write all of it again beside it. Ways forward: {_clear(facts.committed)}, then "
        f"run again{keep}"
    )
