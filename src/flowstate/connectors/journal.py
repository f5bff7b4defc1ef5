"""The ingress journal: durable before acknowledged, so that sources which cannot replay become
replayable.

A *receiver* (an HTTP endpoint, an MQTT subscription, a socket) hands each record it receives to
``Journal.append``, which returns only once the record is on disk (written and fsynced); only then
does the receiver acknowledge it to the sender (the HTTP 200, the MQTT PUBACK). The job reads the
journal like a file: a record's *index* (0, 1, 2, … in arrival order) is its position, and the
checkpoint holds the index of the next record to read.

Files, in the journal's directory:

- ``seg-{first:020d}.log``: one segment; ``first`` is the index of its first record. A record is
  ``u32 length | u32 crc32 | payload`` (payload: the pickled record). Every open of the journal for
  appending starts a new segment, so a segment is never appended to by two processes.
- A torn tail (a crash during an append: length, checksum or payload incomplete or wrong) was never
  acknowledged; readers stop at it and the next open for appending cuts it off before it starts its
  own segment, so indices stay dense.

Rules:

0. One owner at a time: a ``Journal`` holds an exclusive lock on ``lock`` in its directory from its
   creation to ``close()`` (the next attempt's reader waits for the previous one to close).
1. ``append(records)`` writes, flushes and fsyncs (and fsyncs the directory when it created the
   segment) before returning the index after the last record. Appends are serialised by a lock.
2. ``read(start, limit)`` returns up to ``limit`` records from index ``start`` on (fewer when the
   journal holds fewer). It never returns a record that ``append`` has not returned for.
3. ``release(upto)``: every record below ``upto`` is consumed by a completed checkpoint; it is
   recorded in the file ``released`` and segments holding only such records are deleted (the segment
   being appended to is kept). ``close()`` of a
   journal whose every record is released deletes its last segment too: a job that ends leaves no
   segment behind.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import re
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("!II")
_NAME = re.compile(r"seg-(\d{20})\.log")
_RELEASED = "released"
"""A file holding the index below which every record is released (informational: a reader's
position comes from its checkpoint)."""
SEGMENT_BYTES = 16 * 1024 * 1024
"""A segment is closed and a new one started once it holds this many bytes."""


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _own(directory: Path, wait: float) -> int:
    """Rule 0: one owner at a time. An exclusive lock on ``directory/lock``, waited for up to ``wait``
    seconds: the reader of the previous attempt of a job may still be closing."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise JournalBusyError(
                    f"journal {directory} is in use by another reader (another job, or a previous attempt "
                    f"still running after {wait:.0f} s); give each source its own journal directory"
                ) from None
            time.sleep(0.02)


class JournalBusyError(RuntimeError):
    """Another reader owns the journal's directory."""


def _scan(path: Path) -> tuple[int, int]:
    """(records, bytes) of the valid prefix of a segment."""
    count = good = 0
    with open(path, "rb") as file:
        data = file.read()
    while good + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, good)
        end = good + _HEADER.size + length
        if end > len(data) or zlib.crc32(data[good + _HEADER.size:end]) != crc:
            break
        count += 1
        good = end
    return count, good


