"""What a chaos run found (per mode and place of the kills) and its progress on the terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from flowstate.clock import Clock, SystemClock
from flowstate.render import table
from flowstate.testing.oracles import EXACTLY_ONCE_MODES

# ---- results ----------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """The kills of one mode at one place (a failpoint, or random moments) and what they left."""

    mode: str
    where: str
    reached: bool = True
    kills: int = 0
    """Kills at ``where``."""
    kills_before: int = 0
    """Kills just after a first checkpoint that prepared a failpoint only restored runs reach."""
    kills_after_checkpoint: int = 0
    """Kills (of either kind) when a completed checkpoint existed: each must be restored from."""
    restored_from: list[int] = field(default_factory=list)
    """The checkpoint id restored after each kill (0: from scratch), in order."""
    not_fired: int = 0
    """Runs that completed before the failpoint's drawn hit."""
    jobs: int = 0
    resumed: int = 0
    """Completed runs that restored a checkpoint (id ≥ 1, with records before it) and whose sources
    read only the rest of the input."""
    records: int = 0
    """Records compared with the reference, over every completed job."""
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def all_kills(self) -> int:
        return self.kills + self.kills_before

    @property
    def status(self) -> str:
        if not self.reached:
            return "not reached"
        if self.problems:
            return "FAILED"
        if self.kills == 0:
            return "missed"
        return "ok"

    def add(self, other: ScenarioResult) -> None:
        self.kills += other.kills
        self.kills_before += other.kills_before
        self.kills_after_checkpoint += other.kills_after_checkpoint
        self.restored_from += other.restored_from
        self.not_fired += other.not_fired
        self.jobs += other.jobs
        self.resumed += other.resumed
        self.records += other.records
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.unexpected += other.unexpected
        self.problems += other.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "where": self.where, "status": self.status, "kills": self.kills,
            "kills_before": self.kills_before, "kills_after_checkpoint": self.kills_after_checkpoint,
            "restored_from": self.restored_from, "not_fired": self.not_fired, "jobs": self.jobs,
            "resumed": self.resumed,
            "records": self.records, "lost": self.lost, "duplicated": self.duplicated,
            "unexpected": self.unexpected, "problems": self.problems,
        }


@dataclass
class ChaosReport:
    """Everything a chaos run found. ``ok`` is the verdict; ``table()`` shows it."""

    job: str
    modes: tuple[str, ...]
    seed: int
    scenarios: list[ScenarioResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Problems that belong to no scenario (a failed reference, references that differ)."""
    reference_records: dict[str, int] = field(default_factory=dict)
    reference_seconds: dict[str, float] = field(default_factory=dict)
    reference_hits: dict[str, dict[str, int]] = field(default_factory=dict)
    """Mode → failpoint → hits in the reference run (from scratch)."""
    restored_hits: dict[str, dict[str, int]] = field(default_factory=dict)
    """Mode → failpoint → most hits in one completed run that restored a checkpoint."""
    work_dir: Path | None = None

    @property
    def kills(self) -> int:
        return sum(s.all_kills for s in self.scenarios)

    def total(self, what: str) -> int:
        return sum(getattr(s, what) for s in self.scenarios)

    def scenario(self, mode: str, where: str) -> ScenarioResult:
        for s in self.scenarios:
            if s.mode == mode and s.where == where:
                return s
        raise KeyError((mode, where))

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.status != "FAILED" for s in self.scenarios)

    def all_problems(self) -> list[str]:
        return self.problems + [f"{s.mode} / {s.where}: {p}" for s in self.scenarios for p in s.problems]

    def table(self) -> str:
        """The per-mode, per-failpoint table, the totals, the problems and the verdict
        (``chaos_table``)."""
        return chaos_table(self)

    def verdict(self) -> str:
        """One sentence: what survived, what was checked, what was found."""
        counts = (f"{self.kills} kills, {self.total('records'):,} records checked: {self.total('lost'):,} lost, "
                  f"{self.total('duplicated'):,} duplicated, {self.total('unexpected'):,} unexpected")
        if not self.ok:
            return f"DIFFERENCES FOUND after {counts}"
        if any(mode not in EXACTLY_ONCE_MODES for mode in self.modes):
            return (f"the guarantee of every mode held after {counts} (duplicated and unexpected records are "
                    "allowed in at_least_once only)")
        return f"exactly-once held after {counts}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job, "modes": list(self.modes), "seed": self.seed, "ok": self.ok, "kills": self.kills,
            "records": self.total("records"), "lost": self.total("lost"), "duplicated": self.total("duplicated"),
            "unexpected": self.total("unexpected"), "problems": self.problems,
            "scenarios": [s.to_dict() for s in self.scenarios],
            "reference": {m: {"records": self.reference_records.get(m), "seconds": self.reference_seconds.get(m),
                              "hits": self.reference_hits.get(m), "restored_hits": self.restored_hits.get(m)}
                          for m in self.modes},
            "work_dir": str(self.work_dir) if self.work_dir is not None else None,
        }


# ---- progress -------------------------------------------------------------------------------------


class Progress:
    """A progress bar on a terminal; on anything else, plain lines: one per phase, and one every
    ``every`` seconds at most while kills are being counted.

    Thread-safe: jobs report from the runner's worker threads."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, width: int = 24,
                 every: float = 5.0, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._width = width
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._failed = 0
        self._label = ""
        self._every = every
        self._started = self._clock.monotonic()
        self._printed = self._started

    def plan(self, kills: int) -> None:
        with self._lock:
            self._total += kills
            self._draw()

    def phase(self, label: str) -> None:
        with self._lock:
            self._label = label
            if self._tty:
                self._draw()
            else:
                print(f"chaos: {label}", file=self._stream, flush=True)

    def advance(self, kills: int, label: str, failed: bool) -> None:
        with self._lock:
            self._done += kills
            self._failed += failed
            self._label = label
            self._draw()

    def close(self) -> None:
        with self._lock:
            if self._tty:
                self._stream.write("\r\x1b[K")
                self._stream.flush()

    def _draw(self) -> None:
        total = max(self._total, self._done, 1)
        now = self._clock.monotonic()
        elapsed = now - self._started
        failed = f" · {self._failed} FAILED" if self._failed else ""
        if self._tty:
            filled = round(self._width * self._done / total)
            bar = "#" * filled + "-" * (self._width - filled)
            self._stream.write(f"\r\x1b[Kchaos [{bar}] {self._done}/{total} kills · {elapsed:.0f}s · {self._label}{failed}")
            self._stream.flush()
            return
        if now - self._printed >= self._every or self._done == total:
            self._printed = now
            print(f"chaos: {self._done}/{total} kills ({elapsed:.0f}s) · {self._label}{failed}",
                  file=self._stream, flush=True)


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
