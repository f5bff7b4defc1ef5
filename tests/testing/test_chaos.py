"""The chaos runner on real processes: the CI gate over the sequence and bank workloads in every mode,
and proof that the runner catches a job that breaks its guarantee.

The gate: every mode, kills at random moments and at every failpoint, the oracles' checks after every
run. Together the two workloads must total at least ``MIN_KILLS`` kills, kill every failpoint that
some mode reaches at least ``MIN_KILLS_PER_FAILPOINT`` times, and find nothing lost or duplicated
(nothing lost in ``at_least_once``). Every mode must also have restored a checkpoint with an id ≥ 1
after a kill that came after a completed checkpoint, and some run that completed must have resumed
from it (its sources read only the records after the checkpoint): a restart from scratch, or tasks
that ignore their resume state, would also give the right output, and prove nothing.

The sequence workload also runs counting in a dict changed in place (``mutable_state``), once per
state backend: a checkpoint must hold the state at its barrier whatever the job does with the objects
its state hands out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowstate import failpoints as fpn
from flowstate.testing import ChaosConfig, ChaosReport, run_chaos
from flowstate.testing.chaos import RANDOM
from flowstate.testing.oracles import EXACTLY_ONCE_MODES, bank, sequence

pytestmark = pytest.mark.slow

MODES = ("exactly_once", "unaligned", "stop_the_world", "at_least_once")
MIN_KILLS = 50
MIN_KILLS_PER_FAILPOINT = 3
SEQUENCE_COUNT = 6000
BANK_COUNT = 4000
SETTINGS = {"checkpoint_interval": "50ms", "batch_size": 64, "workers": 2, "failpoint_kills": 1, "run_timeout": 120}
"""Small batches and a short interval: runs of half a second with several checkpoints each."""
CLI_TIMEOUT = 300.0
"""Seconds a ``flowstate chaos`` command may take before the test gives up on it (a guard, not a measurement)."""


def write_job(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    job = directory / "job.py"
    job.write_text(body)
    return job


@pytest.fixture(scope="module")
def sequence_report(tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    root = tmp_path_factory.mktemp("sequence")
    job = write_job(root, "from flowstate.testing.oracles.sequence import sequence_job\n"
                          f"flow = sequence_job('out', count={SEQUENCE_COUNT})\n")
    config = ChaosConfig(str(job), modes=MODES, kills=4, seed=11, oracles=(sequence.oracle(count=SEQUENCE_COUNT),),
                         **SETTINGS)
    return run_chaos(config, root / "runs")


@pytest.fixture(scope="module")
def bank_report(tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    """Every completed checkpoint is retained, so that the audit after each run sees all of them."""
    root = tmp_path_factory.mktemp("bank")
    job = write_job(root, f"from flowstate.testing.oracles.bank import bank\nflow = bank('out', {BANK_COUNT})\n")
    config = ChaosConfig(str(job), modes=MODES, kills=2, seed=12, retained=1000, oracles=(bank.oracle(BANK_COUNT),),
                         **SETTINGS)
    return run_chaos(config, root / "runs")


@pytest.fixture(scope="module", params=["heap", "rocksdb"])
def mutable_state_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    """One mode, kills at random moments and at two failpoints: every run's checkpoints are checked as
    consistent cuts, which a snapshot sharing the dict with the task is not."""
    root = tmp_path_factory.mktemp(f"mutable-{request.param}")
    job = write_job(root, "from flowstate.testing.oracles.sequence import sequence_job\n"
                          f"flow = sequence_job('out', count={SEQUENCE_COUNT}, mutable_state=True)\n")
    config = ChaosConfig(str(job), modes=("exactly_once",), kills=3, seed=13, state_backend=request.param,
                         failpoints=(fpn.TASK_BEFORE_FORWARD, fpn.COORDINATOR_AFTER_METADATA),
                         oracles=(sequence.oracle(count=SEQUENCE_COUNT),), **SETTINGS)
    return run_chaos(config, root / "runs")


def assert_guarantees_held(report: ChaosReport, modes: tuple[str, ...] = MODES) -> None:
    assert report.ok, report.table()
    assert set(report.modes) == set(modes)
    for scenario in report.scenarios:
        assert scenario.lost == 0, report.table()
        if scenario.mode in EXACTLY_ONCE_MODES:
            assert scenario.duplicated == scenario.unexpected == 0, report.table()
    for mode in modes:
        scenarios = [s for s in report.scenarios if s.mode == mode]
        assert sum(s.kills_after_checkpoint for s in scenarios) >= 1, report.table()
        assert any(c >= 1 for s in scenarios for c in s.restored_from), f"{mode} never restored a checkpoint\n{report.table()}"
        assert sum(s.resumed for s in scenarios) >= 1, f"{mode}: no completed run resumed\n{report.table()}"
        assert report.scenario(mode, RANDOM).kills >= 1, report.table()


def test_the_sequence_workload_loses_duplicates_and_reorders_nothing_under_kills_in_every_mode(sequence_report):
    assert_guarantees_held(sequence_report)
    assert sequence_report.total("records") >= 20 * SEQUENCE_COUNT


def test_the_bank_workload_conserves_money_in_every_checkpoint_and_credits_every_transfer_under_kills(bank_report):
    assert_guarantees_held(bank_report)
    assert bank_report.total("records") >= 20 * BANK_COUNT


def test_a_job_counting_in_a_dict_changed_in_place_is_exactly_once_under_kills_on_each_backend(mutable_state_report):
    assert_guarantees_held(mutable_state_report, ("exactly_once",))
    assert mutable_state_report.total("records") >= 3 * SEQUENCE_COUNT


def test_the_gate_kills_fifty_times_and_every_reachable_failpoint_a_few_times(
    sequence_report, bank_report, capsys: pytest.CaptureFixture[str],
):
    reports = [sequence_report, bank_report]
    tables = "\n\n".join(r.table() for r in reports)
    with capsys.disabled():
        print(f"\n{tables}")
    assert sum(r.kills for r in reports) >= MIN_KILLS, tables
    reached = {s.where for r in reports for s in r.scenarios if s.reached and s.where != RANDOM}
    assert reached, tables
    for name in sorted(reached):
        kills = sum(s.kills for r in reports for s in r.scenarios if s.where == name)
        assert kills >= MIN_KILLS_PER_FAILPOINT, f"{name} was killed at {kills} times\n{tables}"
    # Alignment is a feature of exactly_once: at_least_once only counts barriers, and says so.
    assert not sequence_report.scenario("at_least_once", fpn.ALIGNMENT_BLOCKED).reached
    assert sequence_report.scenario("exactly_once", fpn.ALIGNMENT_BLOCKED).reached


# ---- the runner catches a broken guarantee -------------------------------------------------------------

BROKEN_SINKS = '''\
import json
import os

import flowstate as fs
from flowstate.testing.oracles import sequence


class Eager:
    """Appends every record to a visible file at once, before any checkpoint completes: after a
    restore, the replayed records are appended again."""

    def __init__(self, writer, path):
        self.writer = writer
        self.file = open(path, "a", encoding="utf-8")

    def write_batch(self, records):
        self.file.write("".join(json.dumps(r) + "\\n" for r in records))
        self.file.flush()

    def pre_commit(self, checkpoint_id):
        self.writer.pre_commit(checkpoint_id)

    def snapshot(self):
        return self.writer.snapshot()

    def commit(self, checkpoint_id):
        self.writer.commit(checkpoint_id)

    def finish(self):
        self.writer.finish()

    def close(self):
        self.file.close()
        self.writer.close()


class Forgetful(Eager):
    """Writes through the file sink but leaves its pending files out of its snapshot: a restore
    deletes them instead of committing them."""

    def write_batch(self, records):
        self.writer.write_batch(records)

    def snapshot(self):
        return dict(self.writer.snapshot(), pending=[])


class EagerFileSink(fs.FileSink):
    __slots__ = ()

    def build_writer(self, subtask, parallelism, resume_state):
        writer = super().build_writer(subtask, parallelism, resume_state)
        return Eager(writer, os.path.join(self.directory, f"eager-{subtask}.jsonl"))


class ForgetfulFileSink(fs.FileSink):
    __slots__ = ()

    def build_writer(self, subtask, parallelism, resume_state):
        writer = super().build_writer(subtask, parallelism, resume_state)
        return Forgetful(writer, os.devnull)


COUNT = 4000
eager = sequence.sequence_job("out", count=COUNT, sink=EagerFileSink("out"))
forgetful = sequence.sequence_job("out", count=COUNT, sink=ForgetfulFileSink("out"))
oracle = sequence.oracle(count=COUNT)
'''


def chaos_command(job: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowstate", "chaos", job, "--checkpoint-interval", "50ms", "--batch-size", "64",
         "--kills", "0", "--failpoint-kills", "2", "--seed", "5", *args],
        check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(("sink", "mode", "failpoint", "exit_code", "finding"), [
    pytest.param("eager", "exactly_once", fpn.COORDINATOR_BEFORE_METADATA, 1, "duplicated",
                 id="a sink writing visibly before the checkpoint completes duplicates records"),
    pytest.param("eager", "at_least_once", fpn.COORDINATOR_BEFORE_METADATA, 0, "duplicated",
                 id="at_least_once counts the duplicates and allows them"),
    pytest.param("forgetful", "at_least_once", fpn.COORDINATOR_AFTER_METADATA, 1, "lost",
                 id="a sink forgetting its pending files loses records, which no mode allows"),
])
def test_the_runner_reports_a_broken_guarantee_and_exits_non_zero(tmp_path, sink, mode, failpoint, exit_code, finding):
    job = write_job(tmp_path, BROKEN_SINKS)

    done = chaos_command(f"{job}:{sink}", "--mode", mode, "--failpoints", failpoint, "--oracle", f"{job}:oracle",
                         "--json")

    assert done.returncode == exit_code, done.stdout + done.stderr
    report = json.loads(done.stdout)
    scenario = next(s for s in report["scenarios"] if s["where"] == failpoint)
    assert scenario["kills"] >= 1 and scenario[finding] > 0, report
    assert report[finding] > 0
    if exit_code:
        assert scenario["status"] == "FAILED"
        assert any("sequence output check" in p for p in scenario["problems"]), "the oracle agrees"


def test_the_table_names_each_failpoint_with_its_kills_restores_and_findings(tmp_path):
    job = write_job(tmp_path, BROKEN_SINKS)

    done = chaos_command(f"{job}:eager", "--failpoints", fpn.COORDINATOR_BEFORE_METADATA)

    assert done.returncode == 1, done.stderr
    header, row = [line.split() for line in done.stdout.splitlines()[2:4]]
    assert header[:4] == ["mode", "kills", "at", "kills"] and header[-4:] == ["lost", "dup", "unexp", "result"]
    assert row[:3] == ["exactly_once", fpn.COORDINATOR_BEFORE_METADATA, "2"] and row[-1] == "FAILED"
    assert int(row[-3]) > 0, done.stdout
    assert "DIFFERENCES FOUND after 2 kills" in done.stdout
    assert "run directories: " in done.stdout, "kept for inspection after a difference"
    assert "chaos: kills at failpoints" in done.stderr, "plain progress lines when stderr is not a terminal"
    assert "\r" not in done.stderr


REWINDING = '''\
import flowstate as fs
from flowstate.testing.oracles import sequence


class RewindingSource(fs.GeneratorSource):
    """Ignores its resume state: every run reads its splits from the start."""

    __slots__ = ()

    def build_reader(self, splits, resume_state):
        return super().build_reader(splits, None)


flow = fs.Dataflow("sequence", parallelism=2)
(flow.source(RewindingSource(sequence._Records(4), 3000, splits=4, name="sequence"), uid="sequence")
     .key_by(lambda r: r[0])
     .process(sequence.Track(), uid=sequence.TRACK_UID)
     .sink(fs.FileSink("out"), uid="out"))
'''


def test_a_run_that_reads_the_whole_input_again_after_a_restore_is_reported(tmp_path):
    job = write_job(tmp_path, REWINDING)
    config = ChaosConfig(str(job), kills=0, failpoints=(fpn.COORDINATOR_AFTER_METADATA,), failpoint_kills=1, seed=3,
                         checkpoint_interval="50ms", batch_size=64)

    report = run_chaos(config, tmp_path / "runs")

    assert not report.ok
    scenario = report.scenario("exactly_once", fpn.COORDINATOR_AFTER_METADATA)
    assert scenario.kills == 1 and scenario.resumed == 0, report.table()
    assert any("3,000 records of the input" in p for p in scenario.problems), report.table()
    assert any("no run that completed after a kill resumed" in p for p in report.problems), report.table()


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "none"], "mode none takes no checkpoints"),
    (["--mode", "sometimes"], "unknown mode 'sometimes'"),
    (["--failpoints", "disk.on_fire"], "unknown failpoints disk.on_fire"),
    (["--oracle", "no_such_module:oracle"], "cannot import oracle module 'no_such_module'"),
])
def test_a_mistake_in_the_command_exits_2_before_running_anything(tmp_path, args, message):
    job = write_job(tmp_path, BROKEN_SINKS)

    done = chaos_command(f"{job}:eager", *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr


def test_a_job_without_a_file_sink_is_a_mistake_in_the_job(tmp_path):
    job = write_job(tmp_path, "import flowstate as fs\nflow = fs.Dataflow('nothing')\n"
                              "flow.source(fs.GeneratorSource(str, 10)).sink(fs.PrintSink())\n")

    done = chaos_command(str(job))

    assert done.returncode == 2, done.stdout + done.stderr
    assert "has no FileSink and no sink that reads its output back from its server" in done.stderr
