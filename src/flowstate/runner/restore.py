"""Step 1 of an attempt, carried out: gather the facts, ask the pure restore planner
(``flowstate.checkpoint.restore.plan_restore``) and do what it decided.

Rules:

1. The decision is ``plan_restore``'s; this module only reads facts (the checkpoints found newest
   first, the sinks' committed output, ``--fresh`` on the first attempt, the savepoint) and executes
   the decision: ``Refuse`` raises ``ConfigError``; every discard it lists is deleted (and logged with
   its reason, unless ``--fresh`` asked for it).
2. With a savepoint, the savepoint is restored unless a checkpoint of this run descends from it;
   checkpoints in the directory that do not descend from it belong to another run and are deleted
   (restoring one later would undo the restore from the savepoint).
3. Before a restore, and before a start from scratch, everything no restore can need is swept: other
   checkpoints' directories without valid metadata and shared files no valid checkpoint references.
   A local directory is locked by this run, so nothing uploads into it and no grace period applies;
   object storage keeps files younger than the checkpoint timeout, which another run may still be
   uploading.
4. New checkpoint ids continue after the highest id ever used in the directory, and after the
   restored savepoint's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, assert_never

from flowstate import failpoints as fpn
from flowstate.checkpoint.restore import CommittedOutput, Refuse, RestoreFacts, RestoreFrom, StartFresh, plan_restore
from flowstate.errors import ConfigError
from flowstate.failpoints import Failpoints
from flowstate.graph import JobGraph
from flowstate.storage.base import CheckpointMetadata, CheckpointStorage, SavepointOrigin
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.savepoint import Savepoint, identity, same_origin

log = logging.getLogger("flowstate")


@dataclass(frozen=True, slots=True)
class RestoreChoice:
    """What Step 1 chose, for the rest of the attempt."""

    metadata: CheckpointMetadata | None
    """The snapshot to restore (``None``: from scratch)."""
    next_id: int
    """The first checkpoint id the attempt may use (rule 4)."""
    origin: SavepointOrigin | None
    """The savepoint the run descends from, if any."""
    savepoint: str | None
    """The savepoint directory restored from, when the snapshot is the savepoint itself."""


def committed_output(graph: JobGraph) -> tuple[CommittedOutput, ...]:
    """What each sink of the job that can list its committed output (``committed_output()``, e.g.
    ``FileSink``, ``PostgresSink``) holds now."""
    found = []
    for vertex in graph.vertices:
        for node in vertex.chain:
            listing = getattr(node.fn, "committed_output", None) if node.kind == "sink" else None
            listed = listing() if callable(listing) else ()
            if isinstance(listed, CommittedOutput):  # a sink that describes its output itself
                found.append(listed)
                continue
            items = tuple(listed)
            if items:
                where = getattr(node.fn, "directory", None) or node.name
                found.append(CommittedOutput(node.name, str(where), items))
    return tuple(found)


def choose_restore_point(
    storage: CheckpointStorage | None, *, where: str, committed: Iterable[CommittedOutput], fresh: bool,
    first_attempt: bool, savepoint: Savepoint | None, next_id: int, now_wall: float, orphan_grace: float,
    failpoints: Failpoints | None = None,
) -> RestoreChoice:
    """Step 1: the snapshot to restore from (rules 1-4). ``where``: the checkpoint location, for
    messages; ``fresh``: ``--fresh`` was given (it applies to the first attempt only: a restart
    resumes this run); ``orphan_grace``: seconds a shared file of object storage is kept however it
    is referenced (rule 3)."""
    fresh = fresh and first_attempt
    facts = RestoreFacts(where=where, committed=tuple(committed), fresh=fresh,
                         savepoint=str(savepoint.path) if savepoint is not None else None, first_attempt=first_attempt)
    decision = plan_restore(storage.restore_candidates() if storage is not None else (), facts)
    md: CheckpointMetadata | None = None
    match decision:
        case Refuse(message=message):
            raise ConfigError(message)
        case RestoreFrom(metadata=metadata, discards=discards):
            md = metadata
        case StartFresh(discards=discards):
            pass
        case _:
            assert_never(decision)
    if storage is not None:
        # Rule 4: read before the discards, which may delete the directory of the highest id.
        next_id = max(next_id, storage.highest_id() + 1)
        for gone in discards:
            if not fresh:
                log.warning("skipping checkpoint %d: %s", gone.checkpoint_id, gone.reason)
            storage.discard(gone.checkpoint_id)
        if fresh:
            log.info("--fresh: discarded the existing checkpoints in %s", where)
    if savepoint is not None and (md is None or not same_origin(md, savepoint.metadata)):
        if storage is not None:
            _discard_other_runs(storage, savepoint, where)
        md = savepoint.metadata
        log.info("restoring from savepoint %s (checkpoint %d, %d task states, %d bytes)",
                 savepoint.path, md.checkpoint_id, len(md.tasks), md.state_size)
        return RestoreChoice(md, max(next_id, int(md.checkpoint_id) + 1), identity(md, savepoint.path),
                             str(savepoint.path))
    if md is None:
        if storage is not None:
            storage.sweep(set())
            _sweep_orphans(storage, now_wall, orphan_grace)
        log.info("no completed checkpoint to restore from: starting from scratch")
        return RestoreChoice(None, next_id, None, None)
    assert storage is not None
    log.info("restoring from checkpoint %d (completed with %d task states, %d bytes)",
             md.checkpoint_id, len(md.tasks), md.state_size)
    storage.sweep({md.checkpoint_id})
    _sweep_orphans(storage, now_wall, orphan_grace)
    if failpoints:
        failpoints.hit(fpn.RECOVERY_CHECKPOINT_CHOSEN)
    return RestoreChoice(md, next_id, md.origin, None)


def orphan_grace(storage: CheckpointStorage | None, checkpoint_timeout: float) -> float:
    """Rule 3: no grace in a locked local directory, the checkpoint timeout elsewhere."""
    return 0.0 if storage is None or isinstance(storage, LocalCheckpointStorage) else checkpoint_timeout


def _sweep_orphans(storage: CheckpointStorage, now_wall: float, grace: float) -> None:
    swept = storage.sweep_orphans(grace, now_wall)
    if swept:
        log.info("deleted %d orphaned shared file(s) of aborted or crashed checkpoints", len(swept))


def _discard_other_runs(storage: CheckpointStorage, savepoint: Savepoint, where: Any) -> None:
    gone = [info.checkpoint_id for info in storage.list_checkpoints()
            if info.metadata is None or not same_origin(info.metadata, savepoint.metadata)]
    for checkpoint_id in gone:
        storage.discard(checkpoint_id)
    if gone:
        log.info("restoring from savepoint %s: discarded %d checkpoint(s) of an earlier run in %s",
                 savepoint.path, len(gone), where)
