"""Worker processes are forks of the run's single-threaded fork server, or fresh interpreters where
it cannot run (``flowstate.executors.processes``, rule 1), never forks of the coordinator's process,
which runs threads by the time an attempt starts:

- a coordinator process that opened RocksDB before the job started (RocksDB's background threads run
  in it) still gets workers whose RocksDB state snapshots complete;
- workers started after a restore (the coordinator read the restore point and ran the failed
  attempt's threads) connect and report, run after run;
- a job file loaded as ``flowstate run`` loads it (its functions in no importable module) runs on
  worker processes: its functions travel by value;
- a job that cannot be pickled is refused before any worker starts, saying what to do;
- failpoint counts are shared with a fresh interpreter that is given their descriptor, so ``@N``
  fires once per job.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.cli import load_dataflow

from .jobs import (
    FAST_RESTART,
    INTERVAL,
    RATE,
    assert_restored_from_a_checkpoint,
    batch_reference,
    committed_output,
    committed_values,
    difference,
    generator_source,
    lines,
    wordcount,
)

LINES = 800
PARALLELISM = 2


def run_on_processes(out: Path, chk: Path, *, state: fs.StateOptions | None = None,
                     failpoints: fs.Failpoints | None = None) -> fs.JobResult:
    flow = wordcount(out, source=generator_source(LINES, rate=RATE), parallelism=PARALLELISM)
    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=chk, interval=INTERVAL),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        state=state,
        execution=fs.ExecutionOptions(executor="processes"),
        failpoints=failpoints,
    )
    assert result.executor == "processes" and result.workers == PARALLELISM
    return result


def assert_exact(out: Path) -> None:
    expected = batch_reference(lines(LINES))
    actual = committed_output(out)
    assert Counter(actual) == expected, difference(actual, expected)


def test_a_coordinator_that_opened_rocksdb_before_the_job_gets_workers_whose_rocksdb_snapshots_complete(tmp_path):
    rocksdict = pytest.importorskip("rocksdict")
    db = rocksdict.Rdict(str(tmp_path / "own-db"))  # RocksDB's thread pools now run in this process
    try:
        for i in range(1000):
            db[f"key-{i}"] = i
        db.flush()

        result = run_on_processes(tmp_path / "out", tmp_path / "chk",
                                  state=fs.StateOptions(backend="rocksdb", directory=tmp_path / "rocksdb"))

        assert db["key-999"] == 999
    finally:
        db.close()
    assert result.checkpoints_completed >= 2, result
    assert_exact(tmp_path / "out")


def test_workers_started_after_a_restore_report_run_after_run(tmp_path):
    # source.before_snapshot is hit once per source task and checkpoint: the failure lands in the
    # third checkpoint, after two completed, and the next attempt's workers start after a restore.
    for run in range(5):
        failpoints = fs.Failpoints({"source.before_snapshot": f"raise@{2 * PARALLELISM + 1}"})

        result = run_on_processes(tmp_path / f"out-{run}", tmp_path / f"chk-{run}", failpoints=failpoints)

        assert failpoints.fired("source.before_snapshot") == 1, "the hits of both workers are counted together"
        assert result.restarts == 1, result
        assert_restored_from_a_checkpoint(result, LINES)
        assert_exact(tmp_path / f"out-{run}")


JOB_FILE = '''
import flowstate as fs

SUFFIX = "!"


def shout(word):
    return word.upper() + SUFFIX


flow = fs.Dataflow("job-file", parallelism=2)
(flow.source(fs.GeneratorSource(lambda i: f"word{i % 5}", 40, splits=2), uid="words")
     .map(shout, uid="shout")
     .key_by(lambda word: word)
     .reduce(lambda a, b: a, uid="first")
     .sink(fs.FileSink(OUT), uid="out"))
'''


def test_a_job_file_whose_functions_are_in_no_importable_module_runs_on_worker_processes(tmp_path):
    job = tmp_path / "jobs" / "shouting.py"
    job.parent.mkdir()
    job.write_text(JOB_FILE.replace("OUT", repr(str(tmp_path / "out"))))
    flow = load_dataflow(str(job))

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
        execution=fs.ExecutionOptions(executor="processes"),
    )

    assert result.executor == "processes" and result.workers == 2
    assert Counter(committed_values(tmp_path / "out")) == {f"WORD{i}!": 8 for i in range(5)}


def test_a_job_that_cannot_be_pickled_is_refused_before_any_worker_starts(tmp_path):
    lock = threading.Lock()

    def guarded(i: int) -> int:
        with lock:
            return i

    flow = fs.Dataflow("locked", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: i, 10, splits=2), uid="ints")
         .map(guarded, uid="guarded")
         .sink(fs.FileSink(tmp_path / "out"), uid="out"))

    with pytest.raises(fs.ConfigError, match=r"cannot be sent to worker processes .*lock.*create objects such as "
                                             r"connections, clients, locks and open files in open\(ctx\)"):
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
            execution=fs.ExecutionOptions(executor="processes"),
        )


HIT_IN_ANOTHER_INTERPRETER = """
import pickle, sys
from flowstate.failpoints import Failpoints
failpoints, counts = pickle.load(sys.stdin.buffer)
failpoints.attach(counts)
for _ in range(3):
    try:
        failpoints.hit("operator.process")
    except Exception as exc:
        print(exc)
"""


def test_failpoint_counts_are_shared_with_a_fresh_interpreter_given_their_descriptor():
    failpoints = fs.Failpoints({"operator.process": "raise@4"})
    failpoints.hit("operator.process")
    counts = failpoints.share()
    assert counts is not None

    worker = subprocess.run([sys.executable, "-c", HIT_IN_ANOTHER_INTERPRETER], pass_fds=(counts.fd,),
                            input=pickle.dumps((failpoints, counts)), capture_output=True, check=True)

    assert worker.stdout.decode().strip() == "failpoint operator.process (hit 4)"
    assert failpoints.hits("operator.process") == 4 and failpoints.fired("operator.process") == 1
    failpoints.hit("operator.process")  # the fifth: @4 fired once, in the other process
    assert failpoints.hits("operator.process") == 5 and failpoints.fired("operator.process") == 1
