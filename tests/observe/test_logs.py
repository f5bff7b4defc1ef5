"""``--log-level`` and ``--log-format json`` of the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from flowstate.cli import main

JOB = """
import flowstate as fs
flow = fs.Dataflow("tiny")
flow.source(fs.GeneratorSource(lambda i: i, count=100)).map(lambda x: x + 1).sink(lambda r: None)
"""


@pytest.fixture(autouse=True)
def restore_the_logger() -> None:
    logger = logging.getLogger("flowstate")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_json_logs_are_one_object_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    assert main(["run", str(job), "--mode", "none", "--quiet", "--log-format", "json"]) == 0
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    finished = [e for e in entries if e["message"].startswith("job 'tiny' finished: 100 records")]
    assert len(finished) == 1
    assert finished[0]["level"] == "info" and finished[0]["logger"] == "flowstate"
    assert finished[0]["time"].endswith("+00:00")


def test_the_log_level_hides_what_is_below_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    assert main(["run", str(job), "--mode", "none", "--quiet", "--log-level", "warning"]) == 0
    assert "finished" not in capsys.readouterr().err
    assert main(["run", str(job), "--mode", "none", "--quiet"]) == 0
    assert "flowstate: job 'tiny' finished: 100 records" in capsys.readouterr().err


def test_the_log_options_are_accepted_after_a_nested_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "doctor", str(tmp_path), "--log-level", "debug"]) == 0
    assert "No checkpoint history" in capsys.readouterr().out
