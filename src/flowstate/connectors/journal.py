"""The ingress journal: durable before acknowledged, so that sources which cannot replay become
replayable.

A *receiver* (an HTTP endpoint, an MQTT subscription) hands each batch of records it receives to
``Journal.append``, which returns only once the batch is durable in the journal's blob store (the
blob-store port, ``flowstate.storage.blobs``: a local directory, S3, or memory for tests); only then
does the receiver acknowledge it to the sender (the HTTP 200, the MQTT PUBACK). The job reads the
journal like a file: a record's *index* (0, 1, 2, … in arrival order) is its position, and the
checkpoint holds the index of the next record to read.

Blobs, under the journal's root:

- ``segments/seg-{first:020d}-{end:020d}.log``: one *sealed* segment, records ``first`` to
  ``end - 1``, each ``u32 length | u32 crc32 | payload`` (payload: the pickled record). A segment is
  written once, with ``put_if_absent``, and never changed: an object store's PUT is atomic and a
  directory's is a rename, so a crash leaves a segment absent or complete (there is no torn tail).
- ``released``: the index below which every record is released (written before the segments it
  frees are deleted, so that indices continue after every segment is gone).
- ``lock`` (a local directory only): see rule 0.

Rules:

0. One owner at a time: a ``Journal`` holds an exclusive ``flock`` from its creation to ``close()``
   (the next attempt's reader waits for the previous one to close): ``lock`` in a local journal's
   directory, a file named after the journal in the temporary directory for any other store. Across
   machines no lock exists; there ``put_if_absent`` fences: a segment name already taken by other
   bytes means another owner, and the append fails (``JournalBusyError``) rather than acknowledge.
1. ``append(records)`` returns the index after its last record once the segment holding them is
   uploaded. Segments are sealed by *group commit*: while one segment is being uploaded, the records
   that arrive wait in the next one, which is sealed and uploaded as soon as the upload in flight
   ends. So an acknowledgement waits at most for the upload in flight plus its own, and concurrent
   senders share uploads. ``linger`` (seconds, default 0; Kafka's producer ``linger.ms`` is the
   analogy) holds a segment open that long after its first record before sealing it, to make fewer,
   larger segments (fewer requests to an object store) at that cost in latency; a segment reaching
   ``SEGMENT_BYTES`` is sealed at once. A failed upload fails every append waiting for it (nothing
   of it is acknowledged) and the journal: later appends and reads raise, so the attempt fails and
   the next one reopens the journal from the store.
2. ``read(start, limit)`` returns up to ``limit`` records from index ``start`` on (fewer when the
   journal holds fewer). It never returns a record that ``append`` has not returned for. Segments
   this journal uploaded are read from memory; older ones (a restore, on any machine) from the store.
3. ``release(upto)``: every record below ``upto`` is consumed by a completed checkpoint; ``released``
   is written, then every segment holding only such records is deleted. Segments are sealed, so a
   journal whose every record is released holds no segment: a job that ends leaves none behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
import re
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowstate.storage.blobs import BlobStore

_HEADER = struct.Struct("!II")
SEGMENTS = "segments"
_NAME = re.compile(r"seg-(\d{20})-(\d{20})\.log")
_RELEASED = "released"
SEGMENT_BYTES = 16 * 1024 * 1024
"""A segment is sealed at once when it holds this many bytes (rule 1)."""

JournalLocation = str | os.PathLike[str] | BlobStore
"""Where a journal lives: a local directory, ``s3://bucket/prefix``, or a blob store (tests)."""


class JournalBusyError(RuntimeError):
    """Another owner holds the journal (rule 0)."""


class JournalFailedError(RuntimeError):
    """An upload of the journal failed: this journal accepts and serves nothing more (rule 1)."""


def segment_path(first: int, end: int) -> str:
    return f"{SEGMENTS}/seg-{first:020d}-{end:020d}.log"


def encode(records: list[Any]) -> tuple[list[bytes], bytes]:
    """The payloads of ``records`` and their bytes in a segment."""
    payloads = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
    return payloads, b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)


