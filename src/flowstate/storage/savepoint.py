"""Savepoints: snapshots taken on request, owned by the user, each in a directory of its own.

A savepoint directory is a checkpoint storage root in the local format that holds exactly one
snapshot: ``savepoint-<id>-<random>/chk-<id>/`` with its state files and its ``_metadata`` (whose
``extra`` has ``"savepoint": true``). The same validation applies as to a checkpoint (checksums of
the metadata and of every file), and ``flowstate checkpoints list PATH`` lists it.

Rules:

1. Tasks write a savepoint's state files straight into its directory: ``SnapshotTargets`` routes
   every write of that checkpoint id there. The metadata is written there last, as for a checkpoint.
2. flowstate never deletes a complete savepoint (no retention applies). An aborted one is removed.
3. A savepoint is restored from with ``--from-savepoint PATH``: it must hold one valid snapshot. New
   checkpoints record the savepoint they descend from (``CheckpointMetadata.origin``), so that
   running the same command again after a crash resumes from the newest of them instead of the
   savepoint.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import Chosen, Invalid, Valid, choose
from flowstate.errors import ConfigError
from flowstate.storage.base import (
    CheckpointInfo,
    CheckpointMetadata,
    CheckpointStorage,
    SavepointOrigin,
    StateHandle,
)
from flowstate.storage.local import LocalCheckpointStorage, parse_checkpoint_dir_name

log = logging.getLogger("flowstate")

def savepoint_directory_name(checkpoint_id: int) -> str:
    """``savepoint-000042-3fa2c1``: the id, and a random suffix so that names never collide."""
    return f"savepoint-{checkpoint_id:06d}-{secrets.token_hex(3)}"


def identity(metadata: CheckpointMetadata, path: Path | None = None) -> SavepointOrigin:
    """What identifies a savepoint wherever its directory is moved: its id and completion time (and,
    for people, where it was)."""
    return SavepointOrigin(metadata.checkpoint_id, metadata.completion_time, None if path is None else str(path))


def same_origin(metadata: CheckpointMetadata, savepoint: CheckpointMetadata) -> bool:
    """Whether the run that wrote ``metadata`` was restored from ``savepoint`` (rule 3)."""
    return metadata.origin is not None and metadata.origin.same_savepoint(identity(savepoint))


@dataclass(frozen=True, slots=True)
class Savepoint:
    path: Path
    metadata: CheckpointMetadata
    storage: LocalCheckpointStorage


def open_savepoint(path: str | os.PathLike[str]) -> Savepoint:
    """The savepoint in ``path``, validated (rule 3). ``ConfigError`` says why it cannot be used."""
    where = Path(path)
    if not where.is_dir():
        raise ConfigError(f"savepoint {str(where)!r} is not a directory")
    entries = [e for e in os.listdir(where) if parse_checkpoint_dir_name(e) is not None]
    if not entries:
        raise ConfigError(
            f"{str(where)!r} holds no snapshot (no chk-N directory): not a savepoint or checkpoint storage"
        )
    storage = LocalCheckpointStorage(where)
    decision = choose(storage.restore_candidates())
    if not isinstance(decision, Chosen):
        reasons = "; ".join(f"{s.checkpoint_id}: {s.reason}" for s in decision.skipped)
        raise ConfigError(f"savepoint {str(where)!r} cannot be restored: {reasons}")
    if decision.skipped:
        reasons = "; ".join(f"{s.checkpoint_id}: {s.reason}" for s in decision.skipped)
        raise ConfigError(f"savepoint {str(where)!r} holds a newer snapshot that is not valid ({reasons})")
    return Savepoint(where.resolve(), decision.metadata, storage)


class _Unwritable:
    """Where a savepoint goes whose directory could not be made: every write fails with the reason,
    so every task declines and the savepoint is aborted."""

    __slots__ = ("error",)

    def __init__(self, error: OSError) -> None:
        self.error = error

    def write_state(self, checkpoint_id: CheckpointId, name: str, data: bytes) -> StateHandle:
        raise self.error

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        raise self.error

    def discard(self, checkpoint_id: CheckpointId) -> None:
        pass


class SnapshotTargets:
    """Checkpoint storage as tasks and the coordinator's shell see it: checkpoints go to the job's
    checkpoint storage, each savepoint to its own directory (rule 1). Thread-safe for writes of
    routed ids: a route is added before the checkpoint is triggered and never changes."""

    def __init__(self, checkpoints: CheckpointStorage | None) -> None:
        self._checkpoints = checkpoints
        self._savepoints: dict[CheckpointId, Any] = {}
        self.paths: dict[CheckpointId, Path] = {}
        self._routing = threading.Lock()

    def route_savepoint(self, checkpoint_id: CheckpointId, path: Path) -> None:
        """Route the writes of savepoint ``checkpoint_id`` to ``path`` (made by ``add_savepoint`` in
        the coordinator's process) unless they already are: how a task in another process learns it."""
        with self._routing:
            if checkpoint_id in self._savepoints:
                return
            try:
                self._savepoints[checkpoint_id] = LocalCheckpointStorage(path)
            except OSError as exc:
                log.warning("cannot open savepoint directory %s: %s", path, exc)
                self._savepoints[checkpoint_id] = _Unwritable(exc)
            self.paths[checkpoint_id] = path

    def add_savepoint(self, checkpoint_id: CheckpointId, parent: Path) -> Path:
        """Make the directory of savepoint ``checkpoint_id`` under ``parent`` and route its writes
        there. A directory that cannot be made routes to a storage that fails every write."""
        path = parent / savepoint_directory_name(checkpoint_id)
        try:
            self._savepoints[checkpoint_id] = LocalCheckpointStorage(path)
        except OSError as exc:
            log.warning("cannot create savepoint directory %s: %s", path, exc)
            self._savepoints[checkpoint_id] = _Unwritable(exc)
        self.paths[checkpoint_id] = path
        return path

    def _for(self, checkpoint_id: CheckpointId) -> Any:
        target = self._savepoints.get(checkpoint_id, self._checkpoints)
        if target is None:
            raise RuntimeError(f"checkpoint {checkpoint_id} has no storage (the job takes no checkpoints)")
        return target

    def write_state(self, checkpoint_id: CheckpointId, name: str, data: bytes, *, codec: str = "none") -> StateHandle:
        return self._for(checkpoint_id).write_state(checkpoint_id, name, data, codec=codec)  # type: ignore[no-any-return]

    def write_shared(self, key: str, source: Any) -> StateHandle:
        """Shared files belong to the job's checkpoints: a savepoint copies what it needs into its
        own directory with ``write_state`` instead (it references nothing outside itself)."""
        if self._checkpoints is None:
            raise RuntimeError("the job takes no checkpoints: no shared files")
        return self._checkpoints.write_shared(key, source)

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        self._for(metadata.checkpoint_id).write_metadata(metadata)

    def discard(self, checkpoint_id: CheckpointId) -> None:
        """Rule 2: a checkpoint's files; for a savepoint, its whole directory."""
        target = self._for(checkpoint_id)
        target.discard(checkpoint_id)
        path = self.paths.get(checkpoint_id)
        if path is not None:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # A late snapshot write can land after the discard; what is left has no metadata.
                log.warning("removing aborted savepoint directory %s failed: %s", path, exc)

    # Reading goes to the job's checkpoint storage: restores read through the storage they chose.

    def read_state(self, handle: StateHandle) -> bytes:
        assert self._checkpoints is not None
        return self._checkpoints.read_state(handle)

    def restore_candidates(self) -> Iterator[Valid[CheckpointMetadata] | Invalid]:
        assert self._checkpoints is not None
        return self._checkpoints.restore_candidates()

    def list_checkpoints(self) -> list[CheckpointInfo]:
        assert self._checkpoints is not None
        return self._checkpoints.list_checkpoints()

    def highest_id(self) -> int:
        assert self._checkpoints is not None
        return self._checkpoints.highest_id()

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        assert self._checkpoints is not None
        return self._checkpoints.sweep(keep)
