"""Crash recovery of real processes: ``flowstate run`` is killed with SIGKILL, run again, and what it
committed is compared with a plain batch word count of the same input.

The job is a parallel word count (FileSource → flat_map(str.split) → key_by → a keyed counter with
value state emitting (word, n) → FileSink, parallelism 2). A correct result is every (word, n) for
n = 1..count(word):

- ``exactly_once``, ``unaligned`` and ``stop_the_world``: each of those records exactly once and nothing else;
- ``at_least_once``: each of those records at least once (a replay after a restore may count some
  words twice, so records with a larger n, and repeats, are allowed).

A restart from scratch also gives the right answer, so every test also proves that a run restored a
checkpoint with id ≥ 1 (the runner logs "restoring from checkpoint N" to stderr) and resumed from
it: the final line of a run that completes counts the lines read up to the restored checkpoint and
those read since, which must add up to the input, the latter fewer than the input.

The random kills hit the job as it runs by default: under the multi-process executor, a coordinator
process and two workers, all of which die with it. The kills at failpoints run the job on threads,
so that the point kills the whole job; ``test_worker_failover`` kills single workers instead.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MODES = ["exactly_once", "unaligned", "stop_the_world", "at_least_once"]
KILLS_PER_MODE = 20
RUN_TIMEOUT = 180.0
"""Seconds a run that should complete may take before the test gives up on it: a guard against a
hung run, not a measurement."""
KILLED = -signal.SIGKILL
RESTORING = re.compile(r"restoring from checkpoint (\d+)")
FINISHED = re.compile(r"finished: ([\d,]+) records (?:read|processed in total \(([\d,]+) up to checkpoint (\d+), "
                      r"([\d,]+) read since its restore\))")

JOB = '''\
import flowstate as fs


class Count(fs.KeyedProcessFunction):
    """Emits (word, how many times it has been seen so far)."""

    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


flow = fs.Dataflow("sigkill-wordcount", parallelism=2)
(flow.source(fs.FileSource({input!r}), uid="lines")
     .flat_map(str.split, uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.FileSink({output!r}), uid="counts"))
'''


# ---- the input and the batch reference -----------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    data: Path
    expected: Counter[tuple[str, int]]
    """Every (word, n) for n = 1..count(word), once: the batch result."""
    words: int
    lines: int
    """Records of the input (the source reads lines)."""


def write_text(directory: Path, *, lines: int, files: int, seed: int) -> None:
    """Lines of 3-12 words over a Zipf-like vocabulary: a few hot keys, many cold ones."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "do", "fu"]
    vocabulary = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(4000)})
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    directory.mkdir(parents=True)
    per_file = lines // files
    for f in range(files):
        text = (" ".join(rng.choices(vocabulary, weights, k=rng.randint(3, 12))) for _ in range(per_file))
        (directory / f"part-{f}.txt").write_text("".join(line + "\n" for line in text))


