"""A replayable, line-based source over files: one split per file, one record per line.

Rules:

1. The files are a glob pattern (``glob.glob``, ``**`` recursive, sorted, directories skipped) or an
   explicit list of paths (kept in the given order), resolved once when the source is built. A pattern
   that matches no file, or a listed path that is not a file, is an error then.
2. The split id is the path string. The position of a split is the byte offset of the **next** unread
   line: ``0`` before anything was read, the file size once it is read to the end.
3. A record is a line without its ``\\n``; a line ending in ``\\r\\n`` loses the ``\\r`` too (a lone
   ``\\r`` is kept). Empty lines are records. A last line without ``\\n`` is a record; a file ending
   in ``\\n`` has no empty record after it.
4. The splits of one reader are read one after another, in the order given to ``build_reader``.
5. Files are read in binary chunks (``chunk_size``), split on ``b"\\n"`` and decoded once per chunk,
   so the encoding must encode ``"\\n"`` as the single byte ``b"\\n"`` (UTF-8, Latin-1, …; not
   UTF-16). Bytes that do not decode raise ``FileDecodeError`` naming the file and the byte offset.
6. A resume position must be the start of a line no further than the end of the file, otherwise the
   file changed since the checkpoint and the reader refuses it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

DEFAULT_CHUNK_SIZE = 1 << 20
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
    """Raise unless ``encoding`` writes ``"\\n"`` as the single byte ``b"\\n"`` (rule 5)."""
    try:
        newline = "\n".encode(encoding)
    except LookupError:
        raise ValueError(f"{owner}: unknown encoding {encoding!r}") from None
    if newline != b"\n":
        raise ValueError(
            f"{owner}: encoding {encoding!r} does not write a newline as the byte 0x0A; "
            "line splitting needs an ASCII-compatible encoding such as utf-8"
        )


class FileSource:
    """Lines of files (see the module rules). Replayable.

    ``name`` defaults to ``"files:<pattern>"`` (``"files"`` for a list of paths). ``chunk_size`` is the
    number of bytes read at once (default 1 MiB); small values only serve to test chunk boundaries.
    """

    __slots__ = ("_paths", "_encoding", "_name", "_chunk_size")

    def __init__(
        self,
        pattern_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        encoding: str = "utf-8",
        name: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        check_line_encoding(encoding, "FileSource")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"FileSource: chunk_size must be an int ≥ 1, got {chunk_size!r}")
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
        self._paths = tuple(paths)
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
        return list(self._paths)

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> FileReader:
        resume = resume_state or {}
        known = set(self._paths)
        positions: dict[str, int] = {}
        for split in splits:
            if split not in known:
                raise ValueError(f"FileSource {self._name!r}: unknown split {split!r}")
            if split in positions:
                raise ValueError(f"FileSource {self._name!r}: split {split!r} assigned twice")
            position = resume.get(split, 0)
            if isinstance(position, bool) or not isinstance(position, int) or position < 0:
                raise ValueError(
                    f"FileSource {self._name!r}: position of {split!r} must be an int ≥ 0, got {position!r}"
                )
            positions[split] = position
        return FileReader(list(splits), positions, self._encoding, self._chunk_size)


class FileReader:
    """Reads its files one after another. State: the byte offset of the next line of every split.

    The current chunk is kept as raw bytes plus its decoded lines; the offset of the next unread line
    is computed only when a snapshot asks for it, so reading costs nothing per line.
    """

    __slots__ = (
        "_splits", "_positions", "_encoding", "_chunk_size", "_current", "_file", "_raw", "_cut",
        "_lines", "_next", "_block_start", "_tail",
    )

    def __init__(self, splits: list[str], positions: dict[str, int], encoding: str, chunk_size: int) -> None:
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
                return self._splits[self._current], lines[start:end], False
            current = self._current
            if not self._advance():
                return None
            if self._current != current:
                return self._splits[current], [], True

    def snapshot(self) -> dict[str, Any]:
        positions = dict(self._positions)
        if self._file is not None:
            positions[self._splits[self._current]] = self._block_start + self._offset_of_next_line()
        return positions

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
        chunk = self._file.read(self._chunk_size)
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
            # Rule 3: the last line has no newline; it is a record all the same.
            tail = self._tail
            last_line = self._decode(tail, tail_start)
            self._block_start = tail_start
            self._raw, self._cut, self._lines, self._next, self._tail = tail, len(tail), [last_line], 0, b""
            return True
        self._positions[self._splits[self._current]] = tail_start
        self._file.close()
        self._file = None
        self._current += 1
        self._raw, self._cut, self._lines, self._next = b"", 0, [], 0
        return True

    def _open(self, path: str) -> None:
        position = self._positions[path]
        file = open(path, "rb")
        try:
            size = os.fstat(file.fileno()).st_size
            if position > size:
                raise FileChangedError(
                    f"{path}: resume position {position} is beyond the end of the file ({size} bytes); "
                    "the file changed since the checkpoint"
                )
            if 0 < position < size:
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
        self._block_start = position
        self._raw, self._cut, self._lines, self._next, self._tail = b"", 0, [], 0, b""

    def _decode(self, data: bytes | memoryview, offset: int) -> str:
        try:
            return str(data, self._encoding)
        except UnicodeDecodeError as error:
            raise FileDecodeError(
                self._splits[self._current], offset + error.start, self._encoding, error.reason
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
