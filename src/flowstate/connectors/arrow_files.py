"""Sources of record batches (``flowstate.arrow``): an in-memory Arrow table, or Parquet files read
row group by row group. Both need ``flowstate[arrow]``; ``Dataflow.source`` gives an ``ArrowStream``
of them (their ``record_batches`` is true).

Rules:

1. A split is a contiguous range of rows: ``TableSource`` cuts its table into ``splits`` ranges
   (``"rows-0"`` …), ``ParquetSource`` has one split per row group of every file (``"<path>#<g>"``,
   files in sorted order). Subtask ``i`` of ``p`` reads ``splits()[i::p]`` (``flowstate.connectors.base``).
2. The position of a split is the row offset, within the split, of the **next** row to read (0 before
   anything was read). A position is independent of ``batch_rows``: a restore with another batch size
   reads the same rows.
3. A poll returns the next ``batch_rows`` rows (fewer at the end of a split) of the reader's first
   unfinished split as record batches; a reader reads its splits one after the other. Replayable: a
   reader built from a snapshot reads exactly what followed it.
4. ``ParquetSource`` lists the row groups when it is asked for its splits, and refuses to resume in a
   file whose row groups changed (their number and row counts are checked against the positions'
   splits when a reader opens them).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

from flowstate.columnar import require_pyarrow

DEFAULT_BATCH_ROWS = 65_536


def _check_batch_rows(owner: str, batch_rows: int) -> None:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"{owner}: batch_rows must be a positive int, got {batch_rows!r}")


def _position(owner: str, split: str, position: Any, rows: int) -> int:
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= rows:
        raise ValueError(f"{owner}: position of {split!r} must be an int between 0 and {rows}, got {position!r}")
    return position


class TableSource:
    """The rows of a ``pyarrow.Table`` (or record batch) in ``splits`` contiguous ranges (rules 1-3)."""

    record_batches = True

    def __init__(self, table: Any, *, splits: int = 1, batch_rows: int = DEFAULT_BATCH_ROWS,
                 name: str = "table") -> None:
        pa = require_pyarrow("TableSource")
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise TypeError(f"TableSource: expected a pyarrow.Table, got {type(table).__name__}")
        if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
            raise ValueError(f"TableSource: splits must be a positive int, got {splits!r}")
        _check_batch_rows("TableSource", batch_rows)
        self.table = table
        self._splits = splits
        self.batch_rows = batch_rows
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return [f"rows-{k}" for k in range(self._splits)]

    def _range(self, split: str) -> tuple[int, int]:
        suffix = split.removeprefix("rows-")
        if not suffix.isdigit() or int(suffix) >= self._splits:
            raise ValueError(f"TableSource {self._name!r}: unknown split {split!r}")
        k, n = int(suffix), self.table.num_rows
        return k * n // self._splits, (k + 1) * n // self._splits

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> RowRangeReader:
        resume = resume_state or {}
        ranges = []
        for split in splits:
            start, stop = self._range(split)
            ranges.append((split, start, stop, _position(f"TableSource {self._name!r}", split,
                                                         resume.get(split, 0), stop - start)))
        return RowRangeReader(lambda split, start, stop: self.table.slice(start, stop - start), ranges,
                              self.batch_rows)


class ParquetSource:
    """Parquet files (a path, a glob or a list of paths) read row group by row group (rules 1-4);
    ``columns`` reads only those."""

    record_batches = True

    def __init__(self, paths: str | Sequence[str], *, columns: Sequence[str] | None = None,
                 batch_rows: int = DEFAULT_BATCH_ROWS, name: str = "parquet") -> None:
        require_pyarrow("ParquetSource")
        _check_batch_rows("ParquetSource", batch_rows)
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.columns = list(columns) if columns is not None else None
        self.batch_rows = batch_rows
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def files(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.paths:
            matches = glob.glob(pattern) if glob.has_magic(pattern) else [pattern]
            found.update(os.path.abspath(m) for m in matches)
        if not found:
            raise FileNotFoundError(f"ParquetSource {self._name!r}: no file matches {self.paths!r}")
        return sorted(found)

    def splits(self) -> list[str]:
        import pyarrow.parquet as pq

        out: list[str] = []
        for path in self.files():
            groups = pq.ParquetFile(path).metadata.num_row_groups
            out.extend(f"{path}#{g}" for g in range(groups))
        return out

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> RowRangeReader:
        import pyarrow.parquet as pq

        resume = resume_state or {}
        ranges = []
        for split in splits:
            path, _, group = split.rpartition("#")
            metadata = pq.ParquetFile(path).metadata
            if not group.isdigit() or int(group) >= metadata.num_row_groups:
                raise ValueError(f"ParquetSource {self._name!r}: {path} has no row group {group!r} any more "
                                 "(the file changed since the checkpoint)")
            rows = metadata.row_group(int(group)).num_rows
            ranges.append((split, 0, rows, _position(f"ParquetSource {self._name!r}", split,
                                                     resume.get(split, 0), rows)))
        columns = self.columns

        def read(split: str, start: int, stop: int) -> Any:
            path, _, group = split.rpartition("#")
            return pq.ParquetFile(path).read_row_group(int(group), columns=columns)

        return RowRangeReader(read, ranges, self.batch_rows)


class RowRangeReader:
    """Reads its splits' row ranges in order (rule 3). All state is the next row offset of each split;
    ``open(split, start, stop)`` gives the table of a split's rows."""

    def __init__(self, open: Any, ranges: list[tuple[str, int, int, int]], batch_rows: int) -> None:
        self._open = open
        self._ranges = ranges
        self._positions = {split: position for split, _, _, position in ranges}
        self._batch_rows = batch_rows
        self._current: tuple[str, Any] | None = None

    def poll(self, max_records: int) -> list[Any] | None:
        for split, start, stop, _ in self._ranges:
            position = self._positions[split]
            if position >= stop - start:
                continue
            if self._current is None or self._current[0] != split:
                self._current = (split, self._open(split, start, stop))
            table = self._current[1]
            rows = min(self._batch_rows, stop - start - position)
            batches = table.slice(position, rows).to_batches()
            self._positions[split] = position + rows
            if self._positions[split] >= stop - start:
                self._current = None
            return batches
        return None

    def snapshot(self) -> dict[str, Any]:
        return dict(self._positions)

    def progress(self) -> tuple[int, int] | None:
        read = sum(self._positions.values())
        return read, sum(stop - start for _, start, stop, _ in self._ranges)

    def close(self) -> None:
        self._current = None