def batch_word_count(directory: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in sorted(directory.glob("*.txt")):
        with open(path) as f:
            for line in f:
                counts.update(line.split())
    return counts


def make_corpus(directory: Path, lines: int) -> Corpus:
    data = directory / "input"
    write_text(data, lines=lines, files=4, seed=2026)
    counts = batch_word_count(data)
    expected = Counter((word, n) for word, count in counts.items() for n in range(1, count + 1))
    return Corpus(data, expected, sum(counts.values()), lines)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """About 300,000 words: an uninterrupted run takes a second or two and completes several checkpoints."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), 40_000)


@pytest.fixture(scope="module")
def large_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """About 600,000 words: a job usually outlives several kills, so most runs resume a restored job."""
    return make_corpus(tmp_path_factory.mktemp("large-corpus"), 80_000)


# ---- running the job ------------------------------------------------------------------------------


def committed_records(directory: Path) -> Counter[tuple[str, int]]:
    """The records of committed files: only files whose name does not start with '.' are output."""
    records: Counter[tuple[str, int]] = Counter()
    if not directory.exists():
        return records
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        with open(path) as f:
            records.update((word, n) for word, n in map(json.loads, f))
    return records


def latest_completed_checkpoint(chk: Path) -> int:
    """The highest id of a checkpoint directory whose metadata exists (0: none)."""
    if not chk.exists():
        return 0
    ids = [int(d.name.split("-")[1]) for d in chk.glob("chk-*") if (d / "_metadata").exists()]
    return max(ids, default=0)


def child_environment(failpoints: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
    if failpoints is not None:
        env["FLOWSTATE_FAILPOINTS"] = failpoints
    return env


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def code(self) -> int | None:
        return self.process.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def restored_from(self) -> int | None:
        """The checkpoint id this run said it restores from (None: it did not get that far or
        started from scratch)."""
        found = RESTORING.search(self.stderr())
        return int(found[1]) if found else None

    def records(self) -> ReadCount | None:
        """What the final line of a run that completed counts (None: no final line)."""
        found = FINISHED.search(self.stderr())
        if found is None:
            return None
        total, before, checkpoint, since = found.groups()
        if checkpoint is None:
            return ReadCount(int(total.replace(",", "")), None, 0, int(total.replace(",", "")))
        return ReadCount(int(total.replace(",", "")), int(checkpoint), int(before.replace(",", "")),
                         int(since.replace(",", "")))

    def describe(self) -> str:
        return f"exit {self.code}; stderr:\n{self.stderr()[-3000:]}"


@dataclass(frozen=True)
class ReadCount:
    """The records of a completed run, as its final line counts them."""

    total: int
    checkpoint: int | None
    """The checkpoint the run restored (None: it started from scratch)."""
    before: int
    """Records read up to that checkpoint's barriers, by earlier runs."""
    since: int
    """Records the run's sources read themselves."""


def resume_problems(run: Run, corpus: Corpus) -> str:
    """'' when ``run`` completed after restoring a checkpoint (id ≥ 1) and resuming from it: its
    sources read fewer lines than the input, and with the lines up to the checkpoint all of it."""
    count = run.records()
    if count is None or count.checkpoint is None or count.checkpoint < 1:
        return f"the run did not say it completed from a restored checkpoint: {run.describe()}"
    if count.since >= corpus.lines or count.before + count.since != count.total or count.total != corpus.lines:
        return (f"the run did not resume from checkpoint {count.checkpoint}: it read {count.since} lines, "
                f"{count.before} up to the checkpoint, of {corpus.lines}")
    return ""


@dataclass
class JobDir:
    """One job and everything it writes: checkpoints, output and the stderr of each run."""

    root: Path
    data: Path
    runs: list[Run] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True)
        self.job.write_text(JOB.format(input=str(self.data / "*.txt"), output=str(self.out)))

    @property
    def job(self) -> Path:
        return self.root / "job.py"

    @property
    def chk(self) -> Path:
        return self.root / "chk"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def start(self, mode: str, failpoints: str | None = None, executor: str | None = None) -> Run:
        # Not --quiet: it also silences the "restoring from checkpoint N" line these tests look for.
        command = [sys.executable, "-m", "flowstate", "run", str(self.job), "--checkpoint-dir", str(self.chk),
                   "--mode", mode, "--interval", "100ms", *(["--executor", executor] if executor else [])]
        stderr_path = self.root / f"run-{len(self.runs) + 1}.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                       cwd=self.root, env=child_environment(failpoints))
        run = Run(process, stderr_path)
        self.runs.append(run)
        return run

    def run(self, mode: str, failpoints: str | None = None, executor: str | None = None) -> Run:
        run = self.start(mode, failpoints, executor)
        try:
            run.process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
            pytest.fail(f"a run of {self.job} did not end within {RUN_TIMEOUT:.0f} s; {run.describe()}")
        return run


def output_problems(actual: Counter[tuple[str, int]], expected: Counter[tuple[str, int]], *, exact: bool) -> str:
    """'' when ``actual`` is right, else a short account of what is wrong."""
    missing = expected - actual
    if not exact:
        return f"{sum(missing.values())} records missing, e.g. {sorted(missing)[:5]}" if missing else ""
    extra = actual - expected
    if not missing and not extra:
        return ""
    duplicated = sum(c - 1 for c in actual.values() if c > 1)
    return (f"{sum(missing.values())} records missing (e.g. {sorted(missing)[:5]}), {sum(extra.values())} "
            f"unexpected of which {duplicated} duplicates (e.g. {sorted(extra)[:5]})")


# ---- kills at random moments ------------------------------------------------------------------------


