"""Reading a checkpoint directory offline, for the oracles: shares no code with the engine.

Everything the engine's storage and tasks write is restated here from the documented layout, so
that a bug in the engine's reader cannot hide a bug in its writer:

1. A completed checkpoint is a directory ``chk-<id>`` (decimal, any zero padding, id ≥ 1) holding a
   file ``_metadata``. A directory without it never completed and is ignored.
2. ``_metadata`` is UTF-8 JSON. Its ``checksum`` is the SHA-256 (hex) of the canonical JSON of every
   other field (sorted keys, no whitespace, UTF-8 without escaping). Its ``checkpoint_id`` is the one
   of its directory. Its ``tasks`` name, per task, a ``handle`` (``path`` relative to the checkpoint
   root, ``size``, ``sha256``, optionally ``codec``: ``zstd`` or ``none``, the default) or ``null``
   for a task without state.
3. A state file is checked against its handle (size, then SHA-256 of the stored bytes) **before** it
   is decompressed (zstd frames, with the ``zstandard`` package) and unpickled. Version 2 is the
   tuple ``("flowstate-task-state", 2, body)``, ``body`` a dict: ``operators`` (operator uid →
   ``("keyed", data, files)`` or ``("value", state)``), ``source`` (the source reader's positions,
   split → next record, or ``None``), ``channels`` (input channel → list of pickled batches: the
   in-flight records an unaligned checkpoint persisted) and ``watermark``. Version 1 (written before)
   is a dict: operator uid → that operator's state, beside ``"__source__"`` (positions),
   ``"__channels__"`` and ``"__watermark__"``; a keyed state there also holds ``"__files__"``.
4. ``extra`` of the metadata may hold ``source_records``: the records the job's sources had read up
   to the checkpoint's barriers, over every run that led to it.
5. Keyed state of an operator (heap backend: version 2's ``data``) is ``{"format": "heap-v2",
   "states": {name: {"kind", "chunks"}}, …}`` where each chunk is a pickled dict of entries (key →
   value); or, incremental, ``{"format": "heap-chain-v1", "chain": [file key, ...], …}`` where each
   key names a file of the operator's ``files`` (stored under the checkpoint root): ``MAGIC``, then a
   zstd frame of a pickled ``{"role", "states": {name: {"kind", "puts", "deleted"}}}``, ``puts`` and
   ``deleted`` lists of ``(codec, bytes)`` chunks (``marshal`` or ``pickle`` of a dict). The entries
   are the base's, then each delta's puts and deletes applied in order.

A checkpoint that breaks rule 2 or 3 is returned as ``Unreadable`` with the reason: for a checker
that is a finding, never something to skip silently.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

METADATA = "_metadata"
V1_SOURCE = "__source__"
V1_CHANNELS = "__channels__"
V1_RESERVED = frozenset({V1_SOURCE, V1_CHANNELS, "__watermark__"})
V2_TAG = "flowstate-task-state"
KEYED_FORMAT = "heap-v2"
CHAIN_FORMAT = "heap-chain-v1"
CHAIN_MAGIC = b"FSHEAPCHAIN1\n"
_DIRECTORY = re.compile(r"chk-([0-9]+)")


@dataclass(frozen=True, slots=True)
class TaskFile:
    """One task's state file, read (rule 3)."""

    operators: dict[str, Any]
    """Operator uid → its state (keyed state: its heap data, rule 5)."""
    source: dict[str, Any]
    """Split → position (empty for a task that heads no source)."""
    channels: dict[int, list[bytes]]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Operator uid → file key → the stored file's handle ``(path, size, sha256, codec)`` (rule 5)."""


def _task_file(state: Any) -> TaskFile | str:
    """Rule 3: the state of either version, or why it is neither."""
    if isinstance(state, dict):
        operators = {uid: value for uid, value in state.items() if uid not in V1_RESERVED}
        return TaskFile(operators, state.get(V1_SOURCE) or {}, state.get(V1_CHANNELS) or {})
    if not (isinstance(state, tuple) and len(state) == 3 and state[0] == V2_TAG and state[1] == 2
            and isinstance(state[2], dict)):
        return f"holds a {type(state).__name__}, not a task state file of version 1 or 2"
    body = state[2]
    operators = {}
    files = {}
    for uid, value in (body.get("operators") or {}).items():
        if isinstance(value, tuple) and value and value[0] == "keyed":
            operators[uid] = value[1]
            files[uid] = dict(value[2]) if len(value) > 2 and isinstance(value[2], dict) else {}
        elif isinstance(value, tuple) and len(value) == 2 and value[0] == "value":
            operators[uid] = value[1]
        else:
            return f"holds operator {uid!r} as {value!r:.60}, neither keyed nor a value"
    return TaskFile(operators, body.get("source") or {}, body.get("channels") or {}, files)


def _decode_chunk(codec: str, data: bytes) -> Any:
    return marshal.loads(data) if codec == "marshal" else pickle.loads(data)


