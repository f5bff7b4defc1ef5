"""Rule 8 of ``flowstate.connectors.postgres_cdc`` as pure functions: after a restore in the middle
of the initial snapshot, which change of the stream is kept, dropped or cut to the half that the
rows read do not hold yet."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

Segment = tuple[int, tuple[Any, ...] | None, int]
"""Rows of the snapshot read as of one consistent point: ``(table index, key, lsn)`` covers every row
after ``key`` (``None``: from the start of the table) of that table and of the tables after it, up to
the next segment's start; they were read as they stood at ``lsn`` (rule 8)."""


class Fate(enum.StrEnum):
    """What becomes of a change committed before the newest snapshot segment's point (rule 8)."""

    KEEP = "keep"
    """Neither of its rows was read with it applied: emitted as it is."""
    DROP = "drop"
    """Every row it touches was read with it applied."""
    AS_DELETE = "as_delete"
    """An update whose new row was read already but whose old row was read before it: its old key
    goes."""
    AS_INSERT = "as_insert"
    """An update whose old row was never read (read as of after it) but whose new row must arrive."""


def fate(op: str, commit_lsn: int, before_point: int | None, after_point: int | None) -> Fate:
    """The fate of one change: ``before_point``/``after_point`` are the consistent points of the
    segments holding its old and new key (``None`` where the operation has no such row). A row's
    segment reflects the change iff the change committed before the segment's point."""
    before_due = before_point is not None and commit_lsn >= before_point
    after_due = after_point is not None and commit_lsn >= after_point
    match op:
        case "insert":
            return Fate.KEEP if after_due else Fate.DROP
        case "delete":
            return Fate.KEEP if before_due else Fate.DROP
        case "update":
            if before_due and after_due:
                return Fate.KEEP
            if before_due:
                return Fate.AS_DELETE
            return Fate.AS_INSERT if after_due else Fate.DROP
    raise ValueError(f"not an operation of a change: {op!r}")


def segment_point(segments: Sequence[Segment], table: int, key: tuple[Any, ...],
                  greater: Callable[[int, tuple[Any, ...], tuple[Any, ...]], bool]) -> int:
    """The consistent point of the segment that read row ``key`` of table number ``table``;
    ``greater(table, a, b)`` compares two keys as the server orders them."""
    for start_table, start_key, point in reversed(segments):
        if table > start_table or (table == start_table and (start_key is None or greater(table, key, start_key))):
            return point
    raise ValueError(f"no snapshot segment holds row {key!r} of table {table}")
