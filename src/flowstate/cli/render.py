"""Every table and line that a ``flowstate`` command prints for people, rendered here with rich.

Rules:

1. A table is rendered by ``table``: a header row, then one row per item; columns are two spaces
   apart, numeric columns right-aligned, no borders and no trailing blanks, so that a line splits
   into its cells on white space (cells may hold spaces, e.g. ``1.5 KiB``) and stays the same on a
   terminal, in a pipe and in a test.
2. Functions here take plain values (storage listings, reports, dictionaries, ``JobProgress``) and
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
4. The progress line of a running job: ``[name] records · share of the input (a bar of 20) · rate ·
   checkpoints · restarts``, from a ``JobProgress`` value.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowstate.storage.base import CheckpointInfo
from flowstate.storage.listing import format_size, format_size_short, format_time

if TYPE_CHECKING:
    from flowstate.storage.verify import VerifyReport
    from flowstate.testing.chaos.report import ChaosReport

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
    headers = _HEADERS if any(row[-1] for row in rows) else _HEADERS[:-1]
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


# ---- flowstate chaos ----------------------------------------------------------------------------------

_CHAOS = ("mode", "kills at", "kills", "after chk", "restored from", "records", "lost", "dup", "unexp", "result")


def _ids(ids: Sequence[int], shown: int = 8) -> str:
    if not ids:
        return "-"
    text = " ".join(map(str, ids[:shown]))
    return text + (f" …+{len(ids) - shown}" if len(ids) > shown else "")


def chaos_table(report: ChaosReport) -> str:
    """The text of ``flowstate chaos``: a row per mode and place of the kills, the totals under a
    rule, the problems (at most 50) and the verdict."""
    rows: list[tuple[str, ...]] = []
    for s in report.scenarios:
        if not s.reached:
            rows.append((s.mode, s.where, "-", "-", "-", "-", "-", "-", "-", "not reached"))
            continue
        where = s.where + (f" (+{s.kills_before} before)" if s.kills_before else "")
        rows.append((s.mode, where, str(s.kills), str(s.kills_after_checkpoint), _ids(s.restored_from),
                     f"{s.records:,}", str(s.lost), str(s.duplicated), str(s.unexpected), s.status))
    total = ("total", "", str(report.kills), str(report.total("kills_after_checkpoint")), "",
             f"{report.total('records'):,}", str(report.total("lost")), str(report.total("duplicated")),
             str(report.total("unexpected")), "ok" if report.ok else "FAILED")
    rule = tuple("-" * max(len(row[i]) for row in (_CHAOS, *rows, total)) for i in range(len(_CHAOS)))
    lines = [f"flowstate chaos {report.job} · modes {', '.join(report.modes)} · seed {report.seed}", "",
             table(_CHAOS, [*rows, rule, total], right=("kills", "after chk", "records", "lost", "dup", "unexp"))]
    problems = report.all_problems()
    if problems:
        lines += ["", f"{len(problems)} problem(s):"] + [f"  - {p}" for p in problems[:50]]
        if len(problems) > 50:
            lines.append(f"  … and {len(problems) - 50} more")
    lines.append("")
    lines.append(report.verdict())
    if report.work_dir is not None:
        lines.append(f"run directories: {report.work_dir}")
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


# ---- the progress line of a running job (rule 4) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobProgress:
    """What the progress line of a running job shows."""

    job: str
    records: str
    """What was read, as ``JobResult.records_summary()`` says it."""
    rate: float
    """Records per second since the last line (on the final line: over the whole run)."""
    final: bool = False
    done: float | None = None
    """The share of a bounded input read so far, when every source knows its size."""
    checkpoints: int | None = None
    """Checkpoints completed; ``None`` for a job that takes none."""
    last_checkpoint: int | None = None
    last_checkpoint_seconds: float | None = None
    restarts: int = 0


_BAR_WIDTH = 20


def progress_line(progress: JobProgress) -> str:
    """Rule 4: ``[wordcount] 12,000 records · ━━━━━━━━━━╺━━━━━━━━━ 50% of the input · 9,800 rec/s ·
    checkpoints 3 completed (last #3 in 12 ms) · restarts 0``."""
    parts = [f"[{progress.job}] {progress.records}"]
    if progress.done is not None:
        filled = round(min(max(progress.done, 0.0), 1.0) * _BAR_WIDTH)
        parts.append(f"{'━' * filled}{'─' * (_BAR_WIDTH - filled)} {progress.done:.0%} of the input")
    parts.append(f"{progress.rate:,.0f} rec/s" + (" avg" if progress.final else ""))
    if progress.checkpoints is not None:
        took = (f" in {progress.last_checkpoint_seconds * 1000:.0f} ms"
                if progress.last_checkpoint_seconds is not None else "")
        parts.append(f"checkpoints {progress.checkpoints} completed"
                     + (f" (last #{progress.last_checkpoint}{took})" if progress.last_checkpoint else ""))
    parts.append(f"restarts {progress.restarts}")
    return " · ".join(parts)
