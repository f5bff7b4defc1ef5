"""Checkpoint storage in a directory of the local file system.

Layout under the root directory::

    root/
      chk-000001/
        map#0.state             state files, named by the caller
        _metadata               written last; its presence completes the checkpoint
      chk-000002/
        .map#0.state.tmp-9f3a…  a write in progress, or what a crash left of one

Rules:

1. A checkpoint directory is ``chk-`` and the id in decimal, zero padded to six digits (larger ids
   simply have more digits). Any width is parsed back; ids start at 1.
2. A file is written in three steps, in this order: (1) write and ``fsync`` it under a temporary
   name ``.<name>.tmp-<random>`` in its final directory; (2) ``os.replace`` it onto its final name;
   (3) ``fsync`` the directory. After a crash a file is absent or complete under its final name,
   never partial. A checkpoint directory is made durable in the root (root fsynced) by the write
   that creates it, before that write returns.
3. ``_metadata`` is the commit point. The caller writes it after every state file it references is
   durable; a directory without it is *incomplete* and is never restored from.
4. ``_metadata`` is UTF-8 JSON with sorted keys, indented by two spaces, ending with a newline. It
   holds every field of ``CheckpointMetadata``, a ``format_version`` and a ``checksum``: the SHA-256
   (hex) of the canonical JSON of every other field (sorted keys, no whitespace, UTF-8). The file
   must be byte for byte what this module writes for its content, so that *any* alteration is
   detected, including those the JSON parser would forgive (a lost final newline, ``E`` for ``e``
   in a number, ``A`` for ``a`` in the checksum).
5. Validation trusts nothing on disk: the metadata parses, matches its checksum, has a known format
   version and names the checkpoint of its own directory, and every file it references exists with
   the recorded size and SHA-256. Each refusal is a sentence that names the file.
6. Removal (``discard``, ``sweep``) deletes ``_metadata`` first and fsyncs the directory, so that a
   crash half way through leaves an incomplete checkpoint, never one that looks complete but is not.

Not guaranteed: two writers of the same file name in one checkpoint (names are unique per checkpoint
by contract); ``sweep`` running while a checkpoint that is not in ``keep`` is being written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.checkpoint.restore import Invalid, Valid
from flowstate.storage.base import (
    CheckpointInfo,
    CheckpointMetadata,
    CorruptCheckpointError,
    StateHandle,
    TaskState,
)

METADATA_FILE = "_metadata"
METADATA_FORMAT_VERSION = 1
NO_METADATA = "no metadata: the checkpoint never completed"
MAX_NAME_BYTES = 200
"""Longest state file name (UTF-8 bytes); leaves room for the temporary-name affixes in 255."""

_DIR_NAME = re.compile(r"chk-([0-9]+)")
_TEMPORARY_NAME = re.compile(r"\..+\.tmp-[0-9a-f]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

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
_TASK_FIELDS = frozenset({
    "task", "vertex", "subtask", "handle", "sync_seconds", "async_seconds", "alignment_seconds", "channel_state_bytes",
})
_HANDLE_FIELDS = frozenset({"path", "size", "sha256"})


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


def _check_checkpoint_id(checkpoint_id: int) -> None:
    if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int) or checkpoint_id < 1:
        raise ValueError(f"checkpoint ids are integers from 1, not {checkpoint_id!r}")


def _check_state_name(name: str) -> None:
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


def _relative_path_problem(path: object) -> str | None:
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
    return {"path": handle.path, "size": handle.size, "sha256": handle.sha256}


def encode_metadata(metadata: CheckpointMetadata) -> bytes:
    """The bytes of the ``_metadata`` file for ``metadata`` (rule 4).

    Raises ``ValueError`` when ``metadata`` would not be read back equal: ``extra`` must hold only
    JSON values (dicts with ``str`` keys, lists, strings, numbers, booleans, ``None``; no tuples),
    times must be finite, and every handle must have a relative path and a SHA-256 in lowercase hex.
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
        "tasks": [
            {
                "task": task.task,
                "vertex": task.vertex,
                "subtask": task.subtask,
                "handle": _handle_document(task.handle),
                "sync_seconds": task.sync_seconds,
                "async_seconds": task.async_seconds,
                "alignment_seconds": task.alignment_seconds,
                "channel_state_bytes": task.channel_state_bytes,
            }
            for task in metadata.tasks
        ],
        "extra": dict(metadata.extra),
    }
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


def _typed(value: object, kind: type, what: str) -> object:
    # bool is an int to Python, but never a valid count, id or time here (nor an int a valid bool).
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CorruptCheckpointError(f"{what} is {type(value).__name__}, not {kind.__name__}")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CorruptCheckpointError(f"{what} is {type(value).__name__}, not a number")
    return value


