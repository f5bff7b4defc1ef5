"""The fork server of the ``processes`` executor (``flowstate.executors.forkserver``): one per run, it
forks the workers of every attempt and never outlives its run.

- a worker killed at a failpoint fails its attempt, and the same server forks the next attempt's
  workers, which restore a checkpoint and finish the job;
- no process of the run (server or worker) remains once the run ended normally, once it failed for
  good, and once its coordinator was killed with SIGKILL.

Each worker writes, the first time its ``flat_map`` runs, a file named after its pid holding its
parent's pid and command line: that is how a test learns which processes the run had.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.executors.forkserver import Exited, Forked, Ready, decode_reports, encode_report

from engine.jobs import (
    FAST_RESTART,
    INTERVAL,
    Count,
    assert_restored_from_a_checkpoint,
    batch_reference,
    committed_output,
    difference,
    generator_source,
    lines,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

LINES = 600
RATE = 1000.0
WAIT = 30.0
"""Seconds a test waits for the processes of a killed coordinator to disappear (they take
milliseconds: the kernel signals them as their parents die)."""


def test_reports_cross_the_socket_in_order_whatever_pieces_they_arrive_in():
    reports = [Ready(10), Forked(11), Exited(11, -9), Forked(12), Exited(12, 7)]
    stream = b"".join(encode_report(r) for r in reports)
    buffer = bytearray()
    received = []
    for k in range(0, len(stream), 5):  # pieces that cut reports in two
        buffer += stream[k:k + 5]
        received += decode_reports(buffer)

    assert received == reports and buffer == bytearray()


def record_worker(pids: Path) -> None:
    """Once per process: ``pids/<pid>`` holds ``<parent pid>\\n<parent's command line>``."""
    mine = pids / str(os.getpid())
    if not mine.exists():
        parent = os.getppid()
        with open(f"/proc/{parent}/cmdline", "rb") as file:
            command = file.read().replace(b"\0", b" ").decode()
        mine.write_text(f"{parent}\n{command}")


def recorded(pids: Path) -> dict[int, tuple[int, str]]:
    """Worker pid → (parent pid, parent's command line), as the workers wrote them."""
    workers = {}
    for path in pids.iterdir():
        parent, command = path.read_text().split("\n", 1)
        workers[int(path.name)] = (int(parent), command)
    return workers


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def recording_wordcount(out: Path, pids: Path) -> fs.Dataflow:
    def words(text: str) -> list[str]:
        record_worker(pids)
        return text.split()

    flow = fs.Dataflow("wordcount", parallelism=2)
    (flow.source(generator_source(LINES, rate=RATE), uid="lines")
         .flat_map(words, uid="words")
         .key_by(lambda word: word)
         .process(Count(), uid="count")
         .sink(fs.FileSink(out), uid="counts"))
    return flow


def run_recording(tmp_path: Path, *, failpoints: fs.Failpoints | None = None,
                  restart: fs.RecoveryOptions | None = None) -> fs.JobResult:
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    return fs.run(
        recording_wordcount(tmp_path / "out", pids),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL),
        recovery=restart,
        execution=fs.ExecutionOptions(executor="processes", workers=2),
        failpoints=failpoints,
    )


def test_the_server_survives_a_killed_worker_and_forks_the_workers_of_the_next_attempt(tmp_path):
    failpoints = fs.Failpoints({"sink.before_commit": "kill@3"})

    result = run_recording(tmp_path, failpoints=failpoints, restart=fs.RecoveryOptions(restart=FAST_RESTART))

    assert failpoints.fired("sink.before_commit") == 1
    assert len(result.failures) == 1 and "was killed by SIGKILL" in result.failures[0], result.failures
    assert_restored_from_a_checkpoint(result, LINES)
    actual = committed_output(tmp_path / "out")
    assert Counter(actual) == batch_reference(lines(LINES)), difference(actual, batch_reference(lines(LINES)))
    workers = recorded(tmp_path / "pids")
    assert len(workers) >= 3, workers  # two of the first attempt, at least one of the second
    parents = {parent for parent, _ in workers.values()}
    assert len(parents) == 1 and os.getpid() not in parents, workers
    assert all("flowstate.executors.forkserver" in command for _, command in workers.values()), workers


def test_no_process_of_the_run_remains_after_it_ends(tmp_path):
    result = run_recording(tmp_path)

    assert result.failures == []
    workers = recorded(tmp_path / "pids")
    assert len(workers) == 2, workers
    server = {parent for parent, _ in workers.values()}
    assert len(server) == 1 and os.getpid() not in server, workers
    assert [pid for pid in (*workers, *server) if alive(pid)] == []


def test_no_process_of_the_run_remains_after_it_failed(tmp_path):
    failpoints = fs.Failpoints({"operator.process": "raise@50"})

    with pytest.raises(fs.JobFailedError, match="restart strategy gave up"):
        run_recording(tmp_path, failpoints=failpoints, restart=fs.RecoveryOptions(restart=fs.NoRestart()))

    workers = recorded(tmp_path / "pids")
    assert workers, "the workers ran"
    server = {parent for parent, _ in workers.values()}
    assert [pid for pid in (*workers, *server) if alive(pid)] == []


JOB = """\
import sys
sys.path[:0] = [{tests!r}]
from process.test_fork_server import recording_wordcount
from pathlib import Path
flow = recording_wordcount(Path({out!r}), Path({pids!r}))
"""


def test_no_process_of_the_run_remains_after_its_coordinator_was_killed(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    job = tmp_path / "job.py"
    job.write_text(JOB.format(tests=str(Path(__file__).resolve().parents[1]), out=str(tmp_path / "out"),
                              pids=str(pids)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
    # Stalled before its first commit, the job runs until it is killed.
    env["FLOWSTATE_FAILPOINTS"] = "sink.before_commit=stall(60)@1"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir", str(tmp_path / "chk"),
         "--interval", "100ms", "--executor", "processes", "--workers", "2", "--quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    try:
        give_up = time.monotonic() + WAIT
        while len(list(pids.iterdir())) < 2 and coordinator.poll() is None and time.monotonic() < give_up:
            time.sleep(0.02)
        workers = recorded(pids)
        assert len(workers) == 2 and coordinator.poll() is None, (workers, coordinator.returncode)
        server = {parent for parent, _ in workers.values()}
        assert len(server) == 1 and coordinator.pid not in server, workers
    finally:
        coordinator.send_signal(signal.SIGKILL)
        _, stderr = coordinator.communicate()

    left = [*workers, *server]
    give_up = time.monotonic() + WAIT
    while any(alive(pid) for pid in left) and time.monotonic() < give_up:
        time.sleep(0.02)
    assert [pid for pid in left if alive(pid)] == [], stderr.decode()
