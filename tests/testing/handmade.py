"""Hand-made inputs for the oracles: committed ``FileSink`` files and checkpoint directories written
here from the documented layout (``flowstate.testing.oracles.checkpoints``), not by the engine."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any


def write_committed(directory: Path, files: dict[str, list[Any]]) -> Path:
    """Visible files named as ``FileSink`` names them, one JSON value per line."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def channel_state(*batches: list[Any]) -> dict[int, list[bytes]]:
    """The ``__channels__`` entry of a task's state: channel 0 holding ``batches``, pickled one by one."""
    return {0: [pickle.dumps(batch) for batch in batches]}


def keyed(**tables: dict[Any, Any]) -> dict[str, Any]:
    """An operator's keyed state (heap format, as a task stores it) with value-state ``tables``."""
    return {"format": "heap-v2", "max_parallelism": 128, "key_groups": [0, 128], "__files__": {},
            "states": {name: {"kind": "value", "chunks": [pickle.dumps(entries)]} for name, entries in tables.items()}}


def write_checkpoint(root: Path, checkpoint_id: int, states: dict[str, dict[str, Any]], *,
                     mode: str = "exactly_once", final: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """A completed checkpoint: one pickled state file per task, then ``_metadata`` with its checksum."""
    directory = root / f"chk-{checkpoint_id:06d}"
    directory.mkdir(parents=True)
    tasks = []
    for task, state in sorted(states.items()):
        data = pickle.dumps(state)
        (directory / f"{task}.state").write_bytes(data)
        tasks.append({"task": task, "vertex": task.split("#")[0], "subtask": int(task.split("#")[1]),
                      "handle": {"path": f"{directory.name}/{task}.state", "size": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()},
                      "sync_seconds": 0.0, "async_seconds": 0.0, "alignment_seconds": 0.0,
                      "channel_state_bytes": 0})
    body = {"format_version": 1, "checkpoint_id": checkpoint_id, "job": "handmade", "mode": mode, "final": final,
            "trigger_time": 0.0, "completion_time": 0.0, "max_parallelism": 128, "parallelism": {}, "tasks": tasks,
            "extra": extra or {}}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    document = {**body, "checksum": hashlib.sha256(canonical).hexdigest()}
    (directory / "_metadata").write_text(json.dumps(document, sort_keys=True, indent=2) + "\n")
    return directory
