"""The storage format shared by every adapter: names, shared-file keys and the ``_metadata`` encoding.

Rules:

1. A checkpoint directory is ``chk-`` and the id in decimal, zero padded to six digits (larger ids
   simply have more digits). Any width is parsed back; ids start at 1.
2. A state file name is a non-empty string of at most ``MAX_NAME_BYTES`` UTF-8 bytes, without
   ``/``, ``\\`` or NUL, not starting with ``.`` (temporary files) or ``_`` (the metadata).
3. A shared-file key is one or two segments joined by ``/``, each of ``[A-Za-z0-9._-]``, at most
   ``MAX_NAME_BYTES`` bytes, not starting with ``.`` (so that it never looks like a temporary
   file) and not ``..``. Its file is ``shared/<key>``.
4. ``_metadata`` is UTF-8 JSON with sorted keys, indented by two spaces, ending with a newline. It
   holds every field of ``CheckpointMetadata``, a ``format_version`` and a ``checksum``: the SHA-256
   (hex) of the canonical JSON of every other field (sorted keys, no whitespace, UTF-8). The file
   must be byte for byte what this module writes for its content, so that *any* alteration is
   detected, including those the JSON parser would forgive (a lost final newline, ``E`` for ``e``
   in a number, ``A`` for ``a`` in the checksum).
5. Fields added after format version 1 was first written are optional, and written only when they
   differ from their default: a handle's ``codec`` (``"none"``), a task's ``shared`` (empty),
   ``bytes_written`` and ``full_size`` (0), the checkpoint's ``savepoint`` (false). Metadata written
   before they existed therefore decodes unchanged, and metadata of a job that uses none of them is
   byte for byte what older versions wrote.
6. The object ``extra`` holds the job's record (``graph``: ``operators``, uid → ``{name, kind,
   vertex}``, and ``inputs``, vertex → list of vertices), ``source_records`` and ``origin``
   (``{checkpoint_id, completion_time}``), each written only when set. Its layout is the one the
   free-form ``extra`` of earlier versions had, so checkpoints read the same in either (``origin``
   may also hold the savepoint's ``path``); a key of ``extra`` not listed here is refused.
   ``extra.savepoint`` (true), which earlier versions wrote for
   a savepoint, is read as the ``savepoint`` field; it is now written as that field.
7. What a checkpoint may reference (checked before its metadata is written, see
   ``reference_problem``): a task's ``handle`` lies in the checkpoint's own directory; each file in
   a task's ``shared`` lies in the checkpoint's own directory or is ``shared/<key>`` with a valid
   key; a savepoint references nothing under ``shared/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import TypeVar

from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.kinds import NodeKind
from flowstate.storage.base import (
    CheckpointMetadata,
    CorruptCheckpointError,
    JobRecord,
    OperatorRecord,
    SavepointOrigin,
    StateHandle,
    TaskState,
)
from flowstate.storage.compression import CODECS, check_codec, decompress

_T = TypeVar("_T")

METADATA_FILE = "_metadata"
METADATA_FORMAT_VERSION = 1
NO_METADATA = "no metadata: the checkpoint never completed"
MAX_NAME_BYTES = 200
"""Longest state file name or key segment (UTF-8 bytes); leaves room for temporary-name affixes."""
SHARED_DIR = "shared"

_DIR_NAME = re.compile(r"chk-([0-9]+)")
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
TEMPORARY_NAME = re.compile(r"\..+\.tmp-[0-9a-f]+")
"""A file being written (``.<name>.tmp-<random hex>``), or what a crash left of one."""

_BODY_FIELDS = frozenset(
    {
        "format_version",
        "checkpoint_id",
        "job",
        "mode",
        "final",
        "trigger_time",
        "completion_time",
        "max_parallelism",
        "parallelism",
        "tasks",
        "extra",
    }
)
_BODY_OPTIONAL = frozenset({"savepoint"})
_TASK_FIELDS = frozenset({
    "task", "vertex", "subtask", "handle", "sync_seconds", "async_seconds", "alignment_seconds", "channel_state_bytes",
})
_TASK_OPTIONAL = frozenset({"shared", "bytes_written", "full_size"})
_HANDLE_FIELDS = frozenset({"path", "size", "sha256"})
_HANDLE_OPTIONAL = frozenset({"codec"})
_EXTRA_OPTIONAL = frozenset({"operators", "inputs", "savepoint", "source_records", "origin"})
_OPERATOR_FIELDS = frozenset({"name", "kind", "vertex"})
_ORIGIN_FIELDS = frozenset({"checkpoint_id", "completion_time"})


# --- names -------------------------------------------------------------------------------------


def checkpoint_dir_name(checkpoint_id: CheckpointId) -> str:
    """``chk-000042`` for checkpoint 42 (rule 1)."""
    return f"chk-{checkpoint_id:06d}"


def parse_checkpoint_dir_name(name: str) -> CheckpointId | None:
    """The id of a checkpoint directory name of any width, or ``None`` if ``name`` is not one."""
    match = _DIR_NAME.fullmatch(name)
    if match is None:
        return None
    checkpoint_id = int(match.group(1))
    return CheckpointId(checkpoint_id) if checkpoint_id >= 1 else None


def check_checkpoint_id(checkpoint_id: int) -> None:
    if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int) or checkpoint_id < 1:
        raise ValueError(f"checkpoint ids are integers from 1, not {checkpoint_id!r}")


def check_state_name(name: str) -> None:
    """Rule 2; ``ValueError`` naming the rule broken."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a state file name must be a non-empty string, not {name!r}")
    if "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"state file name {name!r} must not contain '/', '\\' or NUL")
    if name[0] in "._":
        raise ValueError(
            f"state file name {name!r} must not start with '.' or '_' "
            "(reserved for temporary files and the metadata)"
        )
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"state file name {name[:40]!r}… is longer than {MAX_NAME_BYTES} bytes")


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a shared-file key (rule 3), or ``None`` if it is one."""
    if not isinstance(key, str) or not key:
        return f"a shared file key must be a non-empty string, not {key!r}"
    segments = key.split("/")
    if len(segments) > 2:
        return f"shared file key {key!r} has more than one '/'"
    for segment in segments:
        if not _KEY_SEGMENT.fullmatch(segment):
            return f"shared file key {key!r}: each segment must be non-empty and of A-Z a-z 0-9 . _ -"
        if segment.startswith("."):
            return f"shared file key {key!r}: a segment must not start with '.'"
        if len(segment) > MAX_NAME_BYTES:
            return f"shared file key {key[:40]!r}…: a segment is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_key(key: str) -> None:
    """Rule 3; ``ValueError`` naming the rule broken."""
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(problem)


def check_keys(keys: list[str]) -> None:
    """Every key valid (rule 3) and no key twice; ``ValueError`` otherwise."""
    for key in keys:
        check_key(key)
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"shared file key {key!r} is given twice")
        seen.add(key)


def shared_path(key: str) -> str:
    """``shared/<key>``: the path of a shared file relative to the storage root."""
    return f"{SHARED_DIR}/{key}"


def relative_path_problem(path: object) -> str | None:
    """Why ``path`` is not a normalised POSIX path inside the root, or ``None`` if it is one."""
    if not isinstance(path, str) or not path:
        return f"file path {path!r} is not a non-empty string"
    posix = PurePosixPath(path)
    if (
        posix.is_absolute()
        or str(posix) != path
        or any(part in ("", ".", "..") for part in posix.parts)
        or "\0" in path
    ):
        return f"file path {path!r} is not a normalised relative path inside the storage root"
    return None


def reference_problem(metadata: CheckpointMetadata) -> str | None:
    """Why ``metadata`` references a file it may not (rule 6), or ``None``."""
    own = checkpoint_dir_name(metadata.checkpoint_id) + "/"

    def in_own_directory(path: str) -> bool:
        return path.startswith(own) and "/" not in path[len(own):]

    for task in metadata.tasks:
        if task.handle is not None and not in_own_directory(task.handle.path):
            return (
                f"task {task.task} state file {task.handle.path} is not in the checkpoint's own "
                f"directory {own}"
            )
        for handle in task.shared:
            if handle.path.startswith(SHARED_DIR + "/"):
                if metadata.savepoint:
                    return (
                        f"savepoint {metadata.checkpoint_id} references the shared file "
                        f"{handle.path}: a savepoint must be self-contained"
                    )
                problem = key_problem(handle.path[len(SHARED_DIR) + 1:])
                if problem is not None:
                    return f"task {task.task}: {problem}"
            elif not in_own_directory(handle.path):
                return (
                    f"task {task.task} references {handle.path}, neither a shared file nor a file "
                    f"in the checkpoint's own directory {own}"
                )
    return None


def check_handle(handle: StateHandle) -> None:
    """``ValueError`` when ``handle``'s path leaves the storage root or its codec is unknown."""
    problem = relative_path_problem(handle.path)
    if problem is not None:
        raise ValueError(problem)
    check_codec(handle.codec)