def _chain_entries(root: Path, data: dict[str, Any], files: dict[str, Any], table: str) -> dict[Any, Any]:
    """Rule 5: the entries of ``table`` in a chain of heap files."""
    entries: dict[Any, Any] = {}
    for key in data["chain"]:
        raw = (root / files[key][0]).read_bytes()
        if not raw.startswith(CHAIN_MAGIC):
            raise NotHeapState(f"{files[key][0]} is not a heap chain file")
        body = pickle.loads(zstandard.ZstdDecompressor().decompress(raw[len(CHAIN_MAGIC):]))
        state = body["states"].get(table)
        if state is None:
            continue
        for codec, chunk in state["puts"]:
            entries.update(_decode_chunk(codec, chunk))
        for codec, chunk in state["deleted"]:
            for gone in _decode_chunk(codec, chunk):
                entries.pop(gone, None)
    return entries


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One completed checkpoint, read and verified."""

    checkpoint_id: int
    mode: str
    final: bool
    states: dict[str, TaskFile]
    """Task id → its state file (tasks without state are absent)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """The metadata's ``extra`` (rule 4)."""
    root: Path | None = None
    """The storage root, where the files of incremental keyed state are (rule 5)."""

    def source_positions(self) -> dict[str, Any]:
        """Split → position, over every source task."""
        positions: dict[str, Any] = {}
        for state in self.states.values():
            positions.update(state.source)
        return positions

    def keyed_entries(self, uid: str, table: str) -> dict[Any, Any]:
        """The entries of keyed state ``table`` of operator ``uid``, over every subtask."""
        entries: dict[Any, Any] = {}
        for task, state in self.states.items():
            if uid not in state.operators:
                continue
            operator = state.operators[uid]
            if isinstance(operator, dict) and operator.get("format") == CHAIN_FORMAT and self.root is not None:
                entries.update(_chain_entries(self.root, operator, state.files.get(uid, {}), table))
                continue
            if not isinstance(operator, dict) or operator.get("format") != KEYED_FORMAT:
                found = operator.get("format") if isinstance(operator, dict) else type(operator).__name__
                raise NotHeapState(f"checkpoint {self.checkpoint_id}, task {task}: keyed state of {uid!r} "
                                 f"is {found!r}; this checker reads {KEYED_FORMAT!r}")
            for chunk in operator["states"].get(table, {"chunks": ()})["chunks"]:
                entries.update(pickle.loads(chunk))
        return entries

    def in_flight(self, uid: str) -> list[tuple[str, list[Any]]]:
        """The channel state of the tasks that run operator ``uid``: (task, records in channel order)."""
        found = []
        for task, state in sorted(self.states.items()):
            if uid not in state.operators:
                continue
            for _channel, batches in sorted(state.channels.items()):
                records: list[Any] = []
                for data in batches:
                    records.extend(pickle.loads(data))
                found.append((task, records))
        return found


class NotHeapState(ValueError):
    """Keyed state in a format this reader does not read (a RocksDB backend's files)."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A checkpoint with metadata that does not verify: a finding."""

    checkpoint_id: int
    reason: str


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _read(root: Path, checkpoint_id: int, directory: Path) -> Checkpoint | Unreadable:
    def refuse(reason: str) -> Unreadable:
        return Unreadable(checkpoint_id, f"checkpoint {checkpoint_id}: {reason}")

    try:
        document = json.loads((directory / METADATA).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return refuse(f"{METADATA} does not parse: {error}")
    if not isinstance(document, dict):
        return refuse(f"{METADATA} is not a JSON object")
    body = {k: v for k, v in document.items() if k != "checksum"}
    if document.get("checksum") != hashlib.sha256(_canonical(body)).hexdigest():
        return refuse(f"{METADATA} does not match its checksum")
    if body.get("checkpoint_id") != checkpoint_id:
        return refuse(f"{METADATA} names checkpoint {body.get('checkpoint_id')!r}")
    states: dict[str, TaskFile] = {}
    try:
        tasks = [(str(task["task"]), task["handle"]) for task in body["tasks"]]
        handles = [(task, h["path"], h["size"], h["sha256"], h.get("codec", "none")) for task, h in tasks if h is not None]
    except (KeyError, TypeError) as error:
        return refuse(f"{METADATA} has a malformed task list ({type(error).__name__}: {error})")
    for task, relative, size, sha256, codec in handles:
        if not isinstance(relative, str) or os.path.isabs(relative) or ".." in Path(relative).parts:
            return refuse(f"task {task} names a file outside the directory: {relative!r}")
        try:
            data = (root / relative).read_bytes()
        except OSError as error:
            return refuse(f"{relative} cannot be read: {error.strerror}")
        if len(data) != size:
            return refuse(f"{relative} has {len(data)} bytes, the metadata says {size}")
        if hashlib.sha256(data).hexdigest() != sha256:
            return refuse(f"{relative} does not match its SHA-256")
        if codec == "zstd":
            try:
                data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            except zstandard.ZstdError as error:
                return refuse(f"{relative} matches its SHA-256 but is not a zstd frame: {error}")
        elif codec != "none":
            return refuse(f"{relative} has the unknown codec {codec!r}")
        try:
            state = pickle.loads(data)
        except Exception as error:  # noqa: BLE001 - whatever the bytes hold, it is a finding
            return refuse(f"{relative} matches its SHA-256 but does not unpickle: {error}")
        read = _task_file(state)
        if isinstance(read, str):
            return refuse(f"{relative} {read}")
        states[task] = read
    extra = body.get("extra")
    return Checkpoint(checkpoint_id, str(body.get("mode")), bool(body.get("final")), states,
                      dict(extra) if isinstance(extra, dict) else {}, root)


def completed_checkpoints(root: str | os.PathLike[str]) -> Iterator[Checkpoint | Unreadable]:
    """Every completed checkpoint under ``root`` (rule 1), oldest first, each read and verified."""
    root = Path(root)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    found = []
    for entry in entries:
        match = _DIRECTORY.fullmatch(entry.name)
        if match and int(match[1]) >= 1 and entry.is_dir() and os.path.exists(os.path.join(entry.path, METADATA)):
            found.append((int(match[1]), Path(entry.path)))
    for checkpoint_id, directory in sorted(found):
        yield _read(root, checkpoint_id, directory)
