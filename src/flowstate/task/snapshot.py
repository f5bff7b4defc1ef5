"""A task's snapshot after its synchronous part: what it holds (``Snapshot``), the in-flight data an
unaligned checkpoint records with it (``Capture``), and the asynchronous part that writes it and
acknowledges it (``SnapshotWriter``): Steps 3 and 4 of ``flowstate.task.task``.

Rules:

1. A snapshot is acknowledged only once its state file is durable; a snapshot that cannot be
   written declines the checkpoint (``SNAPSHOT_FAILURE``, with the cause). Every part of a snapshot
   is released exactly once, however the write ends.
2. Incremental checkpoints: the files of a keyed snapshot are uploaded once as shared files; a later
   snapshot refers to those the newest **completed** checkpoint references instead of uploading them
   again (shared files are immutable: same key, same bytes). The references of a checkpoint become
   the known ones only when it completes: a file of an aborted checkpoint may have been swept.
3. A full snapshot (a savepoint, or incremental checkpoints off) copies every file into the
   checkpoint's own directory and references nothing outside it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstate import failpoints as fpn
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.state.backend import SnapshotParts
from flowstate.storage.base import StateHandle, TaskState
from flowstate.storage.state_file import KeyedSnapshot, TaskStateFile, encode_task_state
from flowstate.task.env import TaskEnv
from flowstate.task.messages import Ack, Decline


def state_file_name(task: str) -> str:
    """The name of a task's state file in a checkpoint: ``<task>.state``, behind a ``#`` when the
    task's name starts with ``.`` or ``_`` (a vertex named by such a uid), which storage reserves for
    temporary files and the metadata. No other name starts with ``#``: a uid has none."""
    return f"#{task}.state" if task[:1] in (".", "_") else f"{task}.state"


@dataclass(slots=True)
class Snapshot:
    """The synchronous part of one task's snapshot, waiting to be written."""

    checkpoint_id: CheckpointId
    parts: list[tuple[str, Any]]
    sync_seconds: float
    alignment_seconds: float
    channels: dict[int, list[bytes]] | None = None
    channel_bytes: int = 0
    full: bool = False
    """A self-contained snapshot (a savepoint): it references no file of another checkpoint."""
    records: int = 0
    """A source task's records read in this attempt before the barrier (see ``Ack.records``)."""
    source: Any = None
    """A source task's reader position at the barrier."""
    watermark: float | None = None
    """A task's combined input watermark at the barrier, when it is finite."""

    def release(self) -> None:
        """Let every part drop what it holds for this snapshot (keyed snapshots: frozen layers, hard
        links); called once, whether the snapshot was written, failed or dropped."""
        parts, self.parts = self.parts, []
        for _, part in parts:
            release = getattr(part, "release", None)
            if release is not None:
                release()


class Capture:
    """In-flight batches recorded for an unaligned checkpoint, pickled as they are recorded so that
    their size is known and bounded."""

    __slots__ = ("snapshot", "limit", "recording", "channels", "bytes", "over_limit")

    def __init__(self, snapshot: Snapshot, limit: int) -> None:
        self.snapshot = snapshot
        self.limit = limit
        self.recording: set[int] = set()
        self.channels: dict[int, list[bytes]] = {}
        self.bytes = 0
        self.over_limit = False

    def record(self, channel: int, batches: list[list[Any]]) -> bool:
        """Record ``batches`` of ``channel``; False once the bound is exceeded (all is dropped)."""
        if self.over_limit:
            return False
        for batch in batches:
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            self.bytes += len(data)
            self.channels.setdefault(channel, []).append(data)
        if self.bytes > self.limit:
            self.over_limit = True
            self.channels.clear()
            self.recording.clear()
            return False
        return True