def verified_state(handle: StateHandle, read: Callable[[str], bytes]) -> bytes:
    """The bytes of ``handle`` as given to ``write_state``: ``read(path)`` fetches them as stored
    (``FileNotFoundError`` when missing), then their size and SHA-256 are checked against the
    handle before they are decompressed. ``CorruptCheckpointError`` names the file otherwise."""
    check_handle(handle)
    try:
        data = read(handle.path)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{handle.path} is missing") from None
    sha256 = hashlib.sha256(data).hexdigest() if len(data) == handle.size else None
    problem = hash_problem(handle, len(data), sha256)
    if problem is not None:
        raise CorruptCheckpointError(problem)
    try:
        return decompress(handle.codec, data)
    except CorruptCheckpointError as error:
        raise CorruptCheckpointError(f"{handle.path}: {error}") from None


def hash_problem(handle: StateHandle, size: int, sha256: str | None) -> str | None:
    """Why a file of ``size`` bytes and digest ``sha256`` is not ``handle``; ``None`` if it is.

    ``sha256`` may be ``None`` when the size already differs (the digest was not computed)."""
    if size != handle.size:
        return (
            f"{handle.path} has {size} bytes, the metadata records {handle.size}: "
            "truncated or altered"
        )
    if sha256 != handle.sha256:
        return (
            f"{handle.path} does not match its SHA-256 "
            f"(recorded {handle.sha256[:16]}…, found {(sha256 or '')[:16]}…): corrupt"
        )
    return None


