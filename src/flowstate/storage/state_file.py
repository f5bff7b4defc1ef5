"""The task state file: what one task writes for one checkpoint (``write_state``), typed and versioned.

Rules:

1. A task's state is a ``TaskStateFile``: ``operators`` (operator uid → that operator's state),
   ``source`` (the position of the reader of the source the task heads, if any), ``channels`` (input
   channel → the pickled batches an unaligned checkpoint recorded on it) and ``watermark`` (the
   task's combined input watermark, once finite). A uid is only ever a key of ``operators``: no uid,
   ``"__source__"`` included, can be taken for one of the other fields.
2. A keyed operator's state is a ``KeyedSnapshot``: the backend's ``data`` and the ``files`` the
   snapshot references (file key → ``StateHandle``: shared files, or a savepoint's own files).
3. Encoding, version 2 (``encode_task_state``): a pickle of the tuple ``("flowstate-task-state", 2,
   body)`` where ``body`` is a dict with exactly the keys ``operators``, ``source``, ``channels`` and
   ``watermark``; each operator's state is ``("keyed", data, {key: (path, size, sha256, codec)})`` or
   ``("value", state)``. Only built-in types are pickled around the operators' own states, so that
   renaming a class of this module never strands a checkpoint.
4. Version 1, written before (a pickled dict: uid → state, beside the reserved keys ``__source__``,
   ``__channels__`` and ``__watermark__``; a keyed operator's state a dict holding its files under
   ``__files__``), is still read by ``decode_task_state``. A version-1 file cannot tell a uid named
   like a reserved key from the reserved key, as the code that wrote it could not.
5. ``decode_task_state`` raises ``CorruptCheckpointError`` for anything else: another tag, a newer
   version, a body with missing or unknown fields.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowstate.storage.base import CorruptCheckpointError, StateHandle

TAG = "flowstate-task-state"
VERSION = 2
_BODY = frozenset({"operators", "source", "channels", "watermark"})
_V1_SOURCE = "__source__"
_V1_CHANNELS = "__channels__"
_V1_WATERMARK = "__watermark__"
_V1_FILES = "__files__"


@dataclass(frozen=True, slots=True)
class KeyedSnapshot:
    """Rule 2: a keyed operator's stored state."""

    data: Mapping[str, Any]
    """The backend's own description of its snapshot (format, key groups, tables)."""
    files: Mapping[str, StateHandle] = field(default_factory=dict)
    """File key → the stored file it names."""


@dataclass(frozen=True, slots=True)
class TaskStateFile:
    """Rule 1: one task's state in one checkpoint."""

    operators: Mapping[str, Any] = field(default_factory=dict)
    """Operator uid → its state (a ``KeyedSnapshot`` for keyed operators)."""
    source: Any = None
    """The source reader's position (split → next record), ``None`` for a task that heads no source."""
    channels: Mapping[int, list[bytes]] = field(default_factory=dict)
    """Input channel → the pickled batches recorded for an unaligned checkpoint."""
    watermark: float | None = None
    """The combined input watermark at the snapshot, ``None`` while it is not finite."""

    def is_empty(self) -> bool:
        """Nothing to write: no task state file at all."""
        return not self.operators and self.source is None and not self.channels and self.watermark is None


def encode_task_state(state: TaskStateFile) -> bytes:
    """Rule 3."""
    operators = {uid: _encode_operator(value) for uid, value in state.operators.items()}
    body = {"operators": operators, "source": state.source, "channels": dict(state.channels),
            "watermark": state.watermark}
    return pickle.dumps((TAG, VERSION, body), protocol=pickle.HIGHEST_PROTOCOL)


def decode_task_state(raw: bytes) -> TaskStateFile:
    """Rules 3-5: the state of either version."""
    try:
        document = pickle.loads(raw)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise CorruptCheckpointError(f"the task state does not unpickle: {type(error).__name__}: {error}") from None
    if isinstance(document, dict):
        return _decode_v1(document)
    if not (isinstance(document, tuple) and len(document) == 3 and document[0] == TAG):
        raise CorruptCheckpointError(f"the task state is a {type(document).__name__}, not a flowstate task state file")
    version, body = document[1], document[2]
    if version != VERSION:
        raise CorruptCheckpointError(
            f"the task state file has format version {version!r}; this version reads 1 and {VERSION}"
        )
    if not isinstance(body, dict) or body.keys() != _BODY:
        found = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise CorruptCheckpointError(f"the task state file's body has fields {found}, not {sorted(_BODY)}")
    return TaskStateFile(
        operators={uid: _decode_operator(uid, value) for uid, value in body["operators"].items()},
        source=body["source"],
        channels=body["channels"],
        watermark=body["watermark"],
    )


def _encode_operator(value: Any) -> tuple[Any, ...]:
    if isinstance(value, KeyedSnapshot):
        files = {key: (h.path, h.size, h.sha256, h.codec) for key, h in value.files.items()}
        return ("keyed", dict(value.data), files)
    return ("value", value)


def _decode_operator(uid: str, value: Any) -> Any:
    match value:
        case ("keyed", dict() as data, dict() as files):
            return KeyedSnapshot(data, {key: StateHandle(*handle) for key, handle in files.items()})
        case ("value", state):
            return state
    raise CorruptCheckpointError(f"the state of operator {uid!r} is neither keyed nor a value")


def _decode_v1(document: dict[str, Any]) -> TaskStateFile:
    operators = {}
    for uid, value in document.items():
        if uid in (_V1_SOURCE, _V1_CHANNELS, _V1_WATERMARK):
            continue
        if isinstance(value, dict) and _V1_FILES in value:
            files = {key: StateHandle(h["path"], h["size"], h["sha256"], h.get("codec", "none"))
                     for key, h in value[_V1_FILES].items()}
            value = KeyedSnapshot({k: v for k, v in value.items() if k != _V1_FILES}, files)
        operators[uid] = value
    return TaskStateFile(
        operators=operators,
        source=document.get(_V1_SOURCE),
        channels=document.get(_V1_CHANNELS) or {},
        watermark=document.get(_V1_WATERMARK),
    )