class SnapshotWriter:
    """Steps 3 and 4 for the snapshots of one task, on the job's snapshot pool (or the task's own
    thread in ``stop_the_world`` mode)."""

    def __init__(self, task_id: TaskId, vertex: str, subtask: int, env: TaskEnv) -> None:
        self.task_id = task_id
        self.vertex = vertex
        self.subtask = subtask
        self.env = env
        # Rule 2: the shared files the newest completed checkpoint references, and the references
        # of checkpoints acknowledged and not yet completed.
        self._uploaded: dict[str, StateHandle] = {}
        self._acked_files: dict[CheckpointId, dict[str, StateHandle]] = {}

    def completed(self, checkpoint_id: CheckpointId) -> None:
        """Checkpoint ``checkpoint_id`` completed: its files are the ones later snapshots refer to."""
        files = self._acked_files.pop(checkpoint_id, None)
        if files is not None:
            self._uploaded = files
        for older in [c for c in self._acked_files if c < checkpoint_id]:
            del self._acked_files[older]

    def write_and_ack(self, snapshot: Snapshot) -> None:
        """Step 3 then Step 4. A keyed snapshot's files are uploaded first (each shared file once:
        those the newest completed checkpoint references are only referred to), then the state file
        naming them; every snapshot part is released however this ends."""
        env = self.env
        cid = snapshot.checkpoint_id
        try:
            t0 = env.clock.monotonic()
            operators: dict[str, Any] = {}
            files: dict[str, StateHandle] = {}
            written = 0
            for uid, part in snapshot.parts:
                value = part.materialize()
                if isinstance(value, SnapshotParts):
                    refs: dict[str, StateHandle] = {}
                    for key, path in value.files.items():
                        uploaded, new_bytes = self.upload(cid, key, path, snapshot.full)
                        files[key] = refs[key] = uploaded
                        written += new_bytes
                    value = KeyedSnapshot(value.data, refs)
                operators[uid] = value
            state = TaskStateFile(operators, snapshot.source, snapshot.channels or {}, snapshot.watermark)
            handle: StateHandle | None = None
            if not state.is_empty():
                assert env.storage is not None
                data = encode_task_state(state)
                handle = env.storage.write_state(cid, state_file_name(self.task_id), data, codec=env.compression)
                written += handle.size
            if env.failpoints:
                env.failpoints.hit(fpn.TASK_AFTER_SNAPSHOT)
            async_seconds = env.clock.monotonic() - t0
            if files and not snapshot.full and env.incremental:
                self._acked_files[cid] = files
            shared = tuple(files.values())
            env.reports.put(Ack(self.task_id, cid, TaskState(
                self.task_id, self.vertex, self.subtask, handle, snapshot.sync_seconds, async_seconds,
                snapshot.alignment_seconds, snapshot.channel_bytes, shared=shared, bytes_written=written,
                full_size=(handle.size if handle is not None else 0) + sum(h.size for h in shared)),
                records=snapshot.records))
        except Exception as exc:  # noqa: BLE001 - a failed snapshot declines the checkpoint
            env.reports.put(Decline(self.task_id, cid, CheckpointFailureReason.SNAPSHOT_FAILURE,
                                    f"{type(exc).__name__}: {exc}"))
        finally:
            snapshot.release()

    def upload(self, cid: CheckpointId, key: str, path: str, full: bool) -> tuple[StateHandle, int]:
        """The handle of file ``key`` of a keyed snapshot, and the bytes written to store it. A full
        snapshot (a savepoint, or incremental checkpoints off) copies the file into the checkpoint's
        own directory; an incremental one uploads it as a shared file unless the newest completed
        checkpoint already references it (shared files are immutable: same key, same bytes)."""
        storage = self.env.storage
        assert storage is not None
        if full or not self.env.incremental:
            with open(path, "rb") as f:
                data = f.read()
            handle = storage.write_state(cid, f"{self.task_id}-{key}", data)
            return handle, handle.size
        known = self._uploaded.get(key)
        if known is not None:
            return known, 0
        handle = storage.write_shared(key, Path(path))
        return handle, handle.size
