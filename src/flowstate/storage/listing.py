"""The text of ``flowstate checkpoints list DIR``: one aligned line per checkpoint, oldest first.

Columns: id; status; completion time (ISO-8601 to the second, in local time unless a zone is
given); bytes on disk of the checkpoint's own directory, in binary units; duration (trigger to
completion) in milliseconds; ``yes`` for a final checkpoint; and, when any checkpoint is incomplete
or corrupt, the reason. Optional groups of columns appear when some checkpoint has their values:

* ``SYNC/ASYNC`` after DURATION: the longest synchronous and the longest asynchronous part of a
  task's snapshot, in milliseconds (one decimal below 10 ms);
* ``ALIGNMENT`` and ``IN-FLIGHT``: the longest alignment, the in-flight bytes persisted (unaligned);
* ``WRITTEN`` and ``FULL``: the bytes the tasks uploaded for the checkpoint (incremental: state
  files and new shared files) and the size of the whole state it references, to three significant
  digits from 100 on (``123 MiB``).

A value that is not known (no readable metadata, or not reported) shows as ``-``, except FINAL,
which is then empty. A summary line follows the table. A table of completed incremental
checkpoints fits in 100 columns.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from flowstate.storage.base import CheckpointInfo

_HEADERS = ("ID", "STATUS", "COMPLETED AT", "SIZE", "DURATION", "FINAL", "REASON")
_SNAPSHOT = ("SYNC/ASYNC",)
_METRICS = ("ALIGNMENT", "IN-FLIGHT")
"""Shown after DURATION when some checkpoint has them: the longest time a task spent between the
checkpoint's first barrier and its snapshot, and the in-flight bytes persisted (unaligned)."""
_SIZES = ("WRITTEN", "FULL")
_RIGHT_ALIGNED = frozenset({"ID", "SIZE", "DURATION", *_SNAPSHOT, *_METRICS, *_SIZES})
_GAP = "  "


def format_size(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``20.0 MiB``, ``3.2 GiB`` (GiB is the largest unit)."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        # Compare the value as printed, so that 1048575 bytes is "1.0 MiB", not "1024.0 KiB".
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_size_short(size: int) -> str:
    """``format_size`` with three significant digits at most from 100 on: ``123 MiB``, ``12.3 MiB``."""
    text = format_size(size)
    number, unit = text.split(" ")
    return f"{float(number):.0f} {unit}" if "." in number and float(number) >= 100 else text


def format_time(timestamp: float, tz: tzinfo | None = None) -> str:
    """ISO-8601 to the second, with the UTC offset; local time when ``tz`` is ``None``."""
    try:
        # Without a zone, fromtimestamp gives naive local time; astimezone(None) adds its offset.
        return datetime.fromtimestamp(timestamp, tz).astimezone(tz).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)


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


def format_checkpoint_table(infos: list[CheckpointInfo], *, tz: tzinfo | None = None) -> str:
    """The table for ``infos`` (in the order given) and a summary line, without a final newline.

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
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = (
            cell.rjust(width) if header in _RIGHT_ALIGNED else cell.ljust(width)
            for header, cell, width in zip(headers, row, widths, strict=True)
        )
        lines.append(_GAP.join(cells).rstrip())
    lines.append(_summary(infos))
    return "\n".join(lines)
