"""The history of a job's checkpoints, restores and restarts, as values, and the file that keeps it.

Retention keeps only the newest completed checkpoints (one by default) and a failed checkpoint
leaves no metadata at all, so the metadata on disk cannot tell how checkpoints went over time. The
coordinator therefore appends one JSON line per event to ``<checkpoint dir>/_history.jsonl``:

- ``start``: a run began (its configuration and job graph);
- ``checkpoint``: a checkpoint completed or failed, with its per-subtask figures (the metadata's
  synchronous, asynchronous and alignment times, in-flight and written bytes, plus the time from
  the trigger to each subtask's acknowledgement, which only the coordinator sees) or its failure
  reason and the declines that caused it;
- ``restore``: an attempt restored (from a checkpoint, or from scratch) and how long that took;
- ``restart``: an attempt failed and the job restarts.

Rules:

1. Events are frozen dataclasses; ``encode``/``decode`` turn them into JSON objects and back, and an
   unknown or malformed line is skipped when reading (a crash may cut the last line short).
2. The file is appended to by the coordinator only, one line per event, flushed at once. When a run
   starts with more than ``KEEP`` events in the file, the oldest are dropped; ``--fresh`` starts a
   new file.
3. ``read_history`` also turns every completed checkpoint on disk that the file does not name into
   an event (from its metadata), so that a directory written before the file existed, or by a run
   whose history was lost, still has a history.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from flowstate.storage.base import CheckpointMetadata

log = logging.getLogger("flowstate")

HISTORY_FILE = "_history.jsonl"
KEEP = 2000
"""Events kept when a run starts (rule 2)."""


@dataclass(frozen=True, slots=True)
class SubtaskStats:
    """One subtask's part of one completed checkpoint."""

    task: str
    ack_seconds: float | None
    """From the trigger to the subtask's acknowledgement (``None`` when not recorded)."""
    alignment_seconds: float
    sync_seconds: float
    async_seconds: float
    channel_bytes: int
    """In-flight bytes persisted (unaligned checkpoints)."""
    bytes_written: int
    full_size: int

    @property
    def barrier_seconds(self) -> float | None:
        """From the trigger until the subtask took its snapshot: the barrier's travel behind queued
        records plus the alignment (what back-pressure costs a checkpoint)."""
        if self.ack_seconds is None:
            return None
        return max(0.0, self.ack_seconds - self.sync_seconds - self.async_seconds)


@dataclass(frozen=True, slots=True)
class DeclineRecord:
    task: str
    reason: str
    """``CheckpointFailureReason`` name."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A checkpoint that completed or failed."""

    checkpoint_id: int
    status: str
    """``completed`` or ``failed``."""
    trigger_time: float
    """Wall-clock seconds since the epoch."""
    duration: float
    """From the trigger to the completion (or to the failure)."""
    size: int = 0
    """Bytes of the whole state (state files and shared files)."""
    bytes_written: int = 0
    """Bytes uploaded for this checkpoint (incremental size)."""
    savepoint: bool = False
    final: bool = False
    subtasks: tuple[SubtaskStats, ...] = ()
    reason: str | None = None
    """``CheckpointFailureReason`` name of a failed checkpoint."""
    reason_text: str | None = None
    declines: tuple[DeclineRecord, ...] = ()
    missing: tuple[str, ...] = ()
    """Subtasks that had not acknowledged a failed checkpoint."""

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def max_alignment(self) -> float:
        return max((s.alignment_seconds for s in self.subtasks), default=0.0)

    @property
    def max_sync(self) -> float:
        return max((s.sync_seconds for s in self.subtasks), default=0.0)

    @property
    def max_async(self) -> float:
        return max((s.async_seconds for s in self.subtasks), default=0.0)

    @property
    def channel_bytes(self) -> int:
        return sum(s.channel_bytes for s in self.subtasks)


@dataclass(frozen=True, slots=True)
class RestoreRecord:
    time: float
    attempt: int
    checkpoint_id: int | None
    """``None``: the attempt started from scratch."""
    seconds: float
    """Choosing the restore point, loading and assigning the state, building the tasks."""
    savepoint: str | None = None


@dataclass(frozen=True, slots=True)
class RestartRecord:
    time: float
    reason: str


@dataclass(frozen=True, slots=True)
class StartRecord:
    time: float
    job: str
    settings: dict[str, Any] = field(default_factory=dict)
    """The configuration that matters to a diagnosis: mode, interval, timeout, state backend, …"""
    vertices: tuple[dict[str, Any], ...] = ()
    """The job graph: ``name``, ``parallelism``, ``chain`` (text), ``inputs`` (``[source, partition]``)."""