class Kill(Enum):
    """When a run is killed, measured from its start."""

    EARLY = "early"
    """0.05-0.2 s: in interpreter start-up, graph building or restore, before the run's first checkpoint."""
    TIMED = "timed"
    """0.3-1.2 s: wherever the run happens to be."""
    AFTER_A_CHECKPOINT = "after a checkpoint"
    """0-0.15 s after the run's first new checkpoint completed: the metadata is on disk, the sinks may
    or may not have committed. On a loaded machine, where a run may complete no checkpoint within
    1.2 s, these kills still let the job make progress."""


def plan_kill(rng: random.Random) -> tuple[Kill, float]:
    draw = rng.random()
    if draw < 0.25:
        return Kill.EARLY, rng.uniform(0.05, 0.2)
    if draw < 0.7:
        return Kill.TIMED, rng.uniform(0.3, 1.2)
    return Kill.AFTER_A_CHECKPOINT, rng.uniform(0.0, 0.15)


def wait_for_a_new_checkpoint(run: Run, chk: Path, newer_than: int) -> None:
    """Return once a checkpoint with an id above ``newer_than`` completed, or the run ended."""
    give_up = time.monotonic() + RUN_TIMEOUT
    while run.process.poll() is None and latest_completed_checkpoint(chk) <= newer_than:
        if time.monotonic() > give_up:
            run.process.kill()
            run.process.wait()
            pytest.fail(f"a run completed no checkpoint within {RUN_TIMEOUT:.0f} s; {run.describe()}")
        time.sleep(0.005)


def still_running_after(run: Run, seconds: float) -> bool:
    try:
        run.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


@dataclass
class KillLog:
    mode: str
    kills: Counter[Kill] = field(default_factory=Counter)
    kills_after_a_checkpoint: int = 0
    """Kills of a run during which a new checkpoint had completed (whatever kind of kill it was)."""
    finished_before_the_kill: int = 0
    jobs: int = 1
    restored: list[int] = field(default_factory=list)
    """The checkpoint id of every "restoring from checkpoint N" line, in the order of the runs."""

    def summary(self) -> str:
        kinds = ", ".join(f"{self.kills[kind]} {kind.value}" for kind in Kill)
        return (f"{self.mode}: {self.kills.total()} kills ({kinds}; {self.kills_after_a_checkpoint} after a "
                f"checkpoint completed in the run), {self.finished_before_the_kill} run(s) finished before "
                f"their kill, {self.jobs} job(s); restored checkpoint ids {self.restored}")


