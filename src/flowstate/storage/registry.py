"""Reference counts of shared files, pure (no I/O): which checkpoints reference which shared file.

Rules:

1. ``register(n, handles)`` records that checkpoint ``n`` references the paths of ``handles`` (each
   path counted once per checkpoint, however often it is listed). Registering ``n`` again replaces
   its previous set: what is no longer listed is released as by ``unregister``.
2. ``unregister(n)`` forgets ``n`` and returns the paths whose count fell to 0, sorted: the files
   that may now be deleted. Unregistering an unknown checkpoint returns nothing.
3. A path's count is the number of registered checkpoints that reference it; a path is *released*
   exactly when its last referencing checkpoint is unregistered, never before.

The checkpoint catalogue keeps one registry per open storage: rebuilt from every valid metadata when
the storage is opened (``from_metadata``), updated by ``write_metadata`` and ``discard``. Not
thread-safe: the catalogue holds a lock around it.
"""

from __future__ import annotations

from collections.abc import Iterable

from flowstate.checkpoint.ids import CheckpointId
from flowstate.storage.base import CheckpointMetadata, StateHandle

SHARED_PREFIX = "shared/"


def shared_files(metadata: CheckpointMetadata) -> tuple[StateHandle, ...]:
    """The files under ``shared/`` that ``metadata`` references, each once, in task order."""
    return tuple(h for h in metadata.files() if h.path.startswith(SHARED_PREFIX))


class SharedStateRegistry:
    __slots__ = ("_by_checkpoint", "_counts")

    def __init__(self) -> None:
        self._by_checkpoint: dict[CheckpointId, frozenset[str]] = {}
        self._counts: dict[str, int] = {}

    @classmethod
    def from_metadata(cls, metadata: Iterable[CheckpointMetadata]) -> SharedStateRegistry:
        """A registry counting the shared files of every checkpoint in ``metadata``."""
        registry = cls()
        for found in metadata:
            registry.register(found.checkpoint_id, shared_files(found))
        return registry

    def register(self, checkpoint_id: CheckpointId, handles: Iterable[StateHandle]) -> list[str]:
        """Rule 1. Returns the paths released by a re-registration (empty for a new checkpoint)."""
        paths = frozenset(h.path for h in handles)
        released = self.unregister(checkpoint_id) if checkpoint_id in self._by_checkpoint else []
        self._by_checkpoint[checkpoint_id] = paths
        for path in paths:
            self._counts[path] = self._counts.get(path, 0) + 1
        return [path for path in released if path not in paths]

    def unregister(self, checkpoint_id: CheckpointId) -> list[str]:
        """Rule 2."""
        paths = self._by_checkpoint.pop(checkpoint_id, frozenset())
        released = []
        for path in paths:
            count = self._counts[path] - 1
            if count:
                self._counts[path] = count
            else:
                del self._counts[path]
                released.append(path)
        return sorted(released)

    def count(self, path: str) -> int:
        """How many registered checkpoints reference ``path``."""
        return self._counts.get(path, 0)

    def referenced(self) -> frozenset[str]:
        """Every path some registered checkpoint references."""
        return frozenset(self._counts)

    def checkpoints(self) -> frozenset[CheckpointId]:
        return frozenset(self._by_checkpoint)

    def __contains__(self, checkpoint_id: object) -> bool:
        return checkpoint_id in self._by_checkpoint

    def __repr__(self) -> str:
        return f"SharedStateRegistry({len(self._by_checkpoint)} checkpoints, {len(self._counts)} files)"