def _fields(value: object, expected: frozenset[str], what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{what} is {type(value).__name__}, not a JSON object")
    missing = sorted(expected - value.keys())
    if missing:
        raise CorruptCheckpointError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(value.keys() - expected)
    if unknown:
        raise CorruptCheckpointError(f"{what} has unknown fields {', '.join(unknown)}")
    return value


def _decode_handle(value: object, what: str) -> StateHandle | None:
    if value is None:
        return None
    fields = _fields(value, _HANDLE_FIELDS, what)
    path = fields["path"]
    problem = _relative_path_problem(path)
    if problem is not None:
        raise CorruptCheckpointError(f"{what}: {problem}")
    size = _typed(fields["size"], int, f"{what} size")
    if size < 0:
        raise CorruptCheckpointError(f"{what} size is negative")
    sha256 = _typed(fields["sha256"], str, f"{what} sha256")
    if not _SHA256_HEX.fullmatch(sha256):
        raise CorruptCheckpointError(f"{what} sha256 is not 64 lowercase hex digits")
    return StateHandle(path=path, size=size, sha256=sha256)


def _decode_task(value: object, index: int) -> TaskState:
    what = f"task {index}"
    fields = _fields(value, _TASK_FIELDS, what)
    return TaskState(
        task=TaskId(_typed(fields["task"], str, f"{what} task")),
        vertex=_typed(fields["vertex"], str, f"{what} vertex"),
        subtask=_typed(fields["subtask"], int, f"{what} subtask"),
        handle=_decode_handle(fields["handle"], f"{what} handle"),
        sync_seconds=_number(fields["sync_seconds"], f"{what} sync_seconds"),
        async_seconds=_number(fields["async_seconds"], f"{what} async_seconds"),
        alignment_seconds=_number(fields["alignment_seconds"], f"{what} alignment_seconds"),
        channel_state_bytes=_typed(fields["channel_state_bytes"], int, f"{what} channel_state_bytes"),
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
    body = _fields(document, _BODY_FIELDS, "the metadata")
    checkpoint_id = _typed(body["checkpoint_id"], int, "checkpoint_id")
    if checkpoint_id < 1:
        raise CorruptCheckpointError(f"checkpoint_id {checkpoint_id} is below 1")
    parallelism = _typed(body["parallelism"], dict, "parallelism")
    for vertex, count in parallelism.items():
        _typed(count, int, f"parallelism of {vertex!r}")
    tasks = _typed(body["tasks"], list, "tasks")
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
        extra=_typed(body["extra"], dict, "extra"),
    )


# --- file-system steps -------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory; NTFS journals the rename itself.
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_if_present(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_durably(directory: Path, name: str, data: bytes) -> None:
    """Rule 2: temporary file, fsync, rename, directory fsync."""
    temporary = directory / f".{name}.tmp-{secrets.token_hex(8)}"
    try:
        with open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, directory / name)
    except BaseException:
        _unlink_if_present(temporary)
        raise
    _fsync_directory(directory)


def _make_directories_durably(path: Path) -> None:
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        _fsync_directory(directory.parent)


def _remove_checkpoint_directory(directory: Path, *, attempts: int = 3) -> None:
    """Rule 6. Anything already gone is fine: a concurrent removal got there first.

    A task still writing its snapshot of an aborted checkpoint can drop a file into the directory
    after the walk and before the final ``rmdir`` (which then fails with ``ENOTEMPTY``): the walk
    is repeated, up to ``attempts`` times in all.
    """
    try:
        os.unlink(directory / METADATA_FILE)
    except FileNotFoundError:
        pass
    else:
        _fsync_directory(directory)
    for attempt in range(1, attempts + 1):
        for parent, subdirectories, files in os.walk(directory, topdown=False):
            for name in files:
                _unlink_if_present(os.path.join(parent, name))
            for name in subdirectories:
                path = os.path.join(parent, name)
                if os.path.islink(path):
                    _unlink_if_present(path)
                else:
                    _rmdir_if_present(path)
        try:
            _rmdir_if_present(directory)
            return
        except OSError as error:
            if error.errno != errno.ENOTEMPTY or attempt == attempts:
                raise


def _rmdir_if_present(path: Path | str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _bytes_on_disk(directory: Path) -> int:
    total = 0
    for parent, _subdirectories, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _hash_problem(handle: StateHandle, size: int, sha256: str | None) -> str | None:
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


# --- the adapter -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inspection:
    verdict: Valid[CheckpointMetadata] | Invalid
    status: Literal["completed", "incomplete", "corrupt"]
    metadata: CheckpointMetadata | None
    """The parsed metadata when it is the checkpoint's own, even if a state file is bad."""


class LocalCheckpointStorage:
    """``CheckpointStorage`` in a directory of the local file system (see the module rules).

    Holds nothing but the root path, so one instance may be shared by threads: tasks writing state
    files of the same checkpoint concurrently, the coordinator writing metadata.
    """

    __slots__ = ("_root",)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Use ``root``, creating it (and its missing parents) durably if it does not exist."""
        self._root = Path(root)
        _make_directories_durably(self._root)
        if not self._root.is_dir():
            raise NotADirectoryError(f"checkpoint storage root {str(self._root)!r} is no directory")

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"LocalCheckpointStorage({str(self._root)!r})"

    # --- writing -------------------------------------------------------------------------------

    def write_state(self, checkpoint_id: CheckpointId, name: str, data: bytes) -> StateHandle:
        """Make ``data`` durable as ``chk-<id>/<name>`` and return its handle (contract rule 1).

        ``name`` must not contain ``/`` nor start with ``.`` or ``_`` (``ValueError``); nothing is
        written then.
        """
        _check_state_name(name)
        directory = self._checkpoint_directory(checkpoint_id)
        _write_durably(directory, name, data)
        return StateHandle(
            path=f"{directory.name}/{name}",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        """Complete the checkpoint by writing its ``_metadata`` durably (contract rule 2).

        Before anything is written: ``ValueError`` if the metadata would not read back equal (see
        ``encode_metadata``), ``CorruptCheckpointError`` if a file it references is missing or has
        another size. The second check is cheap (no hashing) and keeps a caller's mistake from
        publishing a checkpoint that cannot be restored, which the coordinator would then let
        subsume the older, valid ones.
        """
        raw = encode_metadata(metadata)
        for handle in dict.fromkeys(t.handle for t in metadata.tasks if t.handle is not None):
            try:
                size = (self._root / handle.path).stat().st_size
            except FileNotFoundError:
                raise CorruptCheckpointError(
                    f"cannot complete checkpoint {metadata.checkpoint_id}: {handle.path} is missing"
                ) from None
            if size != handle.size:
                raise CorruptCheckpointError(
                    f"cannot complete checkpoint {metadata.checkpoint_id}: {handle.path} has "
                    f"{size} bytes, its handle says {handle.size}"
                )
        # When tasks write concurrently, a write_state may find the directory made by another one
        # that has not yet fsynced the root. That is fine: the metadata is written only after every
        # write_state has returned, the creating one included, so the directory is durable by now.
        directory = self._checkpoint_directory(metadata.checkpoint_id)
        _write_durably(directory, METADATA_FILE, raw)

    # --- reading -------------------------------------------------------------------------------

    def read_state(self, handle: StateHandle) -> bytes:
        """The bytes of ``handle``, verified again (contract rule 4).

        Raises ``CorruptCheckpointError`` naming the file when it is missing or its size or SHA-256
        differs from the handle; ``ValueError`` when the handle's path leaves the storage root.
        """
        problem = _relative_path_problem(handle.path)
        if problem is not None:
            raise ValueError(problem)
        try:
            data = (self._root / handle.path).read_bytes()
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{handle.path} is missing") from None
        sha256 = hashlib.sha256(data).hexdigest() if len(data) == handle.size else None
        problem = _hash_problem(handle, len(data), sha256)
        if problem is not None:
            raise CorruptCheckpointError(problem)
        return data

    def restore_candidates(self) -> Iterator[Valid[CheckpointMetadata] | Invalid]:
        """Every checkpoint directory, newest first, each validated only when it is reached
        (contract rule 3). The directory is listed when iteration starts."""
        for checkpoint_id, directory in reversed(self._checkpoint_directories()):
            yield self._inspect(checkpoint_id, directory).verdict

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint directory, oldest first, each fully validated.

        ``metadata`` is set for a completed checkpoint and for a corrupt one whose metadata is
        intact but one of whose files is not; ``bytes_on_disk`` counts every file in the directory.
        """
        infos: list[CheckpointInfo] = []
        for checkpoint_id, directory in self._checkpoint_directories():
            inspection = self._inspect(checkpoint_id, directory)
            reason = inspection.verdict.reason if isinstance(inspection.verdict, Invalid) else None
            infos.append(
                CheckpointInfo(
                    checkpoint_id=checkpoint_id,
                    status=inspection.status,
                    reason=reason,
                    metadata=inspection.metadata,
                    bytes_on_disk=_bytes_on_disk(directory),
                )
            )
        return infos

    def highest_id(self) -> int:
        """The highest id of any ``chk-N`` directory, complete or not; 0 when there is none."""
        return max((found_id for found_id, _ in self._checkpoint_directories()), default=0)

    # --- removing ------------------------------------------------------------------------------

    def discard(self, checkpoint_id: CheckpointId) -> None:
        """Delete the checkpoint's directory, metadata first (rule 6). Missing is fine."""
        removed = False
        for found_id, directory in self._all_checkpoint_directories():
            if found_id == checkpoint_id:
                _remove_checkpoint_directory(directory)
                removed = True
        if removed:
            _fsync_directory(self._root)

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        """Delete every checkpoint directory not in ``keep`` whose metadata is missing or invalid,
        and stray temporary files in the valid ones not in ``keep``; return the deleted ids, oldest
        first.

        ``keep`` must hold every checkpoint still being written. Only the metadata is checked (no
        hashing of state files): a checkpoint with intact metadata but a damaged state file is left
        for ``discard``, as evidence of the damage.
        """
        removed: list[CheckpointId] = []
        for checkpoint_id, directory in self._checkpoint_directories():
            if checkpoint_id in keep:
                continue
            inspection = self._inspect(checkpoint_id, directory, verify_files=False)
            if isinstance(inspection.verdict, Valid):
                self._remove_temporary_files(directory)
            else:
                _remove_checkpoint_directory(directory)
                removed.append(checkpoint_id)
        if removed:
            _fsync_directory(self._root)
        return removed

    # --- internals -----------------------------------------------------------------------------

    def _checkpoint_directory(self, checkpoint_id: CheckpointId) -> Path:
        """The directory of ``checkpoint_id``, created durably (root fsynced) if it is new."""
        _check_checkpoint_id(checkpoint_id)
        directory = self._root / checkpoint_dir_name(checkpoint_id)
        try:
            directory.mkdir()
        except FileExistsError:
            return directory
        _fsync_directory(self._root)
        return directory

    def _all_checkpoint_directories(self) -> list[tuple[CheckpointId, Path]]:
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return []
        found: list[tuple[CheckpointId, Path]] = []
        for entry in entries:
            checkpoint_id = parse_checkpoint_dir_name(entry.name)
            if checkpoint_id is not None and entry.is_dir(follow_symlinks=False):
                found.append((checkpoint_id, Path(entry.path)))
        return found

    def _checkpoint_directories(self) -> list[tuple[CheckpointId, Path]]:
        """One directory per id, oldest first. Should two names give the same id (``chk-7`` and
        ``chk-000007``), the one this module writes wins, then the first by name."""
        chosen: dict[CheckpointId, Path] = {}
        for checkpoint_id, directory in sorted(
            self._all_checkpoint_directories(),
            key=lambda item: (item[1].name != checkpoint_dir_name(item[0]), item[1].name),
        ):
            chosen.setdefault(checkpoint_id, directory)
        return sorted(chosen.items())

    def _inspect(
        self, checkpoint_id: CheckpointId, directory: Path, *, verify_files: bool = True
    ) -> _Inspection:
        where = f"{directory.name}/{METADATA_FILE}"

        def corrupt(reason: str, metadata: CheckpointMetadata | None = None) -> _Inspection:
            return _Inspection(Invalid(checkpoint_id, reason), "corrupt", metadata)

        try:
            raw = (directory / METADATA_FILE).read_bytes()
        except FileNotFoundError:
            return _Inspection(Invalid(checkpoint_id, NO_METADATA), "incomplete", None)
        except OSError as error:
            return corrupt(f"cannot read {where}: {error.strerror}")
        try:
            metadata = decode_metadata(raw)
        except CorruptCheckpointError as error:
            return corrupt(f"{where}: {error}")
        if metadata.checkpoint_id != checkpoint_id:
            return corrupt(
                f"{where} names checkpoint {metadata.checkpoint_id}, "
                f"not {checkpoint_id} of its directory"
            )
        if verify_files:
            for handle in dict.fromkeys(t.handle for t in metadata.tasks if t.handle is not None):
                problem = self._file_problem(handle)
                if problem is not None:
                    return corrupt(problem, metadata)
        return _Inspection(Valid(checkpoint_id, metadata), "completed", metadata)

    def _file_problem(self, handle: StateHandle) -> str | None:
        try:
            with open(self._root / handle.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                sha256 = (
                    hashlib.file_digest(file, "sha256").hexdigest() if size == handle.size else None
                )
        except FileNotFoundError:
            return f"{handle.path} is missing"
        except OSError as error:
            return f"cannot read {handle.path}: {error.strerror}"
        return _hash_problem(handle, size, sha256)

    def _remove_temporary_files(self, directory: Path) -> None:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if _TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                _unlink_if_present(entry.path)
