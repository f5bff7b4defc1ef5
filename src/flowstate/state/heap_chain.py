"""Incremental snapshots of the heap backend: a chain of one base and deltas, in shared files.

Rules:

1. A **chain file** holds, per state, the entries written (*puts*) and the keys deleted in one
   step. A **base** holds the whole state at a barrier (no deletes); a **delta** holds what changed
   between the barrier of the snapshot before it and its own: the entry at its barrier of every key
   changed in between (rule 4 of ``flowstate.state.heap_tables``), a key without one as a delete.
2. A checkpoint's keyed state is a **chain**: a base, then zero or more deltas, oldest first.
   ``SnapshotParts.files`` lists every file of the chain under a key that names its bytes forever
   (``heap-<instance>-<snapshot number>-<base|delta>``), and ``data`` names the chain (format
   ``heap-chain-v1``). So the task uploads each file once as a shared file and later checkpoints
   only reference it; storage counts the references (``flowstate.storage.registry``) and deletes a
   file once no retained checkpoint references it, exactly as for RocksDB's SST files.
3. **Base or delta** (``next_role``, pure): a snapshot writes a base when there is no chain to
   extend (the backend's first snapshot, the first after a restore, or the snapshot before it was
   not written, or not yet: its delta may never exist), when the chain already has ``max_deltas``
   deltas, when its deltas hold more entries than ``max_delta_ratio`` times its base, or when more
   keys changed than ``max_changed_fraction`` times the base's entries (a delta reads its entries
   in the order of a set, out of the order they lie in memory: per entry it cost about ten times
   what a base does, 1 µs against 0.08 µs on 1 M keys, so with a tenth of the keys changed a base
   is as cheap, and it shortens the chain); else a delta. So a chain has at most ``max_deltas + 1`` files, and a restore reads at
   most about ``1 + max_delta_ratio`` times the entries of the state, plus one delta.
4. **Restore** reads the base, then every delta in order: puts overwrite, deletes remove. A subtask
   whose key-group range does not contain the chain's keeps only the keys of its own key groups
   (hashing each key once, as for a full snapshot): files are not split by key group, so that
   writing a base never hashes the state's keys (~190 ns a key, three times the cost of encoding
   it); only a rescale pays that.
5. **Encoding.** Entries go in chunks of at most ``chunk_entries``, each one ``marshal`` call when
   every key and value is of a plain built-in type (four times faster than pickle on a count's
   entries), else one ``pickle`` call; the codec is recorded per chunk. The file is one zstd frame.
6. **Local files** (like the hard links of a RocksDB checkpoint): the backend keeps the files of
   the newest chain written in ``files/`` of its working directory, and each snapshot hard-links
   the files of its own chain into ``snap-<n>/``, the paths it hands out, valid until its
   ``release``. A file leaves ``files/`` when a newer chain no longer has it.
"""

from __future__ import annotations

import itertools
import marshal
import os
import pickle
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import zstandard

from flowstate.state.backend import SnapshotParts, StateError, StateKind
from flowstate.state.heap_tables import _ABSENT
from flowstate.state.values import plain_data

CHAIN_FORMAT = "heap-chain-v1"
MAGIC = b"FSHEAPCHAIN1\n"
DEFAULT_MAX_DELTAS = 8
DEFAULT_MAX_DELTA_RATIO = 1.0
DEFAULT_MAX_CHANGED_FRACTION = 0.1


class FileRole(StrEnum):
    BASE = "base"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class ChainFile:
    """One file of a chain: its key (rule 2) and the entries it holds (puts and deletes)."""

    key: str
    role: FileRole
    entries: int


@dataclass(frozen=True, slots=True)
class Chain:
    """A base and its deltas, oldest first (rule 2)."""

    base: ChainFile
    deltas: tuple[ChainFile, ...] = ()

    @property
    def files(self) -> tuple[ChainFile, ...]:
        return (self.base, *self.deltas)

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.files]

    def extended(self, file: ChainFile) -> Chain:
        """This chain with ``file`` appended (a delta), or a new chain (a base)."""
        if file.role is FileRole.BASE:
            return Chain(file)
        return Chain(self.base, (*self.deltas, file))