# --- metadata encoding (pure) ------------------------------------------------------------------


def _canonical_json(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _file_layout(document: Mapping[str, object]) -> bytes:
    return (
        json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode("utf-8")


def _handle_document(handle: StateHandle | None) -> dict[str, object] | None:
    if handle is None:
        return None
    document: dict[str, object] = {"path": handle.path, "size": handle.size, "sha256": handle.sha256}
    if handle.codec != "none":
        document["codec"] = handle.codec
    return document


def _task_document(task: TaskState) -> dict[str, object]:
    document: dict[str, object] = {
        "task": task.task,
        "vertex": task.vertex,
        "subtask": task.subtask,
        "handle": _handle_document(task.handle),
        "sync_seconds": task.sync_seconds,
        "async_seconds": task.async_seconds,
        "alignment_seconds": task.alignment_seconds,
        "channel_state_bytes": task.channel_state_bytes,
    }
    if task.shared:
        document["shared"] = [_handle_document(handle) for handle in task.shared]
    if task.bytes_written:
        document["bytes_written"] = task.bytes_written
    if task.full_size:
        document["full_size"] = task.full_size
    return document


def _extra_document(metadata: CheckpointMetadata) -> dict[str, object]:
    """Rule 6."""
    extra: dict[str, object] = {}
    if metadata.graph is not None:
        extra["operators"] = {
            uid: {"name": op.name, "kind": str(op.kind), "vertex": op.vertex}
            for uid, op in metadata.graph.operators.items()
        }
        extra["inputs"] = {vertex: list(sources) for vertex, sources in metadata.graph.inputs.items()}
    if metadata.source_records is not None:
        extra["source_records"] = metadata.source_records
    if metadata.origin is not None:
        origin: dict[str, object] = {"checkpoint_id": metadata.origin.checkpoint_id,
                                     "completion_time": metadata.origin.completion_time}
        if metadata.origin.path is not None:
            origin["path"] = metadata.origin.path
        extra["origin"] = origin
    return extra


def _decode_extra(value: object) -> tuple[JobRecord | None, bool, int | None, SavepointOrigin | None]:
    """Rule 6: ``(graph, savepoint, source_records, origin)``."""
    extra = _fields(value, frozenset(), "extra", _EXTRA_OPTIONAL)
    graph = None
    if "operators" in extra or "inputs" in extra:
        operators = {}
        for uid, found in _typed(extra.get("operators", {}), dict, "extra.operators").items():
            what = f"extra.operators[{uid!r}]"
            fields = _fields(found, _OPERATOR_FIELDS, what)
            kind = _typed(fields["kind"], str, f"{what} kind")
            if kind not in NodeKind.__members__.values():
                raise CorruptCheckpointError(f"{what} has the unknown kind {kind!r}")
            operators[uid] = OperatorRecord(
                _typed(fields["name"], str, f"{what} name"), NodeKind(kind), _typed(fields["vertex"], str, f"{what} vertex")
            )
        inputs = {}
        for vertex, sources in _typed(extra.get("inputs", {}), dict, "extra.inputs").items():
            sources = _typed(sources, list, f"extra.inputs[{vertex!r}]")
            inputs[vertex] = tuple(_typed(source, str, f"extra.inputs[{vertex!r}] item") for source in sources)
        graph = JobRecord(operators, inputs)
    savepoint = _typed(extra.get("savepoint", False), bool, "extra.savepoint")
    source_records = None
    if "source_records" in extra:
        source_records = _count(extra["source_records"], "extra.source_records")
    origin = None
    if "origin" in extra:
        fields = _fields(extra["origin"], _ORIGIN_FIELDS, "extra.origin", frozenset({"path"}))
        path = fields.get("path")
        origin = SavepointOrigin(
            CheckpointId(_count(fields["checkpoint_id"], "extra.origin checkpoint_id")),
            _number(fields["completion_time"], "extra.origin completion_time"),
            None if path is None else _typed(path, str, "extra.origin path"),
        )
    return graph, savepoint, source_records, origin


def encode_metadata(metadata: CheckpointMetadata) -> bytes:
    """The bytes of the ``_metadata`` file for ``metadata`` (rules 4 and 5).

    Raises ``ValueError`` when ``metadata`` would not be read back equal: names must be strings,
    times must be finite, every handle must have a relative path, a SHA-256 in lowercase hex and a
    known codec, and ``shared`` must be a tuple.
    """
    body: dict[str, object] = {
        "format_version": METADATA_FORMAT_VERSION,
        "checkpoint_id": metadata.checkpoint_id,
        "job": metadata.job,
        "mode": metadata.mode,
        "final": metadata.final,
        "trigger_time": metadata.trigger_time,
        "completion_time": metadata.completion_time,
        "max_parallelism": metadata.max_parallelism,
        "parallelism": dict(metadata.parallelism),
        "tasks": [_task_document(task) for task in metadata.tasks],
        "extra": _extra_document(metadata),
    }
    if metadata.savepoint:
        body["savepoint"] = metadata.savepoint
    where = f"metadata of checkpoint {metadata.checkpoint_id}"
    try:
        checksum = hashlib.sha256(_canonical_json(body)).hexdigest()
        raw = _file_layout({**body, "checksum": checksum})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} cannot be written as JSON: {error}") from error
    try:
        read_back = decode_metadata(raw)
    except CorruptCheckpointError as error:
        raise ValueError(f"{where} is not valid: {error}") from error
    if read_back != metadata:
        raise ValueError(
            f"{where} would not read back equal (a tuple, a non-str key or a non-JSON value?)"
        )
    return raw


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _typed(value: object, kind: type[_T], what: str) -> _T:
    # bool is an int to Python, but never a valid count, id or time here (nor an int a valid bool).
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CorruptCheckpointError(f"{what} is {type(value).__name__}, not {kind.__name__}")
    return value


def _count(value: object, what: str) -> int:
    count = _typed(value, int, what)
    if count < 0:
        raise CorruptCheckpointError(f"{what} is negative")
    return count


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CorruptCheckpointError(f"{what} is {type(value).__name__}, not a number")
    return value


def _fields(
    value: object, expected: frozenset[str], what: str, optional: frozenset[str] = frozenset()
) -> dict[str, object]:
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{what} is {type(value).__name__}, not a JSON object")
    missing = sorted(expected - value.keys())
    if missing:
        raise CorruptCheckpointError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(value.keys() - expected - optional)
    if unknown:
        raise CorruptCheckpointError(f"{what} has unknown fields {', '.join(unknown)}")
    return value


def _decode_handle(value: object, what: str) -> StateHandle | None:
    if value is None:
        return None
    fields = _fields(value, _HANDLE_FIELDS, what, _HANDLE_OPTIONAL)
    path = fields["path"]
    problem = relative_path_problem(path)
    if problem is not None or not isinstance(path, str):
        raise CorruptCheckpointError(f"{what}: {problem}")
    size = _count(fields["size"], f"{what} size")
    sha256 = _typed(fields["sha256"], str, f"{what} sha256")
    if not _SHA256_HEX.fullmatch(sha256):
        raise CorruptCheckpointError(f"{what} sha256 is not 64 lowercase hex digits")
    codec = _typed(fields.get("codec", "none"), str, f"{what} codec")
    if codec not in CODECS:
        raise CorruptCheckpointError(f"{what} codec {codec!r} is unknown (known: {', '.join(CODECS)})")
    return StateHandle(path=path, size=size, sha256=sha256, codec=codec)


def _decode_task(value: object, index: int) -> TaskState:
    what = f"task {index}"
    fields = _fields(value, _TASK_FIELDS, what, _TASK_OPTIONAL)
    shared = []
    for position, handle in enumerate(_typed(fields.get("shared", []), list, f"{what} shared")):
        decoded = _decode_handle(handle, f"{what} shared file {position}")
        if decoded is None:
            raise CorruptCheckpointError(f"{what} shared file {position} is null")
        shared.append(decoded)
    return TaskState(
        task=TaskId(_typed(fields["task"], str, f"{what} task")),
        vertex=_typed(fields["vertex"], str, f"{what} vertex"),
        subtask=_typed(fields["subtask"], int, f"{what} subtask"),
        handle=_decode_handle(fields["handle"], f"{what} handle"),
        sync_seconds=_number(fields["sync_seconds"], f"{what} sync_seconds"),
        async_seconds=_number(fields["async_seconds"], f"{what} async_seconds"),
        alignment_seconds=_number(fields["alignment_seconds"], f"{what} alignment_seconds"),
        channel_state_bytes=_typed(fields["channel_state_bytes"], int, f"{what} channel_state_bytes"),
        shared=tuple(shared),
        bytes_written=_count(fields.get("bytes_written", 0), f"{what} bytes_written"),
        full_size=_count(fields.get("full_size", 0), f"{what} full_size"),
    )


def decode_metadata(raw: bytes) -> CheckpointMetadata:
    """The metadata encoded in ``raw`` (the bytes of a ``_metadata`` file), verified.

    Checks, in this order: UTF-8, JSON, checksum, exact encoding (rule 4), format version, fields
    and their types. Raises ``CorruptCheckpointError`` with a short reason on the first failure.
    The order matters for the reason given: a flipped bit is reported as a checksum mismatch, not
    as whatever nonsense the flipped field now says.
    """
    if not raw:
        raise CorruptCheckpointError("the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorruptCheckpointError(f"not UTF-8 at byte {error.start}: torn or corrupt") from None
    try:
        document = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:
        raise CorruptCheckpointError(f"not valid JSON ({error}): torn or corrupt") from None
    if not isinstance(document, dict):
        raise CorruptCheckpointError(f"not a JSON object but {type(document).__name__}: corrupt")
    recorded = document.pop("checksum", None)
    if not isinstance(recorded, str):
        raise CorruptCheckpointError("no checksum field: corrupt")
    try:
        computed = hashlib.sha256(_canonical_json(document)).hexdigest()
        reencoded = _file_layout({**document, "checksum": recorded})
    except ValueError as error:  # a lone surrogate (from a \ud800 escape) has no UTF-8
        raise CorruptCheckpointError(f"content cannot be re-encoded ({error}): corrupt") from None
    if recorded != computed:
        raise CorruptCheckpointError(
            f"checksum mismatch (recorded {recorded[:16]}…, computed {computed[:16]}…)"
        )
    if reencoded != raw:
        raise CorruptCheckpointError(
            "not in the exact encoding it was written in: altered after it was written"
        )
    version = document.get("format_version")
    if isinstance(version, bool) or version != METADATA_FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"unsupported format version {version!r} (this version reads {METADATA_FORMAT_VERSION})"
        )
    body = _fields(document, _BODY_FIELDS, "the metadata", _BODY_OPTIONAL)
    checkpoint_id = _typed(body["checkpoint_id"], int, "checkpoint_id")
    if checkpoint_id < 1:
        raise CorruptCheckpointError(f"checkpoint_id {checkpoint_id} is below 1")
    parallelism = _typed(body["parallelism"], dict, "parallelism")
    for vertex, count in parallelism.items():
        _typed(count, int, f"parallelism of {vertex!r}")
    tasks = _typed(body["tasks"], list, "tasks")
    graph, old_savepoint, source_records, origin = _decode_extra(body["extra"])
    return CheckpointMetadata(
        checkpoint_id=CheckpointId(checkpoint_id),
        job=_typed(body["job"], str, "job"),
        mode=_typed(body["mode"], str, "mode"),
        final=_typed(body["final"], bool, "final"),
        trigger_time=_number(body["trigger_time"], "trigger_time"),
        completion_time=_number(body["completion_time"], "completion_time"),
        max_parallelism=_typed(body["max_parallelism"], int, "max_parallelism"),
        parallelism=parallelism,
        tasks=tuple(_decode_task(task, index) for index, task in enumerate(tasks)),
        graph=graph,
        savepoint=_typed(body.get("savepoint", False), bool, "savepoint") or old_savepoint,
        source_records=source_records,
        origin=origin,
    )
