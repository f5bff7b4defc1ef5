"""The chaos report's table and verdict, and the progress display, on hand-made results."""

from __future__ import annotations

import io

import pytest

from flowstate.errors import ConfigError
from flowstate.testing import ChaosConfig, ChaosReport, Progress, ScenarioResult
from flowstate.testing.chaos import RANDOM, parse_failpoint_selection


def scenario(mode: str, where: str, **fields) -> ScenarioResult:
    result = ScenarioResult(mode, where)
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def report(*scenarios: ScenarioResult, modes=("exactly_once",)) -> ChaosReport:
    return ChaosReport("job.py", modes, 7, list(scenarios))


def test_a_clean_report_is_ok_and_says_what_survived():
    done = report(scenario("exactly_once", RANDOM, kills=3, kills_after_checkpoint=2, restored_from=[1, 2, 0],
                           jobs=2, records=200),
                  scenario("exactly_once", "sink.before_commit", kills=2, kills_after_checkpoint=2,
                           restored_from=[4, 5], jobs=2, records=200))

    assert done.ok and done.kills == 5
    table = done.table()
    assert "1 2 0" in table and "4 5" in table
    assert table.splitlines()[-1] == "exactly-once held after 5 kills, 400 records checked: 0 lost, 0 duplicated, 0 unexpected"


def test_a_problem_fails_the_report_and_is_listed_under_the_table():
    done = report(scenario("exactly_once", "task.before_snapshot", kills=1, lost=3, problems=["3 records lost"]))

    assert not done.ok
    assert done.scenario("exactly_once", "task.before_snapshot").status == "FAILED"
    assert "  - exactly_once / task.before_snapshot: 3 records lost" in done.table()
    assert done.verdict().startswith("DIFFERENCES FOUND after 1 kills")


def test_a_failpoint_a_mode_does_not_reach_is_shown_as_such_and_one_that_never_fired_as_missed():
    done = report(scenario("at_least_once", "alignment.channel_blocked", reached=False),
                  scenario("at_least_once", "sink.after_commit", not_fired=3), modes=("at_least_once",))

    lines = done.table().splitlines()
    assert any("alignment.channel_blocked" in line and line.endswith("-  not reached") for line in lines)
    assert any("sink.after_commit" in line and line.endswith("missed") for line in lines)
    assert done.ok, "neither is a difference in the output"


def test_duplicates_in_at_least_once_are_counted_and_allowed():
    done = report(scenario("at_least_once", RANDOM, kills=2, duplicated=40), modes=("at_least_once",))

    assert done.ok
    assert "40 duplicated" in done.verdict() and "allowed in at_least_once only" in done.verdict()


def test_the_json_summary_holds_the_totals_and_every_scenario():
    done = report(scenario("exactly_once", RANDOM, kills=2, records=10, restored_from=[3]))

    summary = done.to_dict()

    assert (summary["ok"], summary["kills"], summary["records"]) == (True, 2, 10)
    assert summary["scenarios"][0]["restored_from"] == [3] and summary["scenarios"][0]["status"] == "ok"


def test_progress_on_a_terminal_redraws_one_line():
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    progress.plan(4)
    progress.advance(1, "exactly_once · random moments", failed=False)
    progress.close()

    assert stream.getvalue().count("\r") >= 3 and "\n" not in stream.getvalue()
    assert "[######------------------] 1/4 kills" in stream.getvalue()


def test_progress_elsewhere_prints_plain_lines():
    stream = io.StringIO()
    progress = Progress(stream, tty=False, every=0.0)
    progress.phase("kills at random moments")
    progress.plan(2)
    progress.advance(2, "unaligned · random moments", failed=True)
    progress.close()

    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "chaos: kills at random moments"
    assert lines[-1].startswith("chaos: 2/2 kills") and lines[-1].endswith("unaligned · random moments · 1 FAILED")


@pytest.mark.parametrize(("text", "selection"), [("all", None), ("none", ()), ("a.b, c.d", ("a.b", "c.d"))])
def test_the_failpoint_selection_reads_all_none_or_a_list(text, selection):
    assert parse_failpoint_selection(text) == selection


@pytest.mark.parametrize(("settings", "message"), [
    ({"modes": ("none",)}, "mode none takes no checkpoints"),
    ({"modes": ("exactly_once", "exactly-once")}, "a mode is given twice"),
    ({"kills": -1}, "kills must be ≥ 0"),
    ({"workers": 0}, "workers must be ≥ 1"),
    ({"batch_size": 0}, "batch_size must be ≥ 1"),
    ({"failpoints": ("disk.on_fire",)}, "unknown failpoints disk.on_fire"),
    ({"checkpoint_interval": "soon"}, "cannot read checkpoint interval 'soon'"),
])
def test_a_bad_setting_is_refused_with_its_name(settings, message):
    with pytest.raises(ConfigError, match=message):
        ChaosConfig("job.py", **settings)
