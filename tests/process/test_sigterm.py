"""SIGTERM, as systemd, Docker and Kubernetes send it, stops ``flowstate run`` gracefully.

The first SIGTERM is a ``flowstate stop``: a final checkpoint, the output up to it committed, the
control file removed, exit 3 ("stopped"); running the same command again resumes from that
checkpoint. A second SIGTERM, or no stop within ``--stop-timeout``, stops the run at once: exit 143,
nothing committed after the latest completed checkpoint, the control file removed all the same.
Each test runs a real ``flowstate run`` process in a session of its own and signals its whole
process group, as systemd does, so that the worker processes get the signal too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

WAIT = 60.0
"""Seconds a run may take before the test gives up on it: a guard against a hang."""
LINES = 3000
VOCABULARY = ["red", "green", "blue", "cyan", "amber"]

JOB = '''\
import flowstate as fs

VOCABULARY = {vocabulary!r}


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


flow = fs.Dataflow("terminated", parallelism=2)
(flow.source(fs.GeneratorSource(lambda i: VOCABULARY[i % len(VOCABULARY)], {lines}, splits=2, rate={rate}), uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.FileSink({output!r}), uid="counts"))
'''


def expected() -> Counter[tuple[str, int]]:
    counts = Counter(VOCABULARY[i % len(VOCABULARY)] for i in range(LINES))
    return Counter((word, n) for word, c in counts.items() for n in range(1, c + 1))


def committed(directory: Path) -> Counter[tuple[str, int]]:
    records: Counter[tuple[str, int]] = Counter()
    for path in sorted(directory.iterdir()) if directory.exists() else []:
        if not path.name.startswith("."):
            records.update(tuple(json.loads(text)) for text in path.read_text().splitlines())
    return records


class Run:
    """A ``flowstate run`` of the job in a process group of its own."""

    def __init__(self, root: Path, *extra: str, rate: float = 300.0, failpoints: str = "") -> None:
        self.root = root
        self.chk = root / "chk"
        self.out = root / "out"
        job = root / "job.py"
        job.write_text(JOB.format(vocabulary=VOCABULARY, lines=LINES, rate=rate, output=str(self.out)))
        self.log = root / f"run-{len(list(root.glob('run-*.log')))}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        if failpoints:
            env["FLOWSTATE_FAILPOINTS"] = failpoints
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir", str(self.chk), "--quiet",
                 *(extra if "--executor" in extra else ("--executor", "processes", *extra))],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while what not in self.stderr():
            assert self.process.poll() is None, f"the run ended early:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"no {what!r} in:\n{self.stderr()}"
            time.sleep(0.05)

    def terminate_group(self) -> None:
        """SIGTERM to every process of the run, as systemd stops a service."""
        os.killpg(self.process.pid, signal.SIGTERM)

    def wait(self) -> int:
        try:
            return self.process.wait(WAIT)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(WAIT)


@pytest.fixture
def runs():
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


@pytest.mark.parametrize("executor", ["processes", "threads"])
def test_sigterm_stops_after_a_final_checkpoint_and_the_same_command_resumes_from_it(
        tmp_path: Path, runs, executor: str) -> None:
    first = Run(tmp_path, "--interval", "200ms", "--executor", executor)
    runs.append(first)
    first.wait_for("control endpoint on")
    time.sleep(1.0)

    first.terminate_group()

    assert first.wait() == 3, first.stderr()
    assert "SIGTERM: stopping the job after a final checkpoint" in first.stderr()
    assert re.search(r"job 'terminated' stopped: [\d,]+ records", first.stderr()), first.stderr()
    assert "finished" not in first.stderr()
    assert not (first.chk / "_control.json").exists(), "the control file is removed"
    stopped_at = committed(first.out)
    assert stopped_at and sum(stopped_at.values()) < LINES, "stopped mid-input with its output committed"

    again = Run(tmp_path, "--interval", "200ms", rate=5000.0)
    runs.append(again)
    assert again.wait() == 0, again.stderr()
    assert re.search(r"restoring from checkpoint [1-9]\d*", again.stderr()), again.stderr()
    assert re.search(r"job 'terminated' finished", again.stderr()), again.stderr()
    assert committed(again.out) == expected()


# The stop's checkpoint cannot complete for 20 s: only a fall-back stops the run sooner.
STALLED = "task.after_snapshot_before_ack=stall(20)"


def test_a_second_sigterm_stops_at_once_without_a_final_checkpoint(tmp_path: Path, runs) -> None:
    run = Run(tmp_path, "--interval", "1h", failpoints=STALLED)
    runs.append(run)
    run.wait_for("control endpoint on")
    run.terminate_group()
    run.wait_for("stop requested")
    started = time.monotonic()

    os.kill(run.process.pid, signal.SIGTERM)

    assert run.wait() == 143, run.stderr()
    assert time.monotonic() - started < 15, "not stopped at once"
    assert "stopped at once (a second SIGTERM), without a final checkpoint" in run.stderr(), run.stderr()
    assert not (run.chk / "_control.json").exists(), "the control file is removed"
    assert committed(run.out) == Counter(), "nothing was committed without a completed checkpoint"


def test_a_stop_not_done_within_the_stop_timeout_stops_at_once(tmp_path: Path, runs) -> None:
    run = Run(tmp_path, "--interval", "1h", "--stop-timeout", "500ms", failpoints=STALLED)
    runs.append(run)
    run.wait_for("control endpoint on")
    started = time.monotonic()

    run.terminate_group()

    assert run.wait() == 143, run.stderr()
    assert time.monotonic() - started < 15, "not stopped at once"
    assert "the job did not stop within 0.5 s of SIGTERM" in run.stderr(), run.stderr()
    assert "stopped at once (no stop within 0.5 s of SIGTERM)" in run.stderr(), run.stderr()
    assert not (run.chk / "_control.json").exists(), "the control file is removed"


def test_a_job_without_checkpoints_stops_at_once_on_the_first_sigterm(tmp_path: Path, runs) -> None:
    run = Run(tmp_path, "--mode", "none", "--executor", "threads")
    runs.append(run)
    run.wait_for("starting from scratch")
    time.sleep(0.3)

    run.terminate_group()

    assert run.wait() == 143, run.stderr()
    assert "stopped at once (SIGTERM), without a final checkpoint" in run.stderr(), run.stderr()