@dataclass(frozen=True, slots=True)
class ChainPolicy:
    """When a snapshot writes a base rather than a delta (rule 3)."""

    max_deltas: int = DEFAULT_MAX_DELTAS
    max_delta_ratio: float = DEFAULT_MAX_DELTA_RATIO
    max_changed_fraction: float = DEFAULT_MAX_CHANGED_FRACTION

    def __post_init__(self) -> None:
        if self.max_deltas < 0:
            raise ValueError(f"max_deltas must be at least 0, not {self.max_deltas}")
        for name in ("max_delta_ratio", "max_changed_fraction"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)}")


def next_role(previous: Chain | None, changed: int, policy: ChainPolicy) -> FileRole:
    """Rule 3: what the next snapshot writes after the chain ``previous`` (``None``: no chain it
    may extend), ``changed`` keys having changed since."""
    if previous is None or len(previous.deltas) >= policy.max_deltas:
        return FileRole.BASE
    base = previous.base.entries
    if sum(d.entries for d in previous.deltas) > policy.max_delta_ratio * base:
        return FileRole.BASE
    if changed > policy.max_changed_fraction * base:
        return FileRole.BASE
    return FileRole.DELTA


# ---- the file format (rule 5) ------------------------------------------------------------------------


def _decode(codec: str, data: bytes) -> Any:
    if codec == "marshal":
        return marshal.loads(data)
    if codec == "pickle":
        return pickle.loads(data)
    raise StateError(f"unknown codec {codec!r} in a heap chain file")


def _encoded_chunks(entries: dict[Any, Any], size: int) -> list[tuple[str, bytes]]:
    """Rule 5: ``entries`` as encoded chunks. Plain entries are one ``marshal`` call (a million
    entries hold the interpreter lock for about 25 ms); others are pickled ``size`` at a time, so
    that the task thread is never held up for long."""
    # marshal writes any buffer (a bytearray, a NumPy array) as bytes: only plain data goes to it.
    if plain_data(entries.values()) and plain_data(entries.keys()):
        try:
            return [("marshal", marshal.dumps(entries))]
        except ValueError:  # a type marshal does not know, or a subclass: pickle keeps it exact
            pass
    items = iter(entries.items())
    out = []
    while chunk := dict(itertools.islice(items, size)):
        out.append(("pickle", pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)))
    return out


def view(layers: tuple[dict[Any, Any], ...]) -> dict[Any, Any]:
    """The entries of the view of ``layers`` (upper layers shadow lower ones, tombstones hide): the
    lowest layer itself when it is the only one (it holds no tombstone), else a merged copy."""
    if len(layers) == 1:
        return layers[0]
    merged = dict(layers[0])
    for layer in layers[1:]:  # in order: a key deleted in one layer may be written again in a later one
        merged.update(layer)
        for key in [k for k, v in layer.items() if v is _ABSENT]:
            merged.pop(key, None)
    return merged


def delta_entries(layers: tuple[dict[Any, Any], ...], keys: Iterable[Any]) -> tuple[dict[Any, Any], list[Any]]:
    """Rule 1: the entries of ``keys`` in the view of ``layers``, and the keys without one there."""
    puts: dict[Any, Any] = {}
    deleted: list[Any] = []
    if len(layers) == 1:
        get = layers[0].get
        for key in keys:
            entry = get(key, _ABSENT)
            if entry is _ABSENT:
                deleted.append(key)
            else:
                puts[key] = entry
        return puts, deleted
    for key in keys:
        for layer in reversed(layers):
            entry = layer.get(key, _ABSENT)
            if entry is not _ABSENT or key in layer:
                break
        if entry is _ABSENT:
            deleted.append(key)
        else:
            puts[key] = entry
    return puts, deleted


