"""Worker failover under the multi-process executor: single worker processes of a running job are
killed with SIGKILL (or exit), and the job goes on by itself, restored from its latest completed
checkpoint, to the batch result.

The job is the engine tests' word count (a rate-limited generator of lines → flat_map(str.split) →
key_by → a keyed counter with value state emitting (word, n) → FileSink, parallelism 2) run with
``executor="processes"`` and two workers, each running one source task and one counting task. A
correct result is every (word, n) for n = 1..count(word): exactly once in ``exactly_once``,
``unaligned`` and ``stop_the_world``, at least once in ``at_least_once``.

Every test proves that a worker really died during the run (the run's failures name its pid and
how it ended) and that the last attempt restored a checkpoint with id ≥ 1 and resumed from it (its
sources read fewer lines than the input: the rest were read up to the checkpoint): a restart from
scratch would also give the right answer.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.storage.local import LocalCheckpointStorage

from engine.jobs import (
    Count,
    assert_restored_from_a_checkpoint,
    batch_reference,
    committed_output,
    difference,
    generator_source,
    lines,
    wordcount,
)

pytestmark = pytest.mark.slow

MODES = ["exactly_once", "unaligned", "stop_the_world", "at_least_once"]
LINES = 10_000
"""At 1,000 lines/s per source task, an undisturbed run lasts about 5 s: longer than the kills."""
RATE = 1000.0
KILLS = 6
"""Kills per mode in the random test."""
MANY_RESTARTS = fs.FixedDelayRestart(50, 0.0)


def worker_pids(coordinator: int) -> list[int]:
    """The live (not zombie) worker processes of ``coordinator``: its children, and the children of
    its fork server (``flowstate.executors.forkserver``), which is not a worker itself."""
    processes: dict[int, tuple[int, str, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                command = file.read()
        except OSError:
            continue
        processes[int(entry)] = (int(fields[1]), fields[0], command)
    servers = {pid for pid, (ppid, _, command) in processes.items()
               if ppid == coordinator and b"flowstate.executors.forkserver" in command}
    return [pid for pid, (ppid, state, _) in processes.items()
            if state != "Z" and pid not in servers and (ppid == coordinator or ppid in servers)]


class Killer(threading.Thread):
    """Kills a random worker of this process ``kills`` times, each once a checkpoint of the attempt
    after the last kill completed (so the kill lands in an attempt whose workers run, not in one that
    is still starting its worker processes) and a random ``gap`` passed. The checkpoint in flight at
    a kill may still complete (every acknowledgement was in): only a later one proves a new attempt."""

    def __init__(self, rng: random.Random, kills: int, gap: tuple[float, float], checkpoints: Path) -> None:
        super().__init__(daemon=True, name="killer")
        self.rng = rng
        self.kills = kills
        self.gap = gap
        self.checkpoints = checkpoints
        self.killed: list[int] = []
        self.done = threading.Event()

    def completed(self) -> int:
        """The id of the newest completed checkpoint (0: none)."""
        return max((int(m.parent.name.removeprefix("chk-")) for m in self.checkpoints.glob("chk-*/_metadata")),
                   default=0)

    def run(self) -> None:
        seen = 0
        while len(self.killed) < self.kills:
            while self.completed() <= seen + 1 and (seen or not self.completed()):
                if self.done.wait(0.01):
                    return
            if self.done.wait(self.rng.uniform(*self.gap)):
                return
            seen = self.completed()
            workers = worker_pids(os.getpid())
            if workers:
                victim = self.rng.choice(workers)
                os.kill(victim, signal.SIGKILL)
                self.killed.append(victim)


def expected_output() -> Counter[tuple[str, int]]:
    return batch_reference(lines(LINES))


def assert_output(output: Path, mode: str) -> None:
    actual = committed_output(output)
    expected = expected_output()
    if mode == "at_least_once":
        missing = expected - Counter(actual)
        assert not missing, difference(actual, expected)
    else:
        assert Counter(actual) == expected, difference(actual, expected)


def killed_workers(result: fs.JobResult) -> list[str]:
    return [f for f in result.failures if "was killed by SIGKILL" in f]


def run_wordcount(tmp_path: Path, mode: str, *, failpoints: fs.Failpoints | None = None,
                  retained: int = 1) -> fs.JobResult:
    flow = wordcount(tmp_path / "out", source=generator_source(LINES, rate=RATE))
    return fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode=mode, checkpoint_dir=tmp_path / "chk", interval="100ms",
                                         retained=retained),
        recovery=fs.RecoveryOptions(restart=MANY_RESTARTS),
        execution=fs.ExecutionOptions(executor="processes", workers=2),
        failpoints=failpoints,
    )


@pytest.mark.parametrize("mode", MODES)
def test_workers_killed_at_random_moments_are_replaced_and_the_job_gives_the_batch_result(mode, tmp_path):
    killer = Killer(random.Random(f"failover-{mode}"), KILLS, (0.0, 0.5), tmp_path / "chk")
    killer.start()
    try:
        result = run_wordcount(tmp_path, mode)
    finally:
        killer.done.set()
        killer.join()

    summary = f"killed {killer.killed}; failures {result.failures}; restored from {result.restored_from}"
    assert result.executor == "processes" and result.workers == 2
    assert len(killer.killed) == KILLS, f"the job ended before {KILLS} kills: {summary}"
    # A kill landing while the last attempt stopped its workers fails nothing; every other one does.
    lost = killed_workers(result)
    assert len(lost) >= KILLS - 1, summary
    assert all(any(f"(pid {pid};" in failure for pid in killer.killed) for failure in lost), summary
    assert_restored_from_a_checkpoint(result, LINES)
    assert_output(tmp_path / "out", mode)


@pytest.mark.parametrize("failpoint", [
    # The nth hit is chosen so that checkpoints completed before the kill: per checkpoint each of
    # the 4 tasks takes a snapshot, each of the 2 sources and each of the 2 sinks hits its points.
    "task.before_snapshot=kill@9",
    "source.after_snapshot=kill@5",
    "alignment.channel_blocked=kill@5",
    "sink.before_commit=kill@5",
    "sink.after_commit=kill@5",
    "operator.process=kill@3000",
])
def test_a_worker_killed_at_a_failpoint_is_replaced_and_its_tasks_restored_from_a_checkpoint(failpoint, tmp_path):
    name, action = failpoint.split("=")
    failpoints = fs.Failpoints({name: action})

    result = run_wordcount(tmp_path, "exactly_once", failpoints=failpoints)

    assert failpoints.fired(name) == 1, f"{name} was hit {failpoints.hits(name)} times"
    assert len(killed_workers(result)) == 1, result.failures
    assert_restored_from_a_checkpoint(result, LINES)
    assert_output(tmp_path / "out", "exactly_once")


@pytest.mark.parametrize("mode", MODES)
def test_a_checkpoint_in_flight_when_a_worker_dies_is_aborted_and_never_completes(mode, tmp_path):
    # Hits 9-12 of "after snapshot, before ack" belong to checkpoint 3: the first of them kills a
    # worker whose state file of checkpoint 3 is durable and not acknowledged.
    failpoints = fs.Failpoints({"task.after_snapshot_before_ack": "kill@9"})

    result = run_wordcount(tmp_path, mode, failpoints=failpoints, retained=1000)

    assert failpoints.fired("task.after_snapshot_before_ack") == 1
    assert len(killed_workers(result)) == 1, result.failures
    assert result.restored_from[:2] == [None, 2], result.restored_from
    assert_restored_from_a_checkpoint(result, LINES)
    completed = {int(c.checkpoint_id) for c in LocalCheckpointStorage(tmp_path / "chk").list_checkpoints()
                 if c.status == "completed"}
    assert 3 not in completed and not (tmp_path / "chk" / "chk-000003").exists()
    assert 3 not in [s.checkpoint_id for s in result.checkpoint_stats]
    assert completed >= {1, 2, 4}, f"ids continue after the aborted checkpoint: {sorted(completed)}"
    assert_output(tmp_path / "out", mode)


def test_a_worker_that_exits_by_itself_fails_the_attempt_naming_it_and_the_job_recovers(tmp_path):
    # A user function that ends its process at the 1,000th line it sees, once: a marker file
    # remembers it. A worker reads about 1,000 lines a second.
    marker = tmp_path / "exited"
    seen = [0]

    def exit_once(text: str) -> list[str]:
        seen[0] += 1
        if seen[0] == 1000 and not marker.exists():
            marker.touch()
            os._exit(7)
        return text.split()

    flow = fs.Dataflow("wordcount", parallelism=2)
    (flow.source(generator_source(LINES, rate=RATE), uid="lines")
         .flat_map(exit_once, uid="words")
         .key_by(lambda word: word)
         .process(Count(), uid="count")
         .sink(fs.FileSink(tmp_path / "out"), uid="counts"))

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="100ms"),
        recovery=fs.RecoveryOptions(restart=MANY_RESTARTS),
        execution=fs.ExecutionOptions(executor="processes"),
    )

    assert marker.exists()
    assert len(result.failures) == 1 and "exited with status 7" in result.failures[0], result.failures
    assert_restored_from_a_checkpoint(result, LINES)
    assert_output(tmp_path / "out", "exactly_once")


def test_the_command_line_reports_a_killed_worker_and_finishes_the_job_in_the_same_run(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.engine.jobs import generator_source, wordcount\n"
        f"flow = wordcount({str(tmp_path / 'out')!r}, source=generator_source({LINES}, rate={RATE}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
    env["FLOWSTATE_FAILPOINTS"] = "sink.before_commit=kill@5"

    run = subprocess.run(
        [sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir", str(tmp_path / "chk"),
         "--interval", "100ms", "--executor", "processes", "--workers", "2", "--quiet"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )

    assert run.returncode == 0, run.stderr
    assert "was killed by SIGKILL" in run.stderr and "restart 1" in run.stderr, run.stderr
    restored = [int(n) for n in re.findall(r"restoring from checkpoint (\d+)", run.stderr)]
    assert restored and restored[0] >= 1, run.stderr
    # The final line counts the lines up to the restored checkpoint and those read since.
    counted = re.search(r"finished: ([\d,]+) records processed in total \(([\d,]+) up to checkpoint (\d+), "
                        r"([\d,]+) read since its restore\)", run.stderr)
    assert counted, run.stderr
    total, before, checkpoint, since = (int(g.replace(",", "")) for g in counted.groups())
    assert (total, before + since, checkpoint) == (LINES, LINES, restored[-1]), counted.group(0)
    assert since < LINES, counted.group(0)
    assert_output(tmp_path / "out", "exactly_once")
