"""The runs of the chaos runner: one job (a sequence of runs in its own directories, killed and
started again) and one mode (its reference run, its chains of random kills, its kills at failpoints);
see Steps 1-3 of ``flowstate.testing.chaos``."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstate import failpoints as fpn
from flowstate.clock import Clock
from flowstate.config import parse_duration
from flowstate.errors import ConfigError
from flowstate.testing.chaos.config import (
    FROM_SCRATCH,
    JOB_ENV,
    KILLED,
    RANDOM,
    RESTORING,
    ChaosConfig,
)
from flowstate.testing.chaos.report import Progress, ScenarioResult
from flowstate.testing.oracles import EXACTLY_ONCE_MODES

_CHECKPOINT_DIR = re.compile(r"chk-([0-9]+)")
_TRIES_PER_KILL = 3
"""Runs a failpoint kill may take: a run can reach a failpoint fewer times than the reference did."""
_POLL = 0.005

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
        if config.state_backend != "heap":
            command += ["--state-backend", config.state_backend]
        if config.executor != "threads":
            command += ["--executor", config.executor]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
        env[JOB_ENV] = f"{self.runner.token}-{self.runner.mode}-{self.root.name}"
        if failpoints:
            env["FLOWSTATE_FAILPOINTS"] = failpoints
        if config.executor == "processes":
            env[fpn.KILL_ENV] = "session"
        before = latest_completed_checkpoint(self.chk)
        timeout = parse_duration(config.run_timeout)
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=stderr, env=env, start_new_session=config.executor == "processes")
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
            self._check_resumed(outcome)
        else:
            self.failed = True
            self.problem(f"run {self.runs} exited with status {outcome.code}: {_tail(outcome.stderr)}")
        for oracle in self.runner.config.oracles:
            if oracle.check_checkpoints is not None:
                for problem in _call(oracle.check_checkpoints, self.chk, self.runner.mode):
                    self.problem(f"after run {self.runs}, {oracle.name} checkpoint check: {problem}")

    def _check_resumed(self, outcome: _Outcome) -> None:
        """A completed run read the input exactly once, counting the records its sources had read up
        to the checkpoint it restored: one that read the whole input again after restoring records
        did not resume from the restored positions (a restart from scratch in disguise)."""
        report, expected = outcome.report, self.runner.input_records
        if report is None or expected is None:
            return
        read, before = report["records_read"][-1], report["records_restored"][-1]
        checkpoint = report["restored_from"][-1]
        if report["records_total"] != expected:
            self.problem(f"run {self.runs} restored checkpoint {checkpoint} holding {before} records and then read "
                         f"{read:,}: {report['records_total']} in total, not the {expected:,} records of the input")
        elif checkpoint is not None and checkpoint >= 1 and before:
            self.result.resumed += 1

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
        self.input_records: int | None = None
        """Records the sources read in the reference run: the whole input."""
        self.hits: dict[str, int] = {}
        self.restored_hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._jobs = 0
        self.token = uuid.uuid4().hex[:8]
        """Unique to this chaos run: part of every job's name (``JOB_ENV``)."""

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
        self.input_records = outcome.report["records_total"]
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
            final = job.complete(_counting(fpn.KNOWN))
            if final is None:
                break
            self._learn(final)
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