def encode_file(role: FileRole, tables: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]],
                changed: dict[str, set[Any]], chunk_entries: int) -> tuple[bytes, int]:
    """Rules 1 and 5: the bytes of a chain file of ``role`` and the number of entries (puts and
    deletes) it holds. A base holds the view of all the layers of every table; a delta the entries
    of the keys ``changed`` in each."""
    states: dict[str, Any] = {}
    count = 0
    for name, (kind, layers) in tables.items():
        deleted: list[Any] = []
        if role is FileRole.BASE:
            puts = view(layers)
        else:
            puts, deleted = delta_entries(layers, changed.get(name, ()))
        try:
            chunks = _encoded_chunks(puts, chunk_entries) if puts else []
            gone = _encoded_chunks({k: None for k in deleted}, chunk_entries) if deleted else []
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise StateError(
                f"state {name!r} holds a value that cannot be pickled ({type(exc).__name__}: {exc}); "
                "keep only picklable values (and keys) in keyed state"
            ) from exc
        count += len(puts) + len(deleted)
        states[name] = {"kind": kind.value, "puts": chunks, "deleted": gone}
    body = pickle.dumps({"role": role.value, "states": states}, protocol=pickle.HIGHEST_PROTOCOL)
    return MAGIC + zstandard.ZstdCompressor(level=1, write_content_size=True).compress(body), count


@dataclass(frozen=True, slots=True)
class FileContent:
    """A chain file read back: per state, its kind, its puts (chunks) and its deleted keys."""

    role: FileRole
    states: dict[str, tuple[StateKind, list[dict[Any, Any]], list[Any]]]


def read_file(path: str | os.PathLike[str]) -> FileContent:
    """Rule 5, backwards. Raises ``StateError`` for a file that is not a heap chain file."""
    raw = Path(path).read_bytes()
    if not raw.startswith(MAGIC):
        raise StateError(f"{path} is not a heap chain file")
    try:
        body = pickle.loads(zstandard.ZstdDecompressor().decompress(raw[len(MAGIC):]))
    except zstandard.ZstdError as exc:
        raise StateError(f"{path}: damaged heap chain file ({exc})") from None
    states = {
        name: (StateKind(s["kind"]), [_decode(*c) for c in s["puts"]],
               [k for c in s["deleted"] for k in _decode(*c)])
        for name, s in body["states"].items()
    }
    return FileContent(FileRole(body["role"]), states)


# ---- local files and the snapshots (rules 2, 3 and 6) ------------------------------------------------


class ChainStore:
    """The working directory of one backend's chain files (rule 6); thread-safe: snapshots are
    materialized and released on other threads than the task's."""

    def __init__(self, base_dir: str | os.PathLike[str] | None, policy: ChainPolicy) -> None:
        self.policy = policy
        self._base_dir = base_dir
        self._root: Path | None = None
        self._instance = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._latest = 0
        """The number of the newest snapshot whose chain is in ``files/``."""
        self._outstanding: set[int] = set()
        self._closed = False

    def root(self) -> Path:
        with self._lock:
            if self._root is None:
                if self._base_dir is not None:
                    Path(self._base_dir).mkdir(parents=True, exist_ok=True)
                self._root = Path(tempfile.mkdtemp(prefix="flowstate-heap-", dir=self._base_dir))
                (self._root / "files").mkdir()
            return self._root

    def taken(self, number: int) -> None:
        with self._lock:
            self._outstanding.add(number)

    def begin(self, number: int, previous: ChainSnapshot | None, changed: int) -> tuple[FileRole, Chain | None, Path]:
        """Step (a) of ``ChainSnapshot.materialize``: the role of its file and the chain it extends;
        the files of that chain are linked into the snapshot's directory, which is returned."""
        root = self.root()
        target = root / f"snap-{number:08d}"
        with self._lock:
            target.mkdir()
            extends = None
            if (previous is not None and previous.chain is not None and self._latest == previous.number
                    and not self._closed):  # close() deleted files/
                extends = previous.chain  # its files are in files/ until a newer chain is written
            role = next_role(extends, changed, self.policy)
            if role is FileRole.DELTA and extends is not None:
                for key in extends.keys:
                    os.link(root / "files" / key, target / key)
            return role, extends if role is FileRole.DELTA else None, target

    def file_key(self, number: int, role: FileRole) -> str:
        return f"heap-{self._instance}-{number:08d}-{role.value}"

    def written(self, number: int, chain: Chain, directory: Path) -> None:
        """Step (c): the snapshot's chain is complete in ``directory``; it becomes the newest one
        in ``files/`` unless a newer snapshot was written first."""
        with self._lock:
            if number <= self._latest or self._closed or self._root is None:
                return
            files = self._root / "files"
            new = chain.files[-1].key
            os.link(directory / new, files / new)
            keep = set(chain.keys)
            for entry in os.scandir(files):
                if entry.name not in keep:
                    os.unlink(entry.path)
            self._latest = number

    def release(self, number: int) -> None:
        with self._lock:
            self._outstanding.discard(number)
            root = self._root
            last = self._closed and not self._outstanding
        if root is not None:
            shutil.rmtree(root / f"snap-{number:08d}", ignore_errors=True)
            if last:
                shutil.rmtree(root, ignore_errors=True)

    def close(self) -> None:
        """Deletes the working directory, or (snapshots not released yet) all but their files."""
        with self._lock:
            self._closed = True
            root = self._root
            last = not self._outstanding
        if root is not None:
            shutil.rmtree(root if last else root / "files", ignore_errors=True)


