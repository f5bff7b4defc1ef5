"""A replayable, line-based source over files: each file is one split, or several byte ranges when it
is large, and each line is one record.

Rules:

1. The files are a glob pattern (``glob.glob``, ``**`` recursive, sorted, directories skipped) or an
   explicit list of paths (kept in the given order), resolved once when the source is built. A pattern
   that matches no file, or a listed path that is not a file, is an error then.
2. **Splits.** A file of at most ``split_size`` bytes is one split whose id is the path string. A
   larger file is cut into the fewest byte ranges of equal size (±1 byte) no larger than
   ``split_size``; the split of the range ``[start, end)`` has the id ``"<path>[<start>:<end>]"``.
   The sizes are taken when the source is built, so the split ids of an unchanged file are the same
   in every run and at every parallelism (what a restore at another parallelism needs). Splits are
   listed file by file, ranges in file order; subtask ``i`` of ``p`` reads ``splits()[i::p]``, so
   several subtasks read one large file.
3. **A line belongs to the split in which it starts**: the split ``[start, end)`` holds every line
   whose first byte is at an offset in ``[start, end)``, the last of them possibly ending beyond
   ``end``. A reader that begins a split at ``start > 0`` skips the rest of the line that straddles
   ``start`` (the previous split reads it); a reader ends a split once it has read the line that
   straddles ``end``. The ranges of a file thus give each of its lines to exactly one split.
4. The position of a split is the byte offset of the **next** unread line: the split's ``start``
   (the file's ``0``) before anything was read, the offset after its last line once it is read to the
   end (the file size for a split that reaches the end of the file).
5. A record is a line without its ``\\n``; a line ending in ``\\r\\n`` loses the ``\\r`` too (a lone
   ``\\r`` is kept). Empty lines are records. A last line without ``\\n`` is a record; a file ending
   in ``\\n`` has no empty record after it.
6. The splits of one reader are read one after another, in the order given to ``build_reader``.
7. Files are read in binary chunks (``chunk_size``), split on ``b"\\n"`` and decoded once per chunk,
   so the encoding must encode ``"\\n"`` as the single byte ``b"\\n"`` (UTF-8, Latin-1, …; not
   UTF-16). Bytes that do not decode raise ``FileDecodeError`` naming the file and the byte offset.
8. A resume position other than the split's ``start`` must be the start of a line no further than
   the end of the file, otherwise the file changed since the checkpoint and the reader refuses it.
9. A resume state that names a split of a file this source reads, but not one of its splits now (the
   file was one split and is now cut into ranges, or the other way round, or cut otherwise: its size
   or ``split_size`` changed), is refused: reading such a file from the start again would repeat
   records. Positions of files the source no longer reads are ignored.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_SPLIT_SIZE = 4 << 20
"""Files larger than this are read as several splits (rule 2)."""
_RANGE_ID = re.compile(r"(.*)\[[0-9]+:[0-9]+\]", re.DOTALL)
"""The id of a byte range: ``<path>[<start>:<end>]``."""
_READS_AFTER_FIRST_RECORD = 1
"""Chunks a poll may still read once it has records to return: bounds the time of one poll."""


class FileDecodeError(ValueError):
    """A line of a file does not decode with the source's encoding."""

    def __init__(self, path: str, offset: int, encoding: str, reason: str) -> None:
        super().__init__(f"{path}: cannot decode byte offset {offset} as {encoding}: {reason}")
        self.path = path
        self.offset = offset


class FileChangedError(ValueError):
    """A resume position does not fit the file: the file changed since the checkpoint was taken."""


def check_line_encoding(encoding: str, owner: str) -> None:
    """Raise unless ``encoding`` writes ``"\\n"`` as the single byte ``b"\\n"`` (rule 7)."""
    try:
        newline = "\n".encode(encoding)
    except LookupError:
        raise ValueError(f"{owner}: unknown encoding {encoding!r}") from None
    if newline != b"\n":
        raise ValueError(
            f"{owner}: encoding {encoding!r} does not write a newline as the byte 0x0A; "
            "line splitting needs an ASCII-compatible encoding such as utf-8"
        )


