"""``flowstate checkpoints verify``: check a checkpoint storage file by file, and say what is wrong.

Two steps, so that the judgement is pure and tested without a store:

1. ``gather(storage)`` (I/O) lists every stored file, decodes every checkpoint's metadata and hashes
   every referenced file whose size is right (``workers`` at a time).
2. ``assess(facts, retained=…, grace_seconds=…, now=…)`` (pure) turns those facts into a
   ``VerifyReport``: one summary per checkpoint, the orphans, the byte totals and every problem.

Problems, each listed with the file it concerns:

* ``metadata``: a checkpoint's ``_metadata`` does not decode, fails its checksum or names another
  checkpoint. (A checkpoint *without* metadata is incomplete, not a problem: it may be in progress;
  its files are orphans once they are older than the grace period.)
* ``missing``, ``size``, ``checksum``, ``unreadable``: a file that a decodable metadata references
  is absent, has another size, does not match its SHA-256, or cannot be read.
* ``orphan``: a stored file that no decodable metadata references (a shared file, a state file of
  an incomplete or corrupt checkpoint, a temporary file), older than the grace period. Younger
  orphans are listed but are no problem: they may belong to a checkpoint being written.
* ``retention`` (with ``retained=N``): the bytes stored, less the orphans and broken metadata files
  already reported, exceed the bound: what the N newest checkpoints with decodable metadata
  (savepoints aside) and every savepoint reference, their ``_metadata`` files, and the young
  orphans.

Sizes are of the stored files (``list_files``): a file's own directory, ``shared/`` and temporary
files count; files of the root that are not the storage's (a job's lock file) do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flowstate.checkpoint.ids import CheckpointId
from flowstate.storage.base import (
    CheckpointMetadata,
    CorruptCheckpointError,
    InspectableStorage,
    StateHandle,
    StoredFile,
)
from flowstate.storage.format import METADATA_FILE, checkpoint_dir_name
from flowstate.storage.listing import format_size

PROBLEM_KINDS = ("metadata", "missing", "size", "checksum", "unreadable", "orphan", "retention")


@dataclass(frozen=True, slots=True)
class CheckpointFacts:
    checkpoint_id: CheckpointId
    metadata: CheckpointMetadata | None
    metadata_problem: str | None
    """Why the metadata does not decode; ``None`` when it decodes or is absent (incomplete)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``gather`` read from a storage."""

    files: tuple[StoredFile, ...]
    checkpoints: tuple[CheckpointFacts, ...]
    content_problems: Mapping[StateHandle, str | None]
    """For each referenced handle that exists with its recorded size: ``file_problem`` of it."""


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    """One of ``PROBLEM_KINDS``."""
    path: str | None
    message: str
    checkpoint_id: CheckpointId | None = None


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    checkpoint_id: CheckpointId
    status: str
    """``completed`` (every file verifies), ``corrupt`` or ``incomplete``."""
    files: int
    """Files the metadata references (state and shared), 0 without decodable metadata."""
    referenced_bytes: int
    savepoint: bool


@dataclass(frozen=True, slots=True)
class VerifyReport:
    location: str
    checkpoints: tuple[CheckpointSummary, ...]
    problems: tuple[Problem, ...]
    orphans: tuple[StoredFile, ...]
    """Unreferenced files older than the grace period (each is also an ``orphan`` problem)."""
    young_orphans: tuple[StoredFile, ...]
    total_bytes: int
    shared_files: int
    shared_bytes: int
    grace_seconds: float
    retained: int | None = None
    retention_bound: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


# --- step 1: facts (I/O) -----------------------------------------------------------------------


def gather(storage: InspectableStorage, *, workers: int = 4) -> Facts:
    """Read everything ``assess`` needs from ``storage``. Errors of the storage itself (a store that
    cannot be reached) propagate as ``OSError``."""
    files = tuple(storage.list_files())
    sizes = {f.path: f.size for f in files}
    checkpoints = []
    for checkpoint_id in storage.checkpoint_ids():
        try:
            metadata = storage.load_metadata(checkpoint_id)
        except FileNotFoundError:
            checkpoints.append(CheckpointFacts(checkpoint_id, None, None))
        except CorruptCheckpointError as error:
            checkpoints.append(CheckpointFacts(checkpoint_id, None, str(error)))
        else:
            checkpoints.append(CheckpointFacts(checkpoint_id, metadata, None))
    to_hash = list(
        dict.fromkeys(
            handle
            for found in checkpoints
            if found.metadata is not None
            for handle in found.metadata.files()
            if sizes.get(handle.path) == handle.size
        )
    )
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="verify") as pool:
        problems = list(pool.map(storage.file_problem, to_hash))
    return Facts(files, tuple(checkpoints), dict(zip(to_hash, problems, strict=True)))


# --- step 2: judgement (pure) ------------------------------------------------------------------


def _file_problem(handle: StateHandle, sizes: Mapping[str, int], facts: Facts) -> Problem | None:
    if handle.path not in sizes:
        return Problem("missing", handle.path, f"{handle.path} is missing")
    if sizes[handle.path] != handle.size:
        return Problem(
            "size", handle.path,
            f"{handle.path} has {sizes[handle.path]} bytes, the metadata records {handle.size}",
        )
    found = facts.content_problems.get(handle)
    if found is None:
        return None
    # The file changed between the listing and the hashing, or could not be read at all.
    if found.endswith(" is missing"):
        kind = "missing"
    elif found.startswith("cannot read"):
        kind = "unreadable"
    elif " bytes, the metadata records " in found:
        kind = "size"
    else:
        kind = "checksum"
    return Problem(kind, handle.path, found)


def assess(
    facts: Facts, *, location: str, grace_seconds: float, now: float, retained: int | None = None
) -> VerifyReport:
    """The report on ``facts`` (see the module docstring). ``now`` is wall-clock seconds."""
    if retained is not None and retained < 1:
        raise ValueError(f"retained must be at least 1, not {retained}")
    sizes = {f.path: f.size for f in facts.files}
    problems: list[Problem] = []
    summaries: list[CheckpointSummary] = []
    referenced: set[str] = set()
    for found in facts.checkpoints:
        cid = found.checkpoint_id
        metadata_path = f"{checkpoint_dir_name(cid)}/{METADATA_FILE}"
        if found.metadata is None:
            if found.metadata_problem is not None:
                problems.append(Problem("metadata", metadata_path, found.metadata_problem, cid))
                summaries.append(CheckpointSummary(cid, "corrupt", 0, 0, False))
            else:
                summaries.append(CheckpointSummary(cid, "incomplete", 0, 0, False))
            continue
        files = found.metadata.files()
        referenced.update(h.path for h in files)
        own = [p for h in files if (p := _file_problem(h, sizes, facts)) is not None]
        problems.extend(Problem(p.kind, p.path, f"{p.message} (checkpoint {cid})", cid) for p in own)
        summaries.append(
            CheckpointSummary(
                cid, "corrupt" if own else "completed", len(files),
                sum(h.size for h in files), found.metadata.savepoint,
            )
        )
    metadata_files = {
        f"{checkpoint_dir_name(found.checkpoint_id)}/{METADATA_FILE}" for found in facts.checkpoints
    }
    unreferenced = [
        f for f in facts.files
        if f.path not in referenced and f.path not in metadata_files
    ]
    cutoff = now - grace_seconds
    orphans = tuple(f for f in unreferenced if f.modified < cutoff)
    young = tuple(f for f in unreferenced if f.modified >= cutoff)
    for orphan in orphans:
        problems.append(
            Problem(
                "orphan", orphan.path,
                f"{orphan.path} ({format_size(orphan.size)}) is referenced by no checkpoint and was "
                f"last modified {age(now - orphan.modified)} ago",
            )
        )
    total = sum(f.size for f in facts.files)
    bound = None
    notes: list[str] = []
    if retained is not None:
        # Each byte is blamed once: orphans and broken metadata files are problems already.
        blamed = sum(f.size for f in orphans) + sum(
            sizes.get(p.path, 0) for p in problems if p.kind == "metadata" and p.path is not None
        )
        bound, problem, notes = _retention(facts, sizes, retained, young, total - blamed)
        if problem is not None:
            problems.append(problem)
    shared = [f for f in facts.files if f.path.startswith("shared/")]
    return VerifyReport(
        location=location,
        checkpoints=tuple(summaries),
        problems=tuple(problems),
        orphans=orphans,
        young_orphans=young,
        total_bytes=total,
        shared_files=len(shared),
        shared_bytes=sum(f.size for f in shared),
        grace_seconds=grace_seconds,
        retained=retained,
        retention_bound=bound,
        notes=tuple(notes),
    )


def _retention(
    facts: Facts,
    sizes: Mapping[str, int],
    retained: int,
    young: tuple[StoredFile, ...],
    counted: int,
) -> tuple[int, Problem | None, list[str]]:
    decodable = [f for f in facts.checkpoints if f.metadata is not None]
    regular = [f for f in decodable if f.metadata is not None and not f.metadata.savepoint]
    kept = regular[-retained:] + [f for f in decodable if f.metadata is not None and f.metadata.savepoint]
    paths: set[str] = set()
    for found in kept:
        assert found.metadata is not None  # kept is decodable
        paths.update(h.path for h in found.metadata.files())
        paths.add(f"{checkpoint_dir_name(found.checkpoint_id)}/{METADATA_FILE}")
    young_bytes = sum(f.size for f in young)
    bound = sum(sizes.get(path, 0) for path in paths) + young_bytes
    beyond = [f.checkpoint_id for f in regular[:-retained]]
    notes = [
        (
            f"retention bound: {format_size(bound)} = what the {len(regular[-retained:])} newest "
            f"checkpoint(s) and {len(kept) - len(regular[-retained:])} savepoint(s) reference, "
            f"with their metadata, + {format_size(young_bytes)} of young orphans"
        )
    ]
    if counted <= bound:
        return bound, None, notes
    message = (
        f"{format_size(counted)} stored (the files above aside) exceed the bound of "
        f"{format_size(bound)} for {retained} retained checkpoint(s)"
    )
    if beyond:
        message += f"; completed checkpoints beyond retention: {', '.join(map(str, beyond))}"
    return bound, Problem("retention", None, message), notes


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def verify(
    storage: InspectableStorage,
    *,
    location: str,
    grace_seconds: float,
    now: float,
    retained: int | None = None,
    workers: int = 4,
) -> VerifyReport:
    """``gather`` then ``assess``."""
    return assess(
        gather(storage, workers=workers),
        location=location, grace_seconds=grace_seconds, now=now, retained=retained,
    )
