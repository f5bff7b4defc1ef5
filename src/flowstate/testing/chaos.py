"""The chaos runner: kill a job again and again, and prove that what it committed is what a run
without failures commits.

Every run is a process of its own (``python -m flowstate.testing._child``) whose ``FileSink`` outputs
and checkpoints go to the directory of its *job*: a job is one sequence of runs, killed and started
again, until one run completes. Per mode, in this order:

Step 1: the **reference**: one run without failure, from scratch. Its committed output (the multiset
        of lines of every ``FileSink``) is what every job must commit; its duration scales the random
        kill delays. Every failpoint of ``flowstate.failpoints.KNOWN`` counts its hits in it (action
        ``kill%0``, which never fires): a failpoint with no hit is not reached from scratch.
Step 2: **kills at random moments**: chains of jobs whose runs get SIGKILL from outside after a random
        delay (early in start-up or restore, anywhere, or just after a checkpoint completed), at most
        ``max_kills_per_job`` per job, then a last run to completion. These runs count failpoint hits
        too; a run that restored a checkpoint and completed tells which failpoints only a restored
        run reaches.
Step 3: **kills at failpoints**: for each failpoint of the selection that step 1 or 2 reached, jobs
        in which one run kills itself there (``FLOWSTATE_FAILPOINTS=name=kill@N``, the Nth hit drawn
        at random from the hits of a reference run), then runs again to completion. A failpoint only a
        restored run reaches gets a kill just after the job's first checkpoint first. A failpoint
        reached in neither step is reported as *not reached* (it needs a feature this mode or job
        lacks, e.g. alignment in ``at_least_once``).

What is checked:

- after every kill, the next run that decides its restore point restores the newest checkpoint
  completed before the kill (``restoring from checkpoint N`` on its stderr), and a kill after a
  completed checkpoint must therefore restore an id ≥ 1;
- after every run, each oracle's checkpoint check (``flowstate.testing.oracles``);
- after every job, its committed output against the reference, as multisets: **lost** (in the
  reference, missing), **duplicated** (in the reference, more often), **unexpected** (not in the
  reference at all), and each oracle's output check;
- the references of all modes are equal: a job whose output depends on timing cannot be checked.

Exactly-once modes (``exactly_once``, ``unaligned``, ``stop_the_world``) allow no difference at all.
``at_least_once`` allows no lost record; duplicates and unexpected records (a replayed record counted
again by keyed state, e.g. ``(word, n + 1)``) are counted, not failures.

The runner needs a job whose committed output is deterministic as a multiset, with bounded input,
and long enough for a few checkpoints at the chosen interval: a mode in which no kill came after a
completed checkpoint is reported as a failure, since it proved nothing about recovery.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from flowstate import failpoints as fpn
from flowstate.clock import Clock, SystemClock
from flowstate.config import Mode, parse_duration
from flowstate.errors import ConfigError
from flowstate.testing.oracles import EXACTLY_ONCE_MODES, Oracle

RANDOM = "random moments"
"""The ``where`` of kills at random moments."""
KILLED = -signal.SIGKILL
RESTORING = re.compile(r"restoring from checkpoint (\d+)")
FROM_SCRATCH = "no completed checkpoint to restore from"
_CHECKPOINT_DIR = re.compile(r"chk-([0-9]+)")
_TRIES_PER_KILL = 3
"""Runs a failpoint kill may take: a run can reach a failpoint fewer times than the reference did."""
_POLL = 0.005


# ---- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """What to run and how hard.

    ``job`` is what ``flowstate run`` takes (``FILE.py``, ``FILE.py:ATTR``, ``module:ATTR``), resolved
    from the current directory. ``kills`` counts kills at random moments per mode;
    ``failpoint_kills`` counts kills at each reachable failpoint per mode. ``failpoints`` selects
    failpoints by name (``None``: every known one; ``()``: none).
    """

    job: str
    modes: tuple[str, ...] = ("exactly_once",)
    kills: int = 10
    failpoint_kills: int = 2
    failpoints: tuple[str, ...] | None = None
    seed: int = 0
    checkpoint_interval: float | str = "100ms"
    retained: int = 1
    batch_size: int | None = None
    """Records per batch in every run (None: the engine's default). Small batches put more barriers
    between batches, and more kills between a batch and the next."""
    run_timeout: float | str = 120.0
    max_kills_per_job: int = 3
    workers: int = 1
    oracles: tuple[Oracle, ...] = ()

    def __post_init__(self) -> None:
        if not self.modes:
            raise ConfigError("chaos: give at least one mode")
        for mode in self.modes:
            if not Mode.parse(mode).checkpoints:
                raise ConfigError("chaos: mode none takes no checkpoints, so there is no recovery to test")
        if len(set(map(Mode.parse, self.modes))) != len(self.modes):
            raise ConfigError(f"chaos: a mode is given twice in {list(self.modes)}")
        for name, value in (("kills", self.kills), ("failpoint_kills", self.failpoint_kills)):
            if value < 0:
                raise ConfigError(f"chaos: {name} must be ≥ 0, got {value}")
        for name, value in (("max_kills_per_job", self.max_kills_per_job), ("workers", self.workers),
                            ("retained", self.retained),
                            ("batch_size", 1 if self.batch_size is None else self.batch_size)):
            if value < 1:
                raise ConfigError(f"chaos: {name} must be ≥ 1, got {value}")
        unknown = sorted(set(self.failpoints or ()) - fpn.KNOWN)
        if unknown:
            raise ConfigError(f"chaos: unknown failpoints {', '.join(unknown)}; known: {', '.join(sorted(fpn.KNOWN))}")
        parse_duration(self.checkpoint_interval, what="checkpoint interval")
        if parse_duration(self.run_timeout, what="run timeout") <= 0:
            raise ConfigError("chaos: the run timeout must be positive")

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(Mode.parse(m).value for m in self.modes)

    @property
    def selected_failpoints(self) -> list[str]:
        return sorted(fpn.KNOWN if self.failpoints is None else self.failpoints)


def parse_failpoint_selection(text: str) -> tuple[str, ...] | None:
    """``all`` → ``None`` (every known failpoint), ``none`` → ``()``, else a comma list of names."""
    text = text.strip()
    if text == "all":
        return None
    if text == "none":
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


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
        """The per-mode, per-failpoint table, the totals, the problems and the verdict."""
        header = ("mode", "kills at", "kills", "after chk", "restored from", "records", "lost", "dup", "unexp", "result")
        rows = [header]
        for s in self.scenarios:
            if not s.reached:
                rows.append((s.mode, s.where, "-", "-", "-", "-", "-", "-", "-", "not reached"))
                continue
            where = s.where + (f" (+{s.kills_before} before)" if s.kills_before else "")
            rows.append((s.mode, where, str(s.kills), str(s.kills_after_checkpoint), _ids(s.restored_from),
                         f"{s.records:,}", str(s.lost), str(s.duplicated), str(s.unexpected), s.status))
        rows.append(("total", "", str(self.kills), str(self.total("kills_after_checkpoint")), "",
                     f"{self.total('records'):,}", str(self.total("lost")), str(self.total("duplicated")),
                     str(self.total("unexpected")), "ok" if self.ok else "FAILED"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        right = {2, 3, 5, 6, 7, 8}
        lines = [f"flowstate chaos {self.job} · modes {', '.join(self.modes)} · seed {self.seed}", ""]
        for k, row in enumerate(rows):
            if k == len(rows) - 1:
                lines.append("  ".join("-" * w for w in widths))
            lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        problems = self.all_problems()
        if problems:
            lines += ["", f"{len(problems)} problem(s):"] + [f"  - {p}" for p in problems[:50]]
            if len(problems) > 50:
                lines.append(f"  … and {len(problems) - 50} more")
        lines.append("")
        lines.append(self.verdict())
        if self.work_dir is not None:
            lines.append(f"run directories: {self.work_dir}")
        return "\n".join(lines)

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


def _ids(ids: Sequence[int], shown: int = 8) -> str:
    if not ids:
        return "-"
    text = " ".join(map(str, ids[:shown]))
    return text + (f" …+{len(ids) - shown}" if len(ids) > shown else "")


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


# ---- one job: a sequence of runs in its own directories -------------------------------------------


def latest_completed_checkpoint(checkpoint_dir: Path) -> int:
    """The highest id of a ``chk-N`` directory holding ``_metadata`` (0: none)."""
    best = 0
    try:
        entries = list(os.scandir(checkpoint_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _CHECKPOINT_DIR.fullmatch(entry.name)
        if match and int(match[1]) > best and os.path.exists(os.path.join(entry.path, "_metadata")):
            best = int(match[1])
    return best


def committed_output(directory: Path) -> Counter[str]:
    """The lines of the committed files of a ``FileSink`` directory: files whose name does not start
    with '.'; in-progress and pending files are hidden."""
    lines: Counter[str] = Counter()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return lines
    for name in names:
        if name.startswith("."):
            continue
        with open(directory / name, encoding="utf-8", errors="surrogateescape") as f:
            lines.update(line.rstrip("\n") for line in f)
    return lines


@dataclass(frozen=True, slots=True)
class _Outcome:
    code: int
    killed_by_runner: bool
    timed_out: bool
    restore: int | None
    """The checkpoint the run restored from (0: from scratch); None if it died before deciding."""
    report: dict[str, Any] | None
    stderr: str


class _Job:
    """One job: its directories, its runs, and the bookkeeping of the kills it suffered."""

    def __init__(self, runner: _ModeRunner, name: str, result: ScenarioResult) -> None:
        self.runner = runner
        self.root = runner.root / name
        self.root.mkdir(parents=True)
        self.result = result
        self.runs = 0
        self.expected_restore: int | None = None
        self.failed = False
        result.jobs += 1

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def chk(self) -> Path:
        return self.root / "chk"

    def problem(self, text: str) -> None:
        self.result.problems.append(f"{self.root.name}: {text}")

    # ---- running --------------------------------------------------------------------------------

    def run(self, failpoints: str | None = None, *, kill_after: float | None = None,
            kill_after_checkpoint: float | None = None) -> _Outcome:
        """One run. ``kill_after``: SIGKILL after that many seconds; ``kill_after_checkpoint``: that
        many seconds after a checkpoint newer than the ones on disk completed."""
        self.runs += 1
        config = self.runner.config
        report = self.root / f"run-{self.runs}.json"
        stderr_path = self.root / f"run-{self.runs}.stderr"
        command = [sys.executable, "-m", "flowstate.testing._child", config.job, "--out", str(self.out),
                   "--checkpoint-dir", str(self.chk), "--mode", self.runner.mode,
                   "--interval", str(config.checkpoint_interval), "--retained", str(config.retained),
                   "--report", str(report)]
        if config.batch_size is not None:
            command += ["--batch-size", str(config.batch_size)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
        if failpoints:
            env["FLOWSTATE_FAILPOINTS"] = failpoints
        before = latest_completed_checkpoint(self.chk)
        timeout = parse_duration(config.run_timeout)
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=stderr, env=env)
        killed = timed_out = False
        try:
            clock = self.runner.clock
            started = clock.monotonic()
            delay = kill_after
            if kill_after_checkpoint is not None:
                while process.poll() is None and latest_completed_checkpoint(self.chk) <= before:
                    if clock.monotonic() - started > timeout:
                        break
                    clock.sleep(_POLL)
                delay = kill_after_checkpoint
            if delay is not None and process.poll() is None:
                try:
                    process.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    killed = True
            try:
                process.wait(timeout=max(0.0, timeout - (clock.monotonic() - started)))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                timed_out = True
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        text = stderr_path.read_text(errors="replace")
        restore: int | None = None
        if (found := RESTORING.search(text)) is not None:
            restore = int(found[1])
        elif FROM_SCRATCH in text:
            restore = 0
        payload = json.loads(report.read_text()) if process.returncode == 0 and report.exists() else None
        outcome = _Outcome(process.returncode, killed, timed_out, restore, payload, text)
        self._account(outcome)
        return outcome

    def _account(self, outcome: _Outcome) -> None:
        result = self.result
        if outcome.restore is not None and self.expected_restore is not None:
            if outcome.restore != self.expected_restore:
                self.problem(f"run {self.runs} restored from checkpoint {outcome.restore}, but checkpoint "
                             f"{self.expected_restore} was the newest completed one when the last run was killed")
            result.restored_from.append(outcome.restore)
            self.expected_restore = None
        if outcome.timed_out:
            self.failed = True
            self.problem(f"run {self.runs} did not finish within {parse_duration(self.runner.config.run_timeout):.0f} s "
                         f"and was killed; stderr: {_tail(outcome.stderr)}")
        elif outcome.code == KILLED:
            latest = latest_completed_checkpoint(self.chk)
            result.kills_after_checkpoint += latest >= 1
            self.expected_restore = latest
        elif outcome.code == 0:
            if self.expected_restore is not None:
                self.problem(f"run {self.runs} completed without saying which checkpoint it restored")
                self.expected_restore = None
        else:
            self.failed = True
            self.problem(f"run {self.runs} exited with status {outcome.code}: {_tail(outcome.stderr)}")
        for oracle in self.runner.config.oracles:
            if oracle.check_checkpoints is not None:
                for problem in _call(oracle.check_checkpoints, self.chk, self.runner.mode):
                    self.problem(f"after run {self.runs}, {oracle.name} checkpoint check: {problem}")

    def complete(self, failpoints: str | None = None) -> _Outcome | None:
        """The last run of a job: without kills (``failpoints`` may only count hits), it must
        complete; then the committed output is compared. None when the job failed."""
        if self.failed:
            return None
        outcome = self.run(failpoints)
        if outcome.code == KILLED and not outcome.timed_out:
            self.failed = True
            self.problem(f"run {self.runs}, in which nothing was to fail, was killed")
        if self.failed:
            return None
        self.compare()
        return outcome

    def compare(self) -> None:
        runner = self.runner
        reference = runner.reference
        assert reference is not None
        result = self.result
        for uid, expected in sorted(reference.items()):
            actual = committed_output(self.out / uid)
            missing = expected - actual
            extra = actual - expected
            duplicated = sum(n for line, n in extra.items() if line in expected)
            unexpected = sum(n for line, n in extra.items() if line not in expected)
            result.records += expected.total()
            result.lost += missing.total()
            result.duplicated += duplicated
            result.unexpected += unexpected
            exactly_once = runner.mode in EXACTLY_ONCE_MODES
            if missing:
                self.problem(f"sink {uid}: {missing.total()} records lost, e.g. {_examples(missing)}")
            if exactly_once and duplicated:
                self.problem(f"sink {uid}: {duplicated} records duplicated, e.g. "
                             f"{_examples(Counter({k: n for k, n in extra.items() if k in expected}))}")
            if exactly_once and unexpected:
                self.problem(f"sink {uid}: {unexpected} unexpected records, e.g. "
                             f"{_examples(Counter({k: n for k, n in extra.items() if k not in expected}))}")
        directories = {uid: self.out / uid for uid in reference}
        for oracle in runner.config.oracles:
            if oracle.check_output is not None:
                for problem in _call(oracle.check_output, directories, runner.mode):
                    self.problem(f"{oracle.name} output check: {problem}")


def _call(check: Callable[..., list[str]], *args: Any) -> list[str]:
    """An oracle's problems; an oracle that raises is a problem too, not the end of the chaos run."""
    try:
        return list(check(*args))
    except Exception as exc:  # noqa: BLE001 - reported, see the docstring
        return [f"the check raised {type(exc).__name__}: {exc}"]


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def _examples(counter: Counter[str], k: int = 3) -> str:
    shown = [line if len(line) <= 80 else line[:77] + "..." for line in sorted(counter)[:k]]
    return ", ".join(shown)


# ---- one mode -------------------------------------------------------------------------------------


def _counting(names: Iterable[str]) -> str:
    """Failpoint actions that count every hit and never fire."""
    return ";".join(f"{name}=kill%0" for name in sorted(names))


class _ModeRunner:
    def __init__(self, config: ChaosConfig, mode: str, root: Path, progress: Progress | None, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.mode = mode
        self.root = root / mode
        self.progress = progress
        self.reference: dict[str, Counter[str]] | None = None
        self.reference_seconds = 0.0
        self.hits: dict[str, int] = {}
        self.restored_hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._jobs = 0

    def rng(self, *labels: object) -> random.Random:
        return random.Random("/".join(map(str, (self.config.seed, self.mode, *labels))))

    def _new_job(self, label: str, result: ScenarioResult) -> _Job:
        with self._lock:
            self._jobs += 1
            number = self._jobs
        return _Job(self, f"{number:03d}-{label}", result)

    def _report(self, result: ScenarioResult, kills: int) -> None:
        if self.progress is not None:
            self.progress.advance(kills, f"{self.mode} · {result.where}", bool(result.problems))

    # Step 1.
    def run_reference(self) -> str | None:
        """The reference run; returns why it failed, or None."""
        job = _Job(self, "reference", ScenarioResult(self.mode, "reference"))
        started = self.clock.monotonic()
        outcome = job.run(_counting(fpn.KNOWN))
        self.reference_seconds = self.clock.monotonic() - started
        if outcome.code == 2:
            errors = [line.removeprefix("flowstate: error: ") for line in outcome.stderr.splitlines()
                      if line.startswith("flowstate: error: ")]
            raise ConfigError(errors[-1] if errors else f"the job cannot run: {_tail(outcome.stderr)}")
        if outcome.code != 0 or outcome.report is None:
            return f"{self.mode}: the run without failures exited with status {outcome.code}: {_tail(outcome.stderr)}"
        self.hits = {name: int(outcome.report["hits"].get(name, 0)) for name in fpn.KNOWN}
        self.reference = {uid: committed_output(job.out / uid) for uid in outcome.report["sinks"]}
        if job.result.problems:
            return f"{self.mode}: the run without failures: {'; '.join(job.result.problems)}"
        return None

    # Step 2.
    def random_chain(self, index: int, target: int, first_after_checkpoint: bool) -> ScenarioResult:
        """Jobs killed at random moments until ``target`` kills, each job run to completion."""
        result = ScenarioResult(self.mode, RANDOM)
        rng = self.rng("random", index)
        seconds = max(self.reference_seconds, 0.2)
        kills = 0
        for _ in range(4 * target + 4):  # a bound, for a job too short to be killed: reported as few kills
            if kills >= target:
                break
            job = self._new_job(f"random-{index}", result)
            completed = False
            while not completed and kills < target and job.runs < self.config.max_kills_per_job and not job.failed:
                after_checkpoint = first_after_checkpoint and kills == 0
                draw = rng.random()
                if after_checkpoint or draw >= 0.65:
                    outcome = job.run(_counting(fpn.KNOWN), kill_after_checkpoint=rng.uniform(0.0, 0.1 * seconds))
                elif draw < 0.25:
                    outcome = job.run(_counting(fpn.KNOWN), kill_after=rng.uniform(0.02, 0.3 * seconds))
                else:
                    outcome = job.run(_counting(fpn.KNOWN), kill_after=rng.uniform(0.0, seconds))
                if outcome.code == KILLED and outcome.killed_by_runner:
                    kills += 1
                    result.kills += 1
                completed = outcome.code == 0
                self._learn(outcome)
            if job.failed:
                break
            if completed:
                job.compare()
                continue
            outcome = job.complete(_counting(fpn.KNOWN))
            if outcome is None:
                break
            self._learn(outcome)
        self._report(result, kills)
        return result

    def _learn(self, outcome: _Outcome) -> None:
        """Hits of a completed run that restored a checkpoint: what a restored run reaches."""
        if outcome.code != 0 or outcome.report is None or not outcome.restore:
            return
        with self._lock:
            for name, hits in outcome.report["hits"].items():
                self.restored_hits[name] = max(self.restored_hits.get(name, 0), int(hits))

    # Step 3.
    def failpoint_kill(self, name: str, index: int) -> ScenarioResult:
        """One kill at failpoint ``name`` (up to ``_TRIES_PER_KILL`` jobs), each job run to completion."""
        result = ScenarioResult(self.mode, name)
        rng = self.rng(name, index)
        from_scratch = self.hits.get(name, 0) > 0
        hits = self.hits.get(name, 0) if from_scratch else self.restored_hits.get(name, 0)
        seconds = max(self.reference_seconds, 0.2)
        for _ in range(_TRIES_PER_KILL):
            job = self._new_job(name.replace(".", "_"), result)
            if not from_scratch:
                primer = job.run(kill_after_checkpoint=rng.uniform(0.0, 0.05 * seconds))
                if primer.code == KILLED:
                    result.kills_before += 1
                if primer.code != KILLED or job.failed:
                    if not job.failed:
                        job.compare()
                        result.not_fired += 1
                    continue
            outcome = job.run(f"{name}=kill@{rng.randint(1, max(1, hits))}")
            if outcome.code == KILLED and not outcome.killed_by_runner and not outcome.timed_out:
                result.kills += 1
                job.complete()
                break
            if outcome.code == 0:
                result.not_fired += 1
                job.compare()
                hits = max(1, hits // 2)
                continue
            break  # the run failed otherwise: reported by the job
        self._report(result, result.all_kills)
        return result


# ---- all modes --------------------------------------------------------------------------------------


def run_chaos(config: ChaosConfig, work_dir: Path, *, progress: Progress | None = None,
              clock: Clock | None = None) -> ChaosReport:
    """Steps 1-3 of the module docstring for every mode of ``config``, in ``work_dir`` (created;
    kept as it is), with up to ``config.workers`` jobs at once. Raises ``ConfigError`` when the job
    cannot run at all (its file, its graph, its options); every other failure is in the report."""
    report = ChaosReport(config.job, config.mode_names, config.seed, work_dir=work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    runners = [_ModeRunner(config, mode, work_dir, progress, clock) for mode in config.mode_names]
    selected = config.selected_failpoints
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="chaos") as pool:
        # Step 1.
        if progress is not None:
            progress.phase("runs without failures")
        failures = list(pool.map(_ModeRunner.run_reference, runners))
        report.problems += [f for f in failures if f is not None]
        runners = [r for r, f in zip(runners, failures) if f is None]
        for runner in runners:
            assert runner.reference is not None
            report.reference_records[runner.mode] = sum(c.total() for c in runner.reference.values())
            report.reference_seconds[runner.mode] = round(runner.reference_seconds, 3)
            report.reference_hits[runner.mode] = dict(sorted(runner.hits.items()))
        if runners and any(r.reference != runners[0].reference for r in runners[1:]):
            differing = [r.mode for r in runners[1:] if r.reference != runners[0].reference]
            report.problems.append(
                f"runs without failures in {runners[0].mode} and in {', '.join(differing)} committed different "
                "output: the job's output depends on timing, so it cannot be compared after failures")
            return report

        # Step 2.
        chains: list[tuple[_ModeRunner, int, int, bool]] = []
        for runner in runners:
            needs_restored = any(runner.hits.get(name, 0) == 0 for name in selected) and config.failpoint_kills > 0
            kills = config.kills if config.kills > 0 else int(needs_restored)
            per_chain = config.max_kills_per_job
            for index in range(math.ceil(kills / per_chain)):
                chains.append((runner, index, min(per_chain, kills - index * per_chain), index == 0))
        if progress is not None:
            progress.plan(sum(target for _, _, target, _ in chains))
            progress.phase("kills at random moments")
        random_results = list(pool.map(lambda c: c[0].random_chain(c[1], c[2], c[3]), chains))

        # Step 3.
        kills: list[tuple[_ModeRunner, str, int]] = []
        for runner in runners:
            for name in selected:
                if runner.hits.get(name, 0) or runner.restored_hits.get(name, 0):
                    kills += [(runner, name, i) for i in range(config.failpoint_kills)]
        if progress is not None:
            # A failpoint only restored runs reach costs a kill before its own.
            progress.plan(sum(1 if runner.hits.get(name, 0) else 2 for runner, name, _ in kills))
            progress.phase("kills at failpoints")
        failpoint_results = list(pool.map(lambda k: k[0].failpoint_kill(k[1], k[2]), kills))

    for runner in runners:
        report.restored_hits[runner.mode] = dict(sorted(runner.restored_hits.items()))
        rows = [ScenarioResult(runner.mode, RANDOM)]
        for result, (chain_runner, *_rest) in zip(random_results, chains):
            if chain_runner is runner:
                rows[0].add(result)
        for name in selected:
            row = ScenarioResult(runner.mode, name)
            row.reached = bool(runner.hits.get(name, 0) or runner.restored_hits.get(name, 0))
            for result, (kill_runner, kill_name, _i) in zip(failpoint_results, kills):
                if kill_runner is runner and kill_name == name:
                    row.add(result)
            rows.append(row)
        if config.kills == 0 and rows[0].jobs == 0:
            rows = rows[1:]
        report.scenarios += rows
        killed = sum(r.all_kills for r in rows)
        if killed and not sum(r.kills_after_checkpoint for r in rows):
            report.problems.append(
                f"{runner.mode}: none of the {killed} kills came after a completed checkpoint, so no restore was "
                "tested: give the job more input or lower the checkpoint interval")
        elif not killed and (config.kills or (config.failpoint_kills and selected)):
            report.problems.append(f"{runner.mode}: no run was killed: the job ends before any kill lands")
    return report