@pytest.mark.parametrize("mode", MODES)
def test_a_job_killed_twenty_times_at_random_moments_resumes_from_checkpoints_to_the_batch_result(
    mode: str, large_corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Kill, run again, kill, … until ``KILLS_PER_MODE`` kills; then run to completion. A run that
    finishes before its kill completes its job: that job is checked at the end and a new one starts
    in fresh directories, so the number of kills does not depend on the speed of the machine."""
    rng = random.Random(f"sigkill-{mode}")
    log = KillLog(mode)
    jobs = [JobDir(tmp_path / "job-1", large_corpus.data)]
    while log.kills.total() < KILLS_PER_MODE:
        job = jobs[-1]
        kind, delay = plan_kill(rng)
        before = latest_completed_checkpoint(job.chk)
        run = job.start(mode)
        if kind is Kill.AFTER_A_CHECKPOINT:
            wait_for_a_new_checkpoint(run, job.chk, before)
        if still_running_after(run, delay):
            at_kill = latest_completed_checkpoint(job.chk)
            run.process.send_signal(signal.SIGKILL)  # a no-op when it has just exited by itself
            run.process.wait()
            if run.code == KILLED:
                log.kills[kind] += 1
                log.kills_after_a_checkpoint += at_kill > before
        if (restored := run.restored_from()) is not None:
            log.restored.append(restored)
        assert run.code in (0, KILLED), f"{log.summary()}\nrun {len(job.runs)} of {job.root}: {run.describe()}"
        if run.code == 0:
            log.finished_before_the_kill += 1
            jobs.append(JobDir(tmp_path / f"job-{len(jobs) + 1}", large_corpus.data))
            log.jobs += 1

    last = jobs[-1].run(mode)
    if (restored := last.restored_from()) is not None:
        log.restored.append(restored)
    with capsys.disabled():
        print(f"\n{log.summary()}")
    assert last.code == 0, f"{log.summary()}\nthe final run: {last.describe()}"
    assert "on 2 worker process(es)" in last.stderr() or (os.cpu_count() or 1) < 2, last.describe()

    exact = mode != "at_least_once"
    resumed = 0
    for job in jobs:
        problems = output_problems(committed_records(job.out), large_corpus.expected, exact=exact)
        assert not problems, f"{log.summary()}\n{job.root} ({len(job.runs)} runs, {large_corpus.words} words): {problems}"
        # The run that completed the job read the input once, counting what the runs before it read
        # up to its restored checkpoint.
        count = job.runs[-1].records()
        assert count is not None and count.total == large_corpus.lines, job.runs[-1].describe()
        resumed += not resume_problems(job.runs[-1], large_corpus)
    assert resumed >= 1, f"no completed run resumed from a restored checkpoint: {log.summary()}"
    assert log.kills.total() >= KILLS_PER_MODE, log.summary()
    assert any(checkpoint >= 1 for checkpoint in log.restored), f"no run restored a checkpoint: {log.summary()}"
    assert log.kills_after_a_checkpoint >= 1, f"no kill came after a checkpoint completed: {log.summary()}"


# ---- kills at named failpoints -------------------------------------------------------------------------

FAILPOINT_KILLS = [
    # The nth hit is chosen so that at least one checkpoint completed before the kill: per checkpoint
    # the coordinator hits its points once, each of the 2 sinks and 2 sources once, each of the 4
    # tasks once, and each of the 2 counting tasks blocks one of its 2 input channels once.
    *(pytest.param(point, mode, id=f"{point.split('=')[0]}-{mode}") for point in (
        "coordinator.all_acks_before_metadata=kill@2",
        "coordinator.metadata_before_notify=kill@2",
        "sink.before_commit=kill@3",
        "task.after_snapshot_before_ack=kill@5",
    ) for mode in MODES),
    # The remaining points, in exactly_once only (the only mode that aligns barriers).
    *(pytest.param(point, "exactly_once", id=f"{point.split('=')[0]}-exactly_once") for point in (
        "source.after_snapshot=kill@3",
        "alignment.channel_blocked=kill@3",
        "task.before_snapshot=kill@5",
        "sink.after_commit=kill@3",
    )),
]


@pytest.mark.parametrize(("failpoint", "mode"), FAILPOINT_KILLS)
def test_a_run_killed_at_a_failpoint_is_completed_by_the_next_run_from_a_checkpoint(
    failpoint: str, mode: str, corpus: Corpus, tmp_path: Path,
) -> None:
    job = JobDir(tmp_path / "job", corpus.data)

    killed = job.run(mode, failpoints=failpoint, executor="threads")
    assert killed.code == KILLED, f"the run with {failpoint} was not killed there: {killed.describe()}"

    resumed = job.run(mode)
    assert resumed.code == 0, resumed.describe()
    assert (resumed.restored_from() or 0) >= 1, f"the second run did not restore a checkpoint: {resumed.describe()}"
    assert not (problem := resume_problems(resumed, corpus)), problem
    problems = output_problems(committed_records(job.out), corpus.expected, exact=mode != "at_least_once")
    assert not problems, problems


@pytest.mark.parametrize("mode", MODES)
def test_a_run_killed_while_restoring_state_is_completed_by_the_next_run_from_the_same_checkpoint(
    mode: str, corpus: Corpus, tmp_path: Path,
) -> None:
    job = JobDir(tmp_path / "job", corpus.data)

    first = job.run(mode, failpoints="coordinator.metadata_before_notify=kill@2", executor="threads")
    assert first.code == KILLED, first.describe()

    restoring = job.run(mode, failpoints="recovery.state_loaded=kill", executor="threads")
    assert restoring.code == KILLED, f"the run was not killed after loading state: {restoring.describe()}"
    checkpoint = restoring.restored_from()
    assert checkpoint is not None and checkpoint >= 1, restoring.describe()

    resumed = job.run(mode)
    assert resumed.code == 0, resumed.describe()
    assert resumed.restored_from() == checkpoint, resumed.describe()
    assert not (problem := resume_problems(resumed, corpus)), problem
    problems = output_problems(committed_records(job.out), corpus.expected, exact=mode != "at_least_once")
    assert not problems, problems