@dataclass(frozen=True, slots=True)
class FileSplit:
    """The lines of ``path`` that start at a byte offset in ``[start, end)`` (rule 3); ``end`` is
    ``None`` for a whole file, read to its end whatever its size."""

    id: str
    path: str
    start: int
    end: int | None


def file_splits(path: str, size: int, split_size: int) -> list[FileSplit]:
    """The splits of a file of ``size`` bytes (rule 2)."""
    if size <= split_size:
        return [FileSplit(path, path, 0, None)]
    count = -(-size // split_size)
    bounds = [size * k // count for k in range(count + 1)]
    return [FileSplit(f"{path}[{a}:{b}]", path, a, b) for a, b in zip(bounds, bounds[1:])]


class FileSource:
    """Lines of files (see the module rules). Replayable.

    ``name`` defaults to ``"files:<pattern>"`` (``"files"`` for a list of paths). ``chunk_size`` is the
    number of bytes read at once (default 1 MiB); small values only serve to test chunk boundaries.
    ``split_size`` (default 4 MiB) is the largest file read as one split (rule 2).
    """

    __slots__ = ("_splits", "_encoding", "_name", "_chunk_size")

    def __init__(
        self,
        pattern_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        encoding: str = "utf-8",
        name: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        split_size: int = DEFAULT_SPLIT_SIZE,
    ) -> None:
        check_line_encoding(encoding, "FileSource")
        for option, value in (("chunk_size", chunk_size), ("split_size", split_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FileSource: {option} must be an int ≥ 1, got {value!r}")
        if isinstance(pattern_or_paths, (str, os.PathLike)):
            pattern = os.fspath(pattern_or_paths)
            paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not paths:
                raise FileNotFoundError(f"FileSource: no file matches the pattern {pattern!r}")
            default_name = f"files:{pattern}"
        else:
            paths = [os.fspath(p) for p in pattern_or_paths]
            if not paths:
                raise ValueError("FileSource: the list of paths is empty")
            for path in paths:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"FileSource: {path!r} is not a file")
            if len(set(paths)) != len(paths):
                raise ValueError(f"FileSource: a path is listed twice in {paths!r}")
            default_name = "files"
        splits: dict[str, FileSplit] = {}
        for path in paths:
            for split in file_splits(path, os.path.getsize(path), split_size):
                if split.id in splits:
                    raise ValueError(f"FileSource: the split id {split.id!r} names two ranges; rename the file")
                splits[split.id] = split
        self._splits = splits
        self._encoding = encoding
        self._name = default_name if name is None else name
        self._chunk_size = chunk_size

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return list(self._splits)

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> FileReader:
        resume = resume_state or {}
        known = self._splits
        self._refuse_other_cuts(resume)
        chosen: list[FileSplit] = []
        positions: dict[str, int] = {}
        for split_id in splits:
            split = known.get(split_id)
            if split is None:
                raise ValueError(f"FileSource {self._name!r}: unknown split {split_id!r}")
            if split_id in positions:
                raise ValueError(f"FileSource {self._name!r}: split {split_id!r} assigned twice")
            position = resume.get(split_id, split.start)
            if isinstance(position, bool) or not isinstance(position, int) or position < 0:
                raise ValueError(
                    f"FileSource {self._name!r}: position of {split_id!r} must be an int ≥ 0, got {position!r}"
                )
            chosen.append(split)
            positions[split_id] = position
        return FileReader(chosen, positions, self._encoding, self._chunk_size)

    def _refuse_other_cuts(self, resume: dict[str, Any]) -> None:
        """Rule 9."""
        paths = {split.path for split in self._splits.values()}
        for split_id in resume:
            if split_id in self._splits:
                continue
            match = _RANGE_ID.fullmatch(split_id)
            path = match.group(1) if match and match.group(1) in paths else split_id
            if path in paths:
                raise ValueError(
                    f"FileSource {self._name!r}: the checkpoint has a position for {split_id!r}, which is not one of "
                    f"the splits {path!r} is read as now ({[s for s in self._splits if self._splits[s].path == path][:3]!r}…): "
                    "the file's size or the source's split_size changed since the checkpoint; restore with the "
                    "split_size it was taken with (a size at least that of the file reads it as one split)"
                )


class FileReader:
    """Reads its splits one after another. State: the byte offset of the next line of every split.

    The current chunk is kept as raw bytes plus its decoded lines; the offset of the next unread line
    is computed only when a snapshot asks for it, so reading costs nothing per line.
    """

    __slots__ = (
        "_splits", "_positions", "_encoding", "_chunk_size", "_current", "_file", "_raw", "_cut",
        "_lines", "_next", "_block_start", "_tail", "_end", "_totals",
    )

    def __init__(self, splits: list[FileSplit], positions: dict[str, int], encoding: str, chunk_size: int) -> None:
        self._splits = splits
        self._positions = positions
        self._encoding = encoding
        self._chunk_size = chunk_size
        self._current = 0
        """Index in ``_splits`` of the split being read (or next to open)."""
        self._file: Any = None
        self._raw = b""
        """The bytes of the current block; ``_raw[:_cut]`` holds exactly the lines of ``_lines``."""
        self._cut = 0
        self._lines: list[str] = []
        self._next = 0
        """Index in ``_lines`` of the next unread line."""
        self._block_start = 0
        """File offset of ``_raw[0]``."""
        self._tail = b""
        """The bytes after the block's last newline: the start of a line not read completely yet."""
        self._end: float = 0
        """File offset where the lines of the current split stop starting (rule 3); once the line that
        straddles it is read, the offset after that line (``inf``: the end of the file)."""
        self._totals: list[int] | None = None
        """Bytes of each split (``progress``), measured once when first asked."""

    def poll(self, max_records: int) -> list[Any] | None:
        out: list[str] = []
        reads_left = _READS_AFTER_FIRST_RECORD
        while True:
            lines = self._lines
            start = self._next
            if start < len(lines):
                end = start + (max_records - len(out))
                if out:
                    out.extend(lines[start:end])
                else:
                    out = lines[start:end]
                self._next = min(end, len(lines))
                if len(out) >= max_records:
                    return out
            if out:
                if reads_left == 0:
                    return out
                reads_left -= 1
            if not self._advance():
                return out if out else None

    def poll_split(self, max_records: int) -> tuple[str, list[Any], bool] | None:
        """``poll`` for event time: records of one split only, as ``(split, records, finished)``;
        ``finished`` (with no records) once that split is exhausted, so that its watermark stops
        counting. ``None`` once every split is exhausted."""
        while True:
            lines = self._lines
            start = self._next
            if start < len(lines):
                end = min(start + max_records, len(lines))
                self._next = end
                return self._splits[self._current].id, lines[start:end], False
            current = self._current
            if not self._advance():
                return None
            if self._current != current:
                return self._splits[current].id, [], True

    def snapshot(self) -> dict[str, Any]:
        positions = dict(self._positions)
        if self._file is not None:
            positions[self._splits[self._current].id] = self._block_start + self._offset_of_next_line()
        return positions

    def progress(self) -> tuple[int, int] | None:
        """(bytes read, bytes) of this reader's splits, those read before a restore included. Asked
        from another thread: the split being read counts up to its current block (a moment ago)."""
        if self._totals is None:
            try:
                self._totals = [(split.end if split.end is not None else os.path.getsize(split.path)) - split.start
                                for split in self._splits]
            except OSError:
                return None
        current = self._current
        read = 0
        for k, (split, total) in enumerate(zip(self._splits, self._totals)):
            if k < current:
                done = total
            elif k == current and self._file is not None:
                done = self._block_start - split.start
            else:
                done = self._positions.get(split.id, split.start) - split.start
            read += min(max(done, 0), total)
        return read, sum(self._totals)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ---- reading ---------------------------------------------------------------------------------

    def _advance(self) -> bool:
        """Load the next block of lines (possibly empty). False when every split is exhausted.

        Called only when every line of the current block was read.
        """
        if self._file is None:
            if self._current >= len(self._splits):
                return False
            self._open(self._splits[self._current])
            return True
        tail_start = self._block_start + self._cut
        read_at = tail_start + len(self._tail)
        if read_at < self._end:
            chunk = self._file.read(min(self._chunk_size, self._end - read_at))
        elif self._tail:
            # Rule 3: the line straddling the split's end belongs to it; read on to its newline only.
            chunk = self._file.read(self._chunk_size)
            newline = chunk.find(b"\n")
            if newline >= 0:
                chunk = chunk[: newline + 1]
                self._end = read_at + newline + 1
        else:
            chunk = b""
        if chunk:
            data = self._tail + chunk if self._tail else chunk
            newline = data.rfind(b"\n")
            if newline < 0:
                # No line ends in this chunk (a line longer than the chunk): keep collecting it.
                lines: list[str] = []
                cut = 0
            else:
                cut = newline + 1
                lines = self._decode(memoryview(data)[:cut], tail_start).replace("\r\n", "\n").split("\n")
                lines.pop()  # the empty string after the block's last newline
            self._block_start = tail_start
            self._raw, self._cut, self._lines, self._next, self._tail = data, cut, lines, 0, data[cut:]
            return True
        if self._tail:
            # Rule 5: the last line has no newline; it is a record all the same.
            tail = self._tail
            last_line = self._decode(tail, tail_start)
            self._block_start = tail_start
            self._raw, self._cut, self._lines, self._next, self._tail = tail, len(tail), [last_line], 0, b""
            return True
        self._positions[self._splits[self._current].id] = tail_start
        self._file.close()
        self._file = None
        self._current += 1
        self._raw, self._cut, self._lines, self._next = b"", 0, [], 0
        return True

    def _open(self, split: FileSplit) -> None:
        position = self._positions[split.id]
        path = split.path
        file = open(path, "rb")
        try:
            size = os.fstat(file.fileno()).st_size
            if position > size:
                raise FileChangedError(
                    f"{path}: resume position {position} is beyond the end of the file ({size} bytes); "
                    "the file changed since the checkpoint"
                )
            if position == split.start and position > 0:
                position = self._first_line_from(file, position, size)
            elif 0 < position < size:
                file.seek(position - 1)
                if file.read(1) != b"\n":
                    raise FileChangedError(
                        f"{path}: resume position {position} is not the start of a line; "
                        "the file changed since the checkpoint"
                    )
            file.seek(position)
        except BaseException:
            file.close()
            raise
        self._file = file
        self._end = float("inf") if split.end is None else split.end
        self._block_start = position
        self._raw, self._cut, self._lines, self._next, self._tail = b"", 0, [], 0, b""

    def _first_line_from(self, file: Any, start: int, size: int) -> int:
        """Rule 3: the offset of the first line that starts at ``start`` or after it (``size`` if none)."""
        offset = start - 1
        file.seek(offset)
        while True:
            chunk = file.read(self._chunk_size)
            if not chunk:
                return size
            newline = chunk.find(b"\n")
            if newline >= 0:
                return offset + newline + 1
            offset += len(chunk)

    def _decode(self, data: bytes | memoryview, offset: int) -> str:
        try:
            return str(data, self._encoding)
        except UnicodeDecodeError as error:
            raise FileDecodeError(
                self._splits[self._current].path, offset + error.start, self._encoding, error.reason
            ) from None

    def _offset_of_next_line(self) -> int:
        """Offset within the block of line ``_next``, found by splitting off that many lines (only
        snapshots pay for it)."""
        if self._next >= len(self._lines):
            return self._cut
        if self._next == 0:
            return 0
        rest = self._raw.split(b"\n", self._next)[-1]
        return len(self._raw) - len(rest)
