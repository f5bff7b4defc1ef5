"""``fs.run`` reads its string settings with the same code as the options of ``flowstate run``.

The README shows ``restart="fixed:3:0.5"``: a string restart strategy must work from Python exactly
as ``--restart fixed:3:0.5`` works on the command line, also when the job actually fails.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.config import ExponentialBackoffRestart, FixedDelayRestart, NoRestart, parse_restart

from .conftest import Dirs
from .jobs import committed_values


def flaky_job(dirs: Dirs) -> fs.Dataflow:
    flow = fs.Dataflow("flaky")
    (flow.source(fs.GeneratorSource(lambda i: f"r{i}", count=300, splits=1), uid="numbers")
         .sink(fs.FileSink(dirs.output), uid="out"))
    return flow


def test_a_string_restart_strategy_restarts_a_failed_job_as_the_cli_option_does(dirs: Dirs) -> None:
    # The first checkpoint's metadata write fails once: one restart, then the job completes.
    failpoints = fs.Failpoints({"coordinator.metadata_before_notify": "raise@1"})

    result = fs.run(
        flaky_job(dirs),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval="50ms"),
        recovery=fs.RecoveryOptions(restart="fixed:3:0.01"),
        failpoints=failpoints,
    )

    assert result.restarts == 1
    assert sorted(committed_values(dirs.output)) == sorted(f"r{i}" for i in range(300))


def test_a_string_restart_strategy_that_gives_up_raises_job_failed_with_the_cause(dirs: Dirs) -> None:
    failpoints = fs.Failpoints({"coordinator.metadata_before_notify": "raise"})

    with pytest.raises(fs.JobFailedError, match=r"gave up after 1 restart\(s\)") as failed:
        fs.run(
            flaky_job(dirs),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval="50ms"),
            recovery=fs.RecoveryOptions(restart="fixed:1:0.01"),
            failpoints=failpoints,
        )
    assert "failpoint coordinator.metadata_before_notify" in str(failed.value), "the cause is kept"


@pytest.mark.parametrize(("text", "strategy"), [
    ("none", NoRestart()),
    ("fixed:3:0.5", FixedDelayRestart(3, 0.5)),
    ("fixed:2:500ms", FixedDelayRestart(2, 0.5)),
    ("exponential:4:0.1:2s", ExponentialBackoffRestart(4, 0.1, 2.0)),
])
def test_restart_strings_read_the_same_in_python_and_on_the_command_line(text: str, strategy: object) -> None:
    from flowstate import cli

    assert parse_restart(text) == strategy
    assert cli.parse_restart is parse_restart  # one reader for both


@pytest.mark.parametrize("bad", ["fixed:x", "sometimes", "fixed:1:2:3"])
def test_an_unreadable_restart_string_is_a_config_error_before_anything_runs(dirs: Dirs, bad: str) -> None:
    with pytest.raises(fs.ConfigError, match="cannot read restart strategy"):
        fs.run(
            flaky_job(dirs),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints),
            recovery=fs.RecoveryOptions(restart=bad),
        )
    assert not dirs.checkpoints.exists()


def test_a_restart_that_is_neither_a_strategy_nor_a_string_is_a_config_error(dirs: Dirs) -> None:
    with pytest.raises(fs.ConfigError, match="restart must be a restart strategy"):
        fs.run(
            flaky_job(dirs),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints),
            recovery=fs.RecoveryOptions(restart=3),  # type: ignore[arg-type]
        )


def test_a_run_ended_by_a_stop_says_stopped_and_one_that_read_all_its_input_does_not(dirs: Dirs) -> None:
    def slow_job(output: Path) -> fs.Dataflow:
        flow = fs.Dataflow("slow")
        (flow.source(fs.GeneratorSource(lambda i: i, count=100_000, splits=1, rate=2000.0), uid="numbers")
             .sink(fs.FileSink(output), uid="out"))
        return flow

    control = fs.JobControl()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(fs.run, slow_job(dirs.output),
                              checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval="100ms"),
                              control=control)
        assert control.stop().result(timeout=60)["stopped"]
        stopped = running.result(timeout=60)

    assert stopped.stopped and 0 < len(committed_values(dirs.output)) < 100_000

    other = Dirs(dirs.output.with_name("finished-output"), dirs.checkpoints.with_name("finished-checkpoints"))
    finished = fs.run(
        flaky_job(other),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=other.checkpoints, interval="50ms"),
    )
    assert not finished.stopped and len(committed_values(other.output)) == 300


def test_a_request_asked_after_the_run_ended_fails_at_once_instead_of_waiting_forever(dirs: Dirs) -> None:
    control = fs.JobControl()
    fs.run(
        flaky_job(dirs),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval="50ms"),
        control=control,
    )

    late = control.stop()

    assert late.done()
    with pytest.raises(fs.ControlError, match="the job ended before the request was served"):
        late.result(timeout=0)