Event = CheckpointRecord | RestoreRecord | RestartRecord | StartRecord

_KINDS: dict[str, type] = {"checkpoint": CheckpointRecord, "restore": RestoreRecord, "restart": RestartRecord,
                           "start": StartRecord}
_NAMES = {kind: name for name, kind in _KINDS.items()}


def encode(event: Event) -> dict[str, Any]:
    return {"event": _NAMES[type(event)], **asdict(event)}


def decode(data: dict[str, Any]) -> Event | None:
    """The event of one JSON object, or ``None`` when it is not one (rule 1)."""
    kind = _KINDS.get(str(data.get("event")))
    if kind is None:
        return None
    fields = {k: v for k, v in data.items() if k != "event"}
    try:
        if kind is CheckpointRecord:
            fields["subtasks"] = tuple(SubtaskStats(**s) for s in fields.get("subtasks", ()))
            fields["declines"] = tuple(DeclineRecord(**d) for d in fields.get("declines", ()))
            fields["missing"] = tuple(fields.get("missing", ()))
        if kind is StartRecord:
            fields["vertices"] = tuple(fields.get("vertices", ()))
        return kind(**fields)  # type: ignore[no-any-return]
    except TypeError:
        return None


def parse_lines(lines: Iterable[str]) -> list[Event]:
    events = []
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and (event := decode(data)) is not None:
            events.append(event)
    return events


def from_metadata(md: CheckpointMetadata) -> CheckpointRecord:
    """A completed checkpoint's event from its metadata alone (no acknowledgement times)."""
    return CheckpointRecord(
        int(md.checkpoint_id), "completed", md.trigger_time, md.duration, md.full_size or md.state_size,
        md.bytes_written or md.state_size, md.savepoint, md.final,
        tuple(SubtaskStats(t.task, None, t.alignment_seconds, t.sync_seconds, t.async_seconds,
                           t.channel_state_bytes, t.bytes_written, t.full_size) for t in md.tasks),
    )


def merge(events: list[Event], on_disk: Iterable[CheckpointMetadata]) -> list[Event]:
    """Rule 3: ``events`` plus an event for every completed checkpoint on disk they do not name."""
    named = {e.checkpoint_id for e in events if isinstance(e, CheckpointRecord) and e.completed}
    extra = [from_metadata(md) for md in on_disk if int(md.checkpoint_id) not in named]
    if not extra:
        return events
    return sorted([*events, *extra], key=_time)


def _time(event: Event) -> float:
    return event.trigger_time if isinstance(event, CheckpointRecord) else event.time


# ---- the file ------------------------------------------------------------------------------------


class HistoryLog:
    """Appends events to ``<directory>/_history.jsonl`` (rule 2). Write errors are logged once and
    then ignored: the history must never fail the job."""

    def __init__(self, directory: Path, *, fresh: bool = False) -> None:
        self.path = directory / HISTORY_FILE
        self._failed = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if fresh:
                self.path.unlink(missing_ok=True)
            elif self.path.exists() and self.path.stat().st_size > 0:
                lines = self.path.read_text(errors="replace").splitlines()
                if len(lines) > KEEP:
                    temporary = self.path.with_name(f".{HISTORY_FILE}.tmp")
                    temporary.write_text("\n".join(lines[-KEEP:]) + "\n")
                    os.replace(temporary, self.path)
            self._file: TextIO | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the run
        except OSError as exc:
            log.warning("cannot write the checkpoint history %s: %s", self.path, exc)
            self._file = None

    def append(self, event: Event) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(encode(event), separators=(",", ":")) + "\n")
            self._file.flush()
        except (OSError, ValueError) as exc:
            if not self._failed:
                log.warning("cannot write the checkpoint history %s: %s", self.path, exc)
                self._failed = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_history(directory: str | os.PathLike[str]) -> list[Event]:
    """The events of a local checkpoint directory: its history file, merged with the completed
    checkpoints on disk (rule 3)."""
    root = Path(directory)
    path = root / HISTORY_FILE
    try:
        events = parse_lines(path.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        events = []
    from flowstate.storage.local import LocalCheckpointStorage

    storage = LocalCheckpointStorage(root)
    on_disk = [info.metadata for info in storage.list_checkpoints() if info.metadata is not None]
    return merge(events, on_disk)
