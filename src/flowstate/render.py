"""Every table and line that a ``flowstate`` command prints for people, rendered here with rich.

Rules:

1. A table is rendered by ``table``: a header row, then one row per item; columns are two spaces
   apart, numeric columns right-aligned, no borders and no trailing blanks, so that a line splits
   into its cells on white space (cells may hold spaces, e.g. ``1.5 KiB``) and stays the same on a
   terminal, in a pipe and in a test.
2. Functions here take plain values (storage listings, reports, dictionaries) and
   return text without a final newline; they read no files, clocks or sockets.
3. ``flowstate checkpoints list``: one line per checkpoint, oldest first. Columns: id; status;
   completion time (ISO-8601 to the second, in local time unless a zone is given); bytes on disk of
   the checkpoint's own directory, in binary units; duration (trigger to completion) in
   milliseconds; ``yes`` for a final checkpoint; and, when any checkpoint is incomplete or corrupt,
   the reason. Optional groups of columns appear when some checkpoint has their values:
   ``SYNC/ASYNC`` after DURATION (the longest synchronous and asynchronous part of a task's
   snapshot, in milliseconds, one decimal below 10 ms); ``ALIGNMENT`` and ``IN-FLIGHT`` (the longest
   alignment, the in-flight bytes persisted); ``WRITTEN`` and ``FULL`` (the bytes uploaded for the
   checkpoint and the size of the whole state it references, three significant digits from 100
   on). A value that is not known shows as ``-``, except FINAL, which is then empty. A summary line
   follows the table. A table of completed incremental checkpoints fits in 100 columns.
4. The progress line of a running job is the runner's (``flowstate.runner.status.progress_line``): the
   library prints it too, under ``fs.run(..., progress=True)``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowstate.storage.base import CheckpointInfo
from flowstate.storage.listing import format_size, format_size_short, format_time

if TYPE_CHECKING:
    from flowstate.storage.verify import VerifyReport

_WIDTH = 10_000
"""Wide enough that rich never wraps a row: a table is as wide as its cells."""


def _console(buffer: io.StringIO) -> Console:
    return Console(file=buffer, width=_WIDTH, color_system=None, force_terminal=False, highlight=False,
                   markup=False, emoji=False, soft_wrap=False, legacy_windows=False)


def _text(renderable: Any) -> str:
    buffer = io.StringIO()
    _console(buffer).print(renderable, end="")
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").split("\n"))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[str] = (),
          indent: int = 0) -> str:
    """Rule 1: ``headers`` over ``rows``; the columns named in ``right`` are right-aligned."""
    aligned = set(right)
    grid = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), header_style=None)
    for header in headers:
        grid.add_column(header, justify="right" if header in aligned else "left", no_wrap=True)
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))
    text = _text(grid)
    return "\n".join(" " * indent + line for line in text.split("\n")) if indent else text


# ---- flowstate checkpoints list (rule 3) -------------------------------------------------------------

_HEADERS = ("ID", "STATUS", "COMPLETED AT", "SIZE", "DURATION", "FINAL", "REASON")
_SNAPSHOT = ("SYNC/ASYNC",)
_METRICS = ("ALIGNMENT", "IN-FLIGHT")
_SIZES = ("WRITTEN", "FULL")
_RIGHT_ALIGNED = frozenset({"ID", "SIZE", "DURATION", *_SNAPSHOT, *_METRICS, *_SIZES})


def _row(info: CheckpointInfo, tz: tzinfo | None) -> tuple[str, ...]:
    metadata = info.metadata
    reason = " ".join((info.reason or "").split())  # one line, whatever the reason holds
    return (
        str(info.checkpoint_id),
        info.status,
        format_time(metadata.completion_time, tz) if metadata else "-",
        format_size(info.bytes_on_disk),
        f"{round(metadata.duration * 1000)} ms" if metadata else "-",
        "yes" if metadata and metadata.final else "",
        reason,
    )


def _milliseconds(seconds: float) -> str:
    milliseconds = seconds * 1000
    return f"{milliseconds:.1f}" if milliseconds < 10 else f"{milliseconds:.0f}"


def _snapshot(info: CheckpointInfo) -> tuple[str] | None:
    metadata = info.metadata
    if metadata is None or not (metadata.max_sync_seconds or metadata.max_async_seconds):
        return None
    return (f"{_milliseconds(metadata.max_sync_seconds)}/{_milliseconds(metadata.max_async_seconds)} ms",)


def _metrics(info: CheckpointInfo) -> tuple[str, str] | None:
    tasks = info.metadata.tasks if info.metadata else ()
    alignment = max((t.alignment_seconds for t in tasks), default=0.0)
    in_flight = sum(t.channel_state_bytes for t in tasks)
    if not alignment and not in_flight:
        return None
    return f"{alignment * 1000:.1f} ms", format_size(in_flight)


def _sizes(info: CheckpointInfo) -> tuple[str, str] | None:
    metadata = info.metadata
    if metadata is None or not (metadata.bytes_written or metadata.full_size):
        return None
    return format_size_short(metadata.bytes_written), format_size_short(metadata.full_size)


def _summary(infos: list[CheckpointInfo]) -> str:
    completed = [info.checkpoint_id for info in infos if info.status == "completed"]
    parts = [f"{len(completed)} completed" + (f" (newest: {max(completed)})" if completed else "")]
    others: dict[str, int] = {}
    for info in infos:
        if info.status != "completed":
            others[info.status] = others.get(info.status, 0) + 1
    parts.extend(f"{count} {status}" for status, count in others.items())
    return ", ".join(parts)


def checkpoint_table(infos: list[CheckpointInfo], *, tz: tzinfo | None = None) -> str:
    """Rule 3 for ``infos`` (in the order given), and a summary line.

    ``tz`` is the zone of the completion times; ``None`` means the local zone of the machine.
    """
    if not infos:
        return "no checkpoints"
    rows = [_row(info, tz) for info in infos]
    headers: tuple[str, ...] = _HEADERS if any(row[-1] for row in rows) else _HEADERS[:-1]
    rows = [row[: len(headers)] for row in rows]
    at = _HEADERS.index("DURATION") + 1
    for group, cells_of in ((_SNAPSHOT, _snapshot), (_METRICS, _metrics), (_SIZES, _sizes)):
        values = [cells_of(info) for info in infos]
        if all(v is None for v in values):
            continue
        headers = headers[:at] + group + headers[at:]
        rows = [
            row[:at] + (v or ("-",) * len(group)) + row[at:]
            for row, v in zip(rows, values, strict=True)
        ]
        at += len(group)
    return table(headers, rows, right=_RIGHT_ALIGNED) + "\n" + _summary(infos)


# ---- flowstate checkpoints verify --------------------------------------------------------------------


def verify_report(report: VerifyReport) -> str:
    """The text of ``flowstate checkpoints verify``: a line per checkpoint, the totals, every
    problem, and a verdict."""
    from flowstate.storage.verify import age

    lines = [f"checkpoint storage {report.location}"]
    if report.checkpoints:
        lines.append(table(("ID", "STATUS", "FILES", "REFERENCED"), [
            (
                str(c.checkpoint_id),
                c.status + (" (savepoint)" if c.savepoint else ""),
                str(c.files) if c.files else "-",
                format_size(c.referenced_bytes) if c.files else "-",
            )
            for c in report.checkpoints
        ], right=("ID", "FILES", "REFERENCED"), indent=2))
    else:
        lines.append("  no checkpoints")
    lines.append(
        f"shared files: {report.shared_files} ({format_size(report.shared_bytes)}); "
        f"stored in all: {format_size(report.total_bytes)}"
    )
    lines.append(
        f"orphans: {len(report.orphans)} ({format_size(sum(f.size for f in report.orphans))}) older "
        f"than the grace period of {age(report.grace_seconds)}, {len(report.young_orphans)} "
        f"({format_size(sum(f.size for f in report.young_orphans))}) younger"
    )
    lines.extend(report.notes)
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        width = max(len(p.kind) for p in report.problems)
        lines.extend(f"  {p.kind.ljust(width)}  {' '.join(p.message.split())}" for p in report.problems)
        lines.append("FAILED")
    else:
        lines.append("OK: every referenced file verifies" + (
            ", no old orphans" + (", within retention" if report.retained is not None else "")
        ))
    return "\n".join(lines)


# ---- flowstate status, postgres-slots ----------------------------------------------------------------


def status_lines(status: Mapping[str, Any]) -> str:
    """``key: value`` for each entry of a job's status, keys sorted, values as JSON."""
    return "\n".join(f"{key}: {json.dumps(status[key])}" for key in sorted(status))


def slot_table(slots: Iterable[Mapping[str, Any]]) -> str:
    """The replication slots of ``flowstate postgres-slots``."""
    return table(("SLOT", "PLUGIN", "ACTIVE", "CONFIRMED", "WAL HELD"), [
        (str(s["slot"]), str(s["plugin"]), "yes" if s["active"] else "no", str(s["confirmed"] or "-"),
         f"{s['retained_bytes'] or 0:,}")
        for s in slots
    ], right=("WAL HELD",))