class ChainSnapshot:
    """An incremental heap snapshot (rules 1 to 3). ``done`` turns true when ``materialize`` has
    returned or raised, or ``release`` was called; ``chain`` is its chain once it was written."""

    __slots__ = ("_changed", "_chunk_entries", "_header", "_layers", "_previous", "_released", "_store", "chain",
                 "done", "number")

    def __init__(self, store: ChainStore, number: int, previous: ChainSnapshot | None, header: dict[str, Any],
                 layers: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]], changed: dict[str, set[Any]],
                 chunk_entries: int) -> None:
        self._store = store
        self.number = number
        self._previous = previous
        self._header = header
        self._layers: dict[str, tuple[StateKind, tuple[dict[Any, Any], ...]]] | None = layers
        self._changed = changed
        """Per state, the keys changed since the barrier of the snapshot before (rule 1)."""
        self._chunk_entries = chunk_entries
        self.chain: Chain | None = None
        self.done = False
        self._released = False
        store.taken(number)

    def materialize(self) -> SnapshotParts:
        """Step (a): choose base or delta (rule 3); (b) write the file; (c) record the chain."""
        layers = self._layers
        if layers is None:
            raise StateError("this snapshot was already materialized or released")
        store = self._store
        try:
            changed = sum(len(keys) for keys in self._changed.values())
            role, extends, directory = store.begin(self.number, self._previous, changed)
            self._previous = None  # its chain is all this one needed of it
            data, entries = encode_file(role, layers, self._changed, self._chunk_entries)
            key = store.file_key(self.number, role)
            with open(directory / key, "wb") as f:
                f.write(data)
            chain = Chain(ChainFile(key, role, entries)) if extends is None else extends.extended(
                ChainFile(key, role, entries))
            store.written(self.number, chain, directory)
            self.chain = chain
        finally:
            self._layers = None
            self._changed = {}
            self.done = True
        files = {k: str(directory / k) for k in chain.keys}
        return SnapshotParts({**self._header, "chain": chain.keys}, files)

    def release(self) -> None:
        self._layers = None
        self._changed = {}
        self._previous = None
        self.done = True
        if not self._released:
            self._released = True
            self._store.release(self.number)


def restore_chain(keys: Iterable[str], files: dict[str, str]) -> Iterator[FileContent]:
    """Rule 4: the files of a chain, base first; ``StateError`` when a path was not given."""
    for key in keys:
        path = files.get(key)
        if path is None:
            raise StateError(f"the snapshot's chain lists file {key!r}, but restore() was not given its path")
        yield read_file(path)
