"""End to end under SIGKILL: ``flowstate run examples/nats_to_redis.py`` (NATS JetStream → keyed word
count → Redis stream, parallelism 2) is killed, run again until it finishes, and the records read back
**from Redis** are compared with a plain batch count of the lines published to NATS: every
(word, n) for n = 1..count(word) exactly once (``at_least_once``: at least once).

A restart from scratch also gives the right answer, so every crash test proves the restore: the last
run restored a checkpoint with id ≥ 1 and read fewer lines from NATS than were published (the job
appends one byte per line read to a file named by the test, one file per run).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import covered_lines

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "examples" / "nats_to_redis.py"
_spec = importlib.util.spec_from_file_location("nats_to_redis_demo", ROOT / "examples" / "nats_to_redis_demo.py")
demo = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(demo)  # type: ignore[union-attr]

LINES = 4000
LINE_DELAY_MS = "0.3"
"""Each line read sleeps this long: a whole read takes at least 0.6 s, so several checkpoints complete
before the end of the input, however fast the machine."""
COVERED = LINES // 8
"""A timed kill waits for a completed checkpoint whose sources had read at least this many lines."""
HOLD_AFTER = LINES - LINES // 8
"""A run that is to be killed at a moment of the test's choosing reads no further than this
(``DEMO_HOLD_AFTER``): its kill cannot come after the end of the input, however slow the test is."""
HELD_RATE = "1000"
"""Lines per second per reader of such a run (``DEMO_RATE``): its polls stay short, so its source
snapshots every checkpoint promptly, and between ``COVERED`` and ``HOLD_AFTER`` lie at least 1.5 s
of reading (two readers) for a checkpoint that covers ``COVERED`` lines to complete."""
RUN_TIMEOUT = 120.0
KILLED = -signal.SIGKILL
RESTORING = re.compile(r"restoring from checkpoint (\d+)")


@dataclass
class BrokerJob:
    root: Path
    stream: str
    nats_url: str
    redis_url: str
    delivery: str = "exactly_once"
    runs: list[tuple[subprocess.Popen[bytes], Path, Path]] = field(default_factory=list)

    @property
    def out(self) -> str:
        return f"{self.stream}:out"

    def start(self, mode: str, failpoints: str | None = None, executor: str | None = None,
              hold_after: int | None = None) -> subprocess.Popen[bytes]:
        n = len(self.runs) + 1
        stderr, reads = self.root / f"run-{n}.stderr", self.root / f"run-{n}.reads"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
        env.update(DEMO_STREAM=self.stream, DEMO_OUT=self.out, DEMO_NATS=self.nats_url, DEMO_REDIS=self.redis_url,
                   DEMO_DELIVERY=self.delivery, DEMO_READS=str(reads), DEMO_DELAY_MS=LINE_DELAY_MS)
        if failpoints:
            env["FLOWSTATE_FAILPOINTS"] = failpoints
        if hold_after:
            env.update(DEMO_HOLD_AFTER=str(hold_after), DEMO_RATE=HELD_RATE)
        command = [sys.executable, "-m", "flowstate", "run", str(JOB), "--checkpoint-dir", str(self.root / "chk"),
                   "--mode", mode, "--interval", "100ms", *(["--executor", executor] if executor else [])]
        with open(stderr, "wb") as f:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                       cwd=self.root, env=env)
        self.runs.append((process, stderr, reads))
        return process

    def wait(self, process: subprocess.Popen[bytes]) -> int:
        try:
            return process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"a run did not end within {RUN_TIMEOUT:.0f} s: {self.describe()}")

    def kill_after_a_new_checkpoint(self, mode: str, delay: float) -> None:
        """Start a run and kill it ``delay`` s after a checkpoint completed that covers ``COVERED`` lines
        (so that the restore has something to skip). The run holds before reading its last lines, so
        the kill always lands before the end of the input."""
        process = self.start(mode, hold_after=HOLD_AFTER)
        chk = self.root / "chk"
        give_up = time.monotonic() + RUN_TIMEOUT
        while process.poll() is None and covered_lines(chk) < COVERED:
            assert time.monotonic() < give_up, f"no checkpoint covered {COVERED} lines: {self.describe()}"
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == KILLED, f"the run ended before its kill: {self.describe()}"

    def last_restored(self) -> int:
        found = RESTORING.findall(self.runs[-1][1].read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def last_reads(self) -> int:
        reads = self.runs[-1][2]
        return reads.stat().st_size if reads.exists() else 0

    def describe(self) -> str:
        return "\n".join(f"run {k + 1}: exit {p.returncode}: {e.read_text(errors='replace')[-1500:]}"
                         for k, (p, e, _) in enumerate(self.runs))


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return demo.make_lines(LINES, seed=2026)


@pytest.fixture
def job(nats_url: str, redis_url: str, unique: str, lines: list[str], tmp_path: Path):  # noqa: ANN201
    import redis

    demo.NATS = nats_url
    demo.publish(unique, lines)
    job = BrokerJob(tmp_path, unique, nats_url, redis_url)
    yield job
    demo.delete_stream(unique)
    client = redis.Redis.from_url(redis_url)
    client.delete(job.out, job.out + ":flowstate-committed")
    client.close()


def read_back(job: BrokerJob) -> Counter[tuple[str, int]]:
    demo.REDIS = job.redis_url
    return demo.read_output(job.out)


def check_output(job: BrokerJob, lines: list[str], *, exact: bool = True) -> None:
    actual, expected = read_back(job), demo.expected_records(lines)
    missing, extra = expected - actual, actual - expected
    assert not missing, f"{sum(missing.values())} records missing from Redis, e.g. {sorted(missing)[:5]}"
    if exact:
        assert not extra, f"{sum(extra.values())} unexpected records in Redis (duplicates?), e.g. {sorted(extra)[:5]}"


def check_restored(job: BrokerJob) -> None:
    assert job.last_restored() >= 1, f"the last run did not restore a checkpoint: {job.describe()}"
    assert job.last_reads() < LINES, f"the last run read {job.last_reads()} of {LINES} lines: {job.describe()}"


@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_killed_after_a_checkpoint_the_job_writes_every_count_to_redis_exactly_once(
    mode: str, job: BrokerJob, lines: list[str],
) -> None:
    job.kill_after_a_new_checkpoint(mode, delay=0.05)
    last = job.start(mode)
    assert job.wait(last) == 0, job.describe()
    check_restored(job)
    check_output(job, lines)


@pytest.mark.parametrize("failpoint", ["sink.before_commit=kill@3", "sink.mid_commit=kill@2",
                                       "coordinator.metadata_before_notify=kill@2"])
def test_killed_at_a_failpoint_the_next_run_completes_the_output_exactly_once(
    failpoint: str, job: BrokerJob, lines: list[str],
) -> None:
    killed = job.start("exactly_once", failpoints=failpoint, executor="threads")
    assert job.wait(killed) == KILLED, f"the run with {failpoint} was not killed there: {job.describe()}"
    last = job.start("exactly_once")
    assert job.wait(last) == 0, job.describe()
    check_restored(job)
    check_output(job, lines)


def test_the_at_least_once_sink_loses_nothing_when_killed(job: BrokerJob, lines: list[str]) -> None:
    job.delivery = "at_least_once"
    # Killed at a failpoint rather than after a delay: on a loaded machine a timed kill can come after
    # the end of the input.
    killed = job.start("at_least_once", failpoints="sink.before_commit=kill@3", executor="threads")
    assert job.wait(killed) == KILLED, f"the run was not killed at its failpoint: {job.describe()}"
    last = job.start("at_least_once")
    assert job.wait(last) == 0, job.describe()
    check_restored(job)
    check_output(job, lines, exact=False)