def decode(data: bytes, where: str) -> list[bytes]:
    """The payloads of a segment; a damaged one is an error (segments are written whole)."""
    out: list[bytes] = []
    at = 0
    while at < len(data):
        length, crc = _HEADER.unpack_from(data, at)
        payload = data[at + _HEADER.size:at + _HEADER.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise OSError(f"journal segment {where} is damaged at byte {at}")
        out.append(payload)
        at += _HEADER.size + length
    return out


def open_store(location: JournalLocation) -> tuple[BlobStore, Path]:
    """The blob store of ``location`` and the path of the lock file of its owner (rule 0)."""
    if isinstance(location, (str, os.PathLike)) and "://" in str(location):
        url = str(location)
        if url.startswith("s3a://"):
            url = "s3" + url[3:]
        if not url.startswith("s3://"):
            raise ValueError(f"journal location {url!r}: use a directory or s3://bucket/prefix")
        try:
            from flowstate.storage.s3 import S3BlobStore
        except ImportError as error:
            raise ValueError(f"a journal in S3 needs the obstore package ({error}): "
                             "pip install 'flowstate[s3]'") from None
        return S3BlobStore(url), _lock_for(url)
    if isinstance(location, (str, os.PathLike)):
        from flowstate.storage.local import LocalBlobStore

        store = LocalBlobStore(location)
        if any(store.root.glob("seg-*.log")):
            raise ValueError(f"journal {location} holds segments of the earlier layout (seg-*.log in the "
                             "directory): drain them with the version that wrote them, or give a new directory")
        return store, store.root / "lock"
    return location, _lock_for(f"{type(location).__name__}-{id(location)}")


def _lock_for(name: str) -> Path:
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"flowstate-journal-{digest}.lock"


def _own(lock: Path, where: str, wait: float) -> int:
    """Rule 0, waited for up to ``wait`` seconds: the reader of the previous attempt of a job may
    still be closing."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise JournalBusyError(
                    f"journal {where} is in use by another reader (another job, or a previous attempt "
                    f"still running after {wait:.0f} s); give each source its own journal"
                ) from None
            time.sleep(0.02)


@dataclass(slots=True)
class _Segment:
    """Records gathered for one segment: open, then sealed (uploading), then done."""

    first: int
    payloads: list[bytes] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    opened: float | None = None
    done: bool = False
    error: BaseException | None = None

    @property
    def end(self) -> int:
        return self.first + len(self.payloads)


class Journal:
    """The journal at ``location`` (see the module rules)."""

    def __init__(
        self, location: JournalLocation, *, linger: float = 0.0, wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store, lock = open_store(location)
        self._where = str(location) if isinstance(location, (str, os.PathLike)) else repr(location)
        self._owner: int | None = _own(lock, self._where, wait)
        self._linger, self._clock = linger, clock
        self._cond = threading.Condition()
        self._uploading = False
        self._failed: BaseException | None = None
        self._segments: list[tuple[int, int]] = []
        """(first, end) of every segment kept, in order; dense: each ``first`` is the previous ``end``."""
        self._cached: dict[int, list[bytes]] = {}
        """Payloads by segment ``first``: uploaded by this journal, or read from the store."""
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._open = _Segment(self._end)

    def _load(self) -> None:
        found = sorted((int(m.group(1)), int(m.group(2))) for blob in self._store.list(SEGMENTS)
                       if (m := _NAME.fullmatch(blob.path.rsplit("/", 1)[-1])))
        try:
            released = int(self._store.get(_RELEASED).decode() or 0)
        except FileNotFoundError:
            released = 0
        self._released = released
        self._segments = [(first, end) for first, end in found if end > released]
        self._end = max(released, found[-1][1] if found else 0)
        gone = [segment_path(f, e) for f, e in found if e <= released]
        if gone:  # released, but the deletion was cut short
            self._store.delete(gone)

    @property
    def end(self) -> int:
        """The index after the last durable record."""
        return self._end

    @property
    def start(self) -> int:
        """The index of the oldest record not yet released."""
        return max(self._released, self._segments[0][0] if self._segments else self._end)

    @property
    def store(self) -> BlobStore:
        return self._store

    def append(self, records: list[Any]) -> int:
        """Rule 1."""
        if not records:
            return self._end
        payloads, blob = encode(records)
        with self._cond:
            self._check()
            mine = self._open
            if mine.opened is None:
                mine.opened = self._clock()
            mine.payloads += payloads
            mine.chunks.append(blob)
            mine.size += len(blob)
            self._cond.notify_all()  # a lingering uploader may seal now (full segment)
            while not mine.done:
                if self._uploading:
                    self._cond.wait()
                    continue
                self._upload_open()
            if mine.error is not None:
                raise JournalFailedError(f"journal {self._where}: the upload of records {mine.first}-"
                                         f"{mine.end - 1} failed: {mine.error}") from mine.error
            return mine.end

    def _upload_open(self) -> None:
        """Seal the open segment (after ``linger``) and upload it, the condition's lock held on entry
        and on return, released during the upload."""
        self._uploading = True
        segment = self._open
        while segment.size < SEGMENT_BYTES and segment.opened is not None:
            left = segment.opened + self._linger - self._clock()
            if left <= 0:
                break
            self._cond.wait(left)
        self._open = _Segment(segment.end)
        self._cond.release()
        try:
            error = self._put(segment)
        finally:
            self._cond.acquire()
        self._uploading = False
        if error is None:
            self._segments.append((segment.first, segment.end))
            self._cached[segment.first] = segment.payloads
            self._end = segment.end
        else:
            segment.error = self._failed = error
            self._open.error = error  # appended after a lost segment: their indices are gone
            self._open.done = True
        segment.done = True
        self._cond.notify_all()

    def _put(self, segment: _Segment) -> BaseException | None:
        path, data = segment_path(segment.first, segment.end), b"".join(segment.chunks)
        try:
            if not self._store.put_if_absent(path, data) and self._store.get(path) != data:
                # Not ours (an answer lost and retried finds our own bytes, which is fine).
                return JournalBusyError(f"journal {self._where}: segment {path} was written by another "
                                        "owner; give each source its own journal")
        except Exception as error:  # noqa: BLE001 (any failure fails the journal: rule 1)
            return error
        return None

    def _check(self) -> None:
        if self._failed is not None:
            raise JournalFailedError(f"journal {self._where} failed ({self._failed}); the next attempt "
                                     "reopens it") from self._failed

    def read(self, start: int, limit: int) -> list[Any]:
        """Rule 2."""
        with self._cond:
            self._check()
            end = min(self._end, start + limit)
            segments = list(self._segments)
        if start >= end:
            return []
        if not segments or start < max(self._released, segments[0][0]):
            raise ValueError(f"journal {self._where}: record {start} was released (oldest kept: {self.start})")
        out: list[Any] = []
        index = start
        for first, last in segments:
            if last <= index:
                continue
            if index >= end:
                break
            payloads = self._payloads(first, last)
            out += [pickle.loads(p) for p in payloads[index - first:min(end, last) - first]]
            index = min(end, last)
            if index == last:
                self._cached.pop(first, None)  # read past: the store keeps it until it is released
        return out

    def _payloads(self, first: int, end: int) -> list[bytes]:
        cached = self._cached.get(first)
        if cached is None:
            path = segment_path(first, end)
            cached = decode(self._store.get(path), path)
            if len(cached) != end - first:
                raise OSError(f"journal segment {path} holds {len(cached)} records, its name says {end - first}")
            self._cached[first] = cached
        return cached

    def release(self, upto: int) -> None:
        """Rule 3."""
        with self._cond:
            upto = min(upto, self._end)
            if upto > self._released:
                self._store.put(_RELEASED, str(upto).encode())
                self._released = upto
            gone = [(f, e) for f, e in self._segments if e <= self._released]
            self._segments = [(f, e) for f, e in self._segments if e > self._released]
            for first, _ in gone:
                self._cached.pop(first, None)
        if gone:
            self._store.delete([segment_path(f, e) for f, e in gone])

    def close(self) -> None:
        """Stop appending; the journal is then free for the next owner. Segments not released stay
        for it."""
        with self._cond:
            while self._uploading:
                self._cond.wait()
            self._failed = self._failed or JournalFailedError(f"journal {self._where} is closed")
        if self._owner is not None:
            os.close(self._owner)  # releases the lock
            self._owner = None
