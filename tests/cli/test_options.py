"""Each setting of a job is declared once, as a field of an Options group; ``flowstate run`` has
exactly one option per field and no other (besides its own ``--stop-timeout`` and the logging
options), and a duration reads the same in ``fs.run``, on the command line and in every command.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer

import flowstate as fs
from flowstate import cli
from flowstate.cli.commands import app
from flowstate.cli.options import LogOptions, RunCommandOptions, flag
from flowstate.execution import job_config
from flowstate.options import FLAT_KEYWORDS, GROUPS, from_flat
from flowstate.runner.status import JobProgress, progress_line

JOB = '''\
import flowstate as fs

flow = fs.Dataflow("copy")
flow.source(fs.GeneratorSource(lambda i: i, count=10)).sink(fs.FileSink({output!r}))
'''

DURATIONS = ["500ms", "0.5", "1s", "2m", "2min", "1h30m", "90", "1.5s"]


def command(name: str) -> Any:
    """The click command behind ``flowstate NAME`` (``checkpoints list`` for a group)."""
    root = typer.main.get_command(app)
    found = root
    for part in name.split():
        found = found.commands[part]  # type: ignore[attr-defined]
    return found


def option_names(name: str) -> list[str]:
    return [opt for param in command(name).params if param.param_type_name == "option"
            for opt in param.opts if opt not in ("--help", "-h")]


def run_fields() -> list[Any]:
    return [f for group in (*GROUPS.values(), RunCommandOptions, LogOptions) for f in fields(group)]


def test_every_field_of_every_group_is_exactly_one_option_of_run_and_every_option_is_a_field() -> None:
    options = Counter(option_names("run"))
    flags = Counter(flag(f) for f in run_fields())

    assert [o for o, n in options.items() if n > 1] == [], "an option declared twice"
    assert [f for f, n in flags.items() if n > 1] == [], "two fields with one flag"
    assert set(options) == set(flags)


def test_run_help_lists_every_option_once(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")

    assert cli.main(["run", "--help"]) == 0

    text = capsys.readouterr().out
    for f in run_fields():
        listed = re.findall(rf"^\W*{re.escape(flag(f))}(?![\w-])", text, re.M)  # at the start of a row
        assert len(listed) == 1, (flag(f), text)
    for keyword in GROUPS:
        assert keyword in text, f"the options of {keyword}= are listed under its name"


@pytest.mark.parametrize("name", ["run", "status", "checkpoint", "savepoint", "stop", "chaos", "ui", "demo",
                                  "postgres-slots", "checkpoints list", "checkpoints verify", "checkpoints doctor"])
def test_no_command_declares_an_option_twice_and_every_command_has_the_logging_options(name: str) -> None:
    options = Counter(option_names(name))

    assert [o for o, n in options.items() if n > 1] == []
    assert {"--log-level", "--log-format"} <= set(options)


@pytest.mark.parametrize("name", ["run", "status", "checkpoint", "savepoint", "stop", "chaos"])
def test_timeout_is_a_duration_in_every_command_that_has_one(name: str) -> None:
    (timeout,) = [p for p in command(name).params if "--timeout" in p.opts]

    assert isinstance(timeout.default, str) and fs.CheckpointOptions(timeout=timeout.default).timeout > 0


# ---- durations ---------------------------------------------------------------------------------------


class Captured(Exception):
    """Raised by the stand-in of ``fs.run`` with the groups it was given."""

    def __init__(self, groups: dict[str, Any]) -> None:
        super().__init__("captured")
        self.groups = groups


def groups_of_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str) -> dict[str, Any]:
    """The groups ``flowstate run JOB OPTIONS`` hands to ``fs.run``."""
    import flowstate.execution

    def capture(flow: fs.Dataflow, **groups: Any) -> None:
        raise Captured(groups)

    job = tmp_path / "job.py"
    job.write_text(JOB.format(output=str(tmp_path / "out")))
    monkeypatch.setattr(flowstate.execution, "run", capture)
    with pytest.raises(Captured) as captured:
        cli.main(["run", str(job), "--checkpoint-dir", str(tmp_path / "chk"), *options])
    return captured.value.groups


@pytest.mark.parametrize("text", DURATIONS)
def test_a_duration_reads_the_same_in_fs_run_and_on_the_command_line(
        text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    groups = groups_of_command_line(tmp_path, monkeypatch, "--interval", text, "--timeout", text,
                                    "--min-pause", text, "--alignment-timeout", text)
    python = fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=text, timeout=text, min_pause=text,
                                  alignment_timeout=text)

    given = groups["checkpoints"]
    assert (given.interval, given.timeout, given.min_pause, given.alignment_timeout) == \
           (python.interval, python.timeout, python.min_pause, python.alignment_timeout)
    config = job_config(checkpoints=python, state=fs.StateOptions(), recovery=fs.RecoveryOptions(),
                        execution=fs.ExecutionOptions(), endpoints=fs.EndpointOptions())
    assert config.checkpoint.interval == config.checkpoint.timeout == given.interval


def test_seconds_strings_and_timedeltas_are_the_same_duration() -> None:
    forms = [1.5, "1.5", "1.5s", "1500ms", timedelta(seconds=1.5), "1s500ms"]

    assert {fs.CheckpointOptions(interval=form).interval for form in forms} == {1.5}


@pytest.mark.parametrize("text", ["fast", "-1s", "1x", ""])
def test_a_duration_that_cannot_be_read_is_refused_in_python_and_exits_2_on_the_command_line_with_one_line(
        text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(fs.ConfigError, match="interval"):
        fs.CheckpointOptions(interval=text)

    job = tmp_path / "job.py"
    job.write_text(JOB.format(output=str(tmp_path / "out")))
    assert cli.main(["run", str(job), "--checkpoint-dir", str(tmp_path / "chk"), "--interval", text]) == 2

    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and error[0].startswith("flowstate: error:") and "interval" in error[0], error
    assert not (tmp_path / "out").exists()


def test_the_timeout_of_a_control_command_is_read_as_a_duration(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import flowstate.control.endpoint as control

    asked: list[float] = []
    monkeypatch.setattr(control, "read_endpoint", lambda directory: object())
    monkeypatch.setattr(control, "call", lambda endpoint, method, path, *body, timeout: asked.append(timeout) or {})

    assert cli.main(["status", "chk", "--timeout", "500ms"]) == 0
    assert cli.main(["status", "chk", "--timeout", "2m"]) == 0
    assert cli.main(["status", "chk", "--timeout", "soon"]) == 2

    assert asked == [0.5, 120.0]
    assert capsys.readouterr().err.splitlines() == [
        "flowstate: error: cannot read timeout 'soon': use seconds, a timedelta or a unit, e.g. 0.5, 500ms, 1s, 2m, 1h30m"]


# ---- flags and defaults ------------------------------------------------------------------------------


def test_a_flag_sets_the_opposite_of_the_command_lines_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = groups_of_command_line(tmp_path, monkeypatch)
    flagged = groups_of_command_line(tmp_path, monkeypatch, "--full-checkpoints", "--fresh", "--no-control", "--quiet")
    valued = groups_of_command_line(tmp_path, monkeypatch, "--retained", "3", "--state-backend", "rocksdb")

    assert (default["state"].incremental, default["recovery"].fresh, default["endpoints"].control,
            default["execution"].progress) == (True, False, True, True)
    assert (flagged["state"].incremental, flagged["recovery"].fresh, flagged["endpoints"].control,
            flagged["execution"].progress) == (False, True, False, False)
    assert (valued["checkpoints"].retained, valued["state"].backend) == (3, "rocksdb")


def test_the_command_lines_defaults_are_those_of_fs_run_except_progress_and_control(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = groups_of_command_line(tmp_path, monkeypatch)

    for keyword, group in GROUPS.items():
        python = group(checkpoint_dir=str(tmp_path / "chk")) if keyword == "checkpoints" else group()
        differ = {f.name for f in fields(group) if getattr(python, f.name) != getattr(given[keyword], f.name)}
        assert differ == {"execution": {"progress"}, "endpoints": {"control"}}.get(keyword, set()), keyword


# ---- the deprecated flat keywords --------------------------------------------------------------------


def test_a_flat_keyword_sets_the_field_of_its_group_on_top_of_a_group_given() -> None:
    groups = from_flat({"checkpoints": fs.CheckpointOptions(checkpoint_dir="chk", interval="2s")},
                       {"retained": 3, "state_backend": "rocksdb", "incremental": False})

    assert (groups["checkpoints"].checkpoint_dir, groups["checkpoints"].interval, groups["checkpoints"].retained) == \
           ("chk", 2.0, 3)
    assert (groups["state"].backend, groups["state"].incremental) == ("rocksdb", False)
    assert set(FLAT_KEYWORDS) >= {"checkpoint_dir", "interval", "state_backend", "state_dir", "control_endpoint"}


def test_fs_run_with_flat_keywords_warns_that_they_are_deprecated_and_still_runs(tmp_path: Path) -> None:
    flow = fs.Dataflow("copy")
    flow.source(fs.GeneratorSource(lambda i: i, count=10)).sink(fs.FileSink(tmp_path / "out"))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fs.run(flow, checkpoint_dir=tmp_path / "chk", interval="50ms")

    assert [w.category for w in caught if "deprecated" in str(w.message)] == [DeprecationWarning]
    assert "checkpoints=CheckpointOptions(...)" in str(caught[0].message)
    assert result.records == 10


def test_an_unknown_keyword_is_a_type_error_and_a_group_of_the_wrong_kind_a_config_error() -> None:
    flow = fs.Dataflow("copy")
    flow.source(fs.GeneratorSource(lambda i: i, count=10)).sink(fs.PrintSink())

    with pytest.raises(TypeError, match="intervall"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            fs.run(flow, intervall="1s")
    with pytest.raises(fs.ConfigError, match="checkpoints=.*CheckpointOptions.*StateOptions"):
        fs.run(flow, checkpoints=fs.StateOptions())  # type: ignore[arg-type]


# ---- the progress line -------------------------------------------------------------------------------


def test_the_progress_line_shows_the_job_the_share_read_as_a_bar_the_rate_and_the_checkpoints() -> None:
    line = progress_line(JobProgress("wordcount", "1,000 records read", 2500.4, done=0.5, checkpoints=3,
                                     last_checkpoint=3, last_checkpoint_seconds=0.012, restarts=1))

    assert line == ("[wordcount] 1,000 records read · ━━━━━━━━━━────────── 50% of the input · 2,500 rec/s · "
                    "checkpoints 3 completed (last #3 in 12 ms) · restarts 1")


def test_the_final_progress_line_of_a_job_without_checkpoints_says_avg_and_no_checkpoints() -> None:
    line = progress_line(JobProgress("copy", "10 records read", 10.0, final=True))

    assert line == "[copy] 10 records read · 10 rec/s avg · restarts 0"