class Journal:
    """The segments in ``directory`` (see the module rules)."""

    def __init__(self, directory: str | os.PathLike[str], *, wait: float = 30.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._owner = _own(self.directory, wait)
        self._lock = threading.Lock()
        self._file: Any = None
        self._segment_first = 0
        self._segment_bytes = 0
        self._released = 0
        self._segments: list[tuple[int, Path]] = []
        self._end = 0
        self._cursor: tuple[int, int, int] | None = None
        """(next index, segment number in ``_segments``, byte offset) after the last read."""
        self._load()

    def _load(self) -> None:
        """Index the segments; cut off a torn tail of the last one (it was never acknowledged)."""
        found = sorted(
            (int(m.group(1)), path) for path in self.directory.iterdir() if (m := _NAME.fullmatch(path.name))
        )
        self._segments = found
        self._counts: dict[int, int] = {}
        for first, path in found:
            count, good = _scan(path)
            if good != path.stat().st_size:
                with open(path, "r+b") as file:
                    file.truncate(good)
                    os.fsync(file.fileno())
            self._counts[first] = count
        if found:
            last_first = found[-1][0]
            self._end = last_first + self._counts[last_first]
        marker = self.directory / _RELEASED
        if marker.exists():
            released = int(marker.read_text() or 0)
            if not found:
                self._end = released  # every segment was released and deleted: indices continue
            self._released = min(released, self._end)

    @property
    def end(self) -> int:
        """The index after the last durable record."""
        return self._end

    @property
    def start(self) -> int:
        """The index of the oldest record not yet released."""
        return max(self._released, self._segments[0][0] if self._segments else self._end)

    def append(self, records: list[Any]) -> int:
        """Rule 1."""
        if not records:
            return self._end
        payloads = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        blob = b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        with self._lock:
            created = False
            if self._file is None or self._segment_bytes >= SEGMENT_BYTES:
                self._roll()
                created = True
            self._file.write(blob)
            self._file.flush()
            os.fsync(self._file.fileno())
            if created:
                _fsync_directory(self.directory)
            self._segment_bytes += len(blob)
            self._counts[self._segment_first] += len(records)
            self._end += len(records)
            return self._end

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
        self._segment_first = self._end
        path = self.directory / f"seg-{self._end:020d}.log"
        self._file = open(path, "xb")
        self._segment_bytes = 0
        self._segments.append((self._end, path))
        self._counts[self._end] = 0

    def read(self, start: int, limit: int) -> list[Any]:
        """Rule 2. Sequential reads continue from where the previous one stopped (a cursor), so a
        poll costs what it returns, not the size of the segment."""
        end = min(self._end, start + limit)
        if start >= end:
            return []
        segments = list(self._segments)
        if not segments or start < self.start:
            raise ValueError(f"journal {self.directory}: record {start} was released (oldest kept: {self.start})")
        if self._cursor is not None and self._cursor[0] == start:
            _, k, offset = self._cursor
        else:
            k = max(i for i, (first, _) in enumerate(segments) if first <= start)
            offset = self._offset_of(segments[k][1], start - segments[k][0])
        out: list[Any] = []
        index = start
        while index < end:
            first, path = segments[k]
            last = segments[k + 1][0] if k + 1 < len(segments) else self._end
            if index >= last:
                k, offset = k + 1, 0
                continue
            with open(path, "rb") as file:
                file.seek(offset)
                while index < min(end, last):
                    length, _ = _HEADER.unpack(file.read(_HEADER.size))
                    out.append(pickle.loads(file.read(length)))
                    offset += _HEADER.size + length
                    index += 1
        self._cursor = (index, k, offset)
        return out

    @staticmethod
    def _offset_of(path: Path, records: int) -> int:
        """The byte offset of a segment's record number ``records``."""
        offset = 0
        with open(path, "rb") as file:
            for _ in range(records):
                length, _ = _HEADER.unpack(file.read(_HEADER.size))
                offset += _HEADER.size + length
                file.seek(offset)
        return offset

    def release(self, upto: int) -> None:
        """Rule 3."""
        with self._lock:
            if upto > self._released:
                self._released = upto
                tmp = self.directory / (_RELEASED + ".tmp")
                tmp.write_text(str(upto))
                os.replace(tmp, self.directory / _RELEASED)
            keep: list[tuple[int, Path]] = []
            for i, (first, path) in enumerate(self._segments):
                last = self._segments[i + 1][0] if i + 1 < len(self._segments) else None
                active = last is None and self._file is not None
                if not active and (last if last is not None else self._end) <= self._released:
                    path.unlink(missing_ok=True)
                else:
                    keep.append((first, path))
            if len(keep) != len(self._segments):
                _fsync_directory(self.directory)
                self._cursor = None  # segment numbers moved
            self._segments = keep

    def close(self) -> None:
        """Stop appending; with every record released, the last segment goes too (rule 3). Then the
        directory is free for the next owner."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
        self.release(self._released)
        if self._owner is not None:
            os.close(self._owner)  # releases the lock
            self._owner = None
