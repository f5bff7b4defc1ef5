"""The ``flowstate`` command line, run as a child process the way a user runs it.

Exit status: 0 when the job finished with its output committed, 1 when the job failed, 2 for a
mistake in the command, the job file or the configuration. Error messages go to stderr and name
what is wrong and what is accepted instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from flowstate.storage.listing import format_size

TIMEOUT = 60.0
"""Seconds a command may take before the test gives up on it: a guard against a hang, not a measurement."""
FLOWSTATE = [sys.executable, "-m", "flowstate"]
SCRIPT = Path(sys.executable).parent / "flowstate"
"""The console script installed next to the interpreter that runs the tests."""

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"

COUNT = '''\
import flowstate as fs


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


def wordcount(name, source, output):
    flow = fs.Dataflow(name, parallelism=2)
    (flow.source(fs.FileSource(source), uid="lines")
         .flat_map(str.split, uid="words")
         .key_by(lambda word: word)
         .process(Count(), uid="count")
         .sink(fs.FileSink(output), uid="counts"))
    return flow
'''

ONE_FLOW = COUNT + '''
flow = wordcount("wordcount", {input!r}, {output!r})
'''

TWO_FLOWS = COUNT + '''
first = wordcount("first", {input!r}, {first!r})
second = wordcount("second", {input!r}, {second!r})
'''

NO_FLOW = '''\
import flowstate as fs

not_a_flow = "wordcount"
'''

ALWAYS_RAISES = '''\
import flowstate as fs


def explode(line):
    raise ValueError("no line is welcome")


flow = fs.Dataflow("always-raises")
flow.source(fs.FileSource({input!r})).map(explode).sink(fs.FileSink({output!r}))
'''


def expected_counts(text: str = TEXT) -> Counter[tuple[str, int]]:
    """The batch result: every (word, n) for n = 1..count(word), once."""
    counts = Counter(text.split())
    return Counter((word, n) for word, count in counts.items() for n in range(1, count + 1))


def committed_records(directory: Path) -> Counter[tuple[str, int]]:
    """Records of committed files; in-progress and pending files start with '.' and do not count."""
    records: Counter[tuple[str, int]] = Counter()
    for path in sorted(directory.iterdir()):
        if not path.name.startswith("."):
            with open(path) as f:
                records.update((word, n) for word, n in map(json.loads, f))
    return records


def flowstate(*args: str, cwd: Path, command: list[str] = FLOWSTATE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def job(tmp_path: Path, text: Path) -> Path:
    """A word count job over ``text`` writing to ``tmp_path/out``."""
    path = tmp_path / "job.py"
    path.write_text(ONE_FLOW.format(input=str(text), output=str(tmp_path / "out")))
    return path


# ---- run --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exactly_once", "at_least_once", "stop_the_world"])
def test_run_exits_0_with_every_count_committed(tmp_path: Path, job: Path, mode: str) -> None:
    result = flowstate("run", job.name, "--checkpoint-dir", "chk", "--mode", mode, "--interval", "100ms",
                       cwd=tmp_path)

    assert result.returncode == 0, shown(result)
    assert committed_records(tmp_path / "out") == expected_counts()
    assert "finished" in result.stderr


def test_run_of_a_file_with_two_dataflows_exits_2_listing_them_and_runs_nothing(tmp_path: Path, text: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(TWO_FLOWS.format(input=str(text), first=str(tmp_path / "first"), second=str(tmp_path / "second")))

    result = flowstate("run", str(job), "--checkpoint-dir", "chk", cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert re.search(r"\bfirst\b", result.stderr) and re.search(r"\bsecond\b", result.stderr), shown(result)
    assert "ATTR" in result.stderr, shown(result)
    assert not (tmp_path / "first").exists() and not (tmp_path / "second").exists()
    assert not (tmp_path / "chk").exists()


def test_file_colon_attr_selects_one_of_several_dataflows(tmp_path: Path, text: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(TWO_FLOWS.format(input=str(text), first=str(tmp_path / "first"), second=str(tmp_path / "second")))

    result = flowstate("run", f"{job}:second", "--checkpoint-dir", "chk", "--interval", "100ms", cwd=tmp_path)

    assert result.returncode == 0, shown(result)
    assert committed_records(tmp_path / "second") == expected_counts()
    assert not (tmp_path / "first").exists()


def test_file_colon_attr_naming_nothing_in_the_file_exits_2_naming_the_attribute(tmp_path: Path, job: Path) -> None:
    result = flowstate("run", f"{job}:third", "--checkpoint-dir", "chk", cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert "'third'" in result.stderr, shown(result)


def test_run_of_a_file_without_a_dataflow_exits_2(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(NO_FLOW)

    result = flowstate("run", str(job), "--checkpoint-dir", "chk", cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert "Dataflow" in result.stderr, shown(result)


@pytest.mark.parametrize(
    ("source", "complaint"),
    [
        pytest.param('import flowstate as fs\n\nflow = fs.Dataflow("broken"\n', "SyntaxError", id="syntax error"),
        pytest.param('import flowstate as fs\n\nflow = fs.Dataflow("x")\nflow.source(fs.FileSource("nothing-*.txt"))\n',
                     "nothing-*.txt", id="source without input"),
    ],
)
def test_a_job_file_that_raises_while_loading_exits_2_naming_the_file_and_the_error(
    tmp_path: Path, source: str, complaint: str,
) -> None:
    job = tmp_path / "job.py"
    job.write_text(source)

    result = flowstate("run", "job.py", "--checkpoint-dir", "chk", cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert "job.py" in result.stderr and complaint in result.stderr, shown(result)
    assert "Traceback" not in result.stderr, shown(result)


@pytest.mark.parametrize(("options", "where"), [
    (["--executor", "threads"], "on threads"),
    (["--executor", "processes", "--workers", "2"], "on 2 worker process(es)"),
    ([], "worker process(es)"),
])
def test_run_executes_on_the_executor_chosen_and_says_where(tmp_path: Path, job: Path, options, where) -> None:
    result = flowstate("run", job.name, "--checkpoint-dir", "chk", "--interval", "100ms", *options, cwd=tmp_path)

    assert result.returncode == 0, shown(result)
    assert committed_records(tmp_path / "out") == expected_counts()
    assert where in result.stderr, shown(result)


def test_workers_for_the_threads_executor_exit_2(tmp_path: Path, job: Path) -> None:
    result = flowstate("run", job.name, "--checkpoint-dir", "chk", "--executor", "threads", "--workers", "2",
                       cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert "workers=2 needs the processes or ray executor" in result.stderr, shown(result)


def test_an_unknown_mode_exits_2_naming_every_accepted_mode(tmp_path: Path, job: Path) -> None:
    result = flowstate("run", str(job), "--checkpoint-dir", "chk", "--mode", "exactly_twice", cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert "exactly_twice" in result.stderr, shown(result)
    for mode in ("exactly_once", "at_least_once", "stop_the_world", "none"):
        assert mode in result.stderr, shown(result)
    assert not (tmp_path / "out").exists()


def test_an_interval_that_is_not_a_duration_exits_2(tmp_path: Path, job: Path) -> None:
    result = flowstate("run", str(job), "--checkpoint-dir", "chk", "--interval", "fast", cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert "'fast'" in result.stderr and "interval" in result.stderr, shown(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("interval", ["500ms", "0.5", "1s"])
def test_an_interval_in_seconds_or_with_a_unit_is_accepted(tmp_path: Path, job: Path, interval: str) -> None:
    result = flowstate("run", str(job), "--checkpoint-dir", "chk", "--interval", interval, cwd=tmp_path)

    assert result.returncode == 0, shown(result)
    assert committed_records(tmp_path / "out") == expected_counts()


def test_exactly_once_without_a_checkpoint_dir_exits_2_asking_for_one(tmp_path: Path, job: Path) -> None:
    result = flowstate("run", str(job), "--mode", "exactly_once", cwd=tmp_path)

    assert result.returncode == 2, shown(result)
    assert "--checkpoint-dir" in result.stderr, shown(result)
    assert not (tmp_path / "out").exists()


def test_mode_none_runs_without_a_checkpoint_dir_and_writes_no_checkpoint(tmp_path: Path, job: Path) -> None:
    before = set(tmp_path.iterdir())

    result = flowstate("run", str(job), "--mode", "none", cwd=tmp_path)

    assert result.returncode == 0, shown(result)
    assert committed_records(tmp_path / "out") == expected_counts()
    assert set(tmp_path.iterdir()) - before == {tmp_path / "out"}


def test_a_user_function_that_always_raises_fails_the_job_with_exit_1_naming_the_operator_and_record(
    tmp_path: Path, text: Path,
) -> None:
    job = tmp_path / "job.py"
    job.write_text(ALWAYS_RAISES.format(input=str(text), output=str(tmp_path / "out")))

    result = flowstate("run", str(job), "--checkpoint-dir", "chk", "--restart", "fixed:1:0", cwd=tmp_path)

    assert result.returncode == 1, shown(result)
    assert "'explode'" in result.stderr, shown(result)
    assert repr(TEXT.splitlines()[0]) in result.stderr, shown(result)
    assert "no line is welcome" in result.stderr, shown(result)
    assert not committed_records(tmp_path / "out")


def test_fresh_discards_checkpoints_that_the_changed_job_cannot_restore(tmp_path: Path, text: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(ONE_FLOW.format(input=str(text), output=str(tmp_path / "out-1")))
    first = flowstate("run", str(job), "--checkpoint-dir", "chk", "--parallelism", "1", cwd=tmp_path)
    assert first.returncode == 0, shown(first)

    # The counter got another uid: its keyed state in the checkpoint maps to no operator.
    job.write_text(ONE_FLOW.replace('uid="count"', 'uid="tally"').format(input=str(text), output=str(tmp_path / "out-2")))
    changed = flowstate("run", str(job), "--checkpoint-dir", "chk", "--parallelism", "2", cwd=tmp_path)
    assert changed.returncode == 2, shown(changed)
    assert "(uid 'count')" in changed.stderr and "keyed state 'count'" in changed.stderr, shown(changed)
    assert "--allow-non-restored-state" in changed.stderr and "--fresh" in changed.stderr, shown(changed)

    fresh = flowstate("run", str(job), "--checkpoint-dir", "chk", "--parallelism", "2", "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0, shown(fresh)
    assert "restoring from checkpoint" not in fresh.stderr, shown(fresh)
    assert committed_records(tmp_path / "out-2") == expected_counts()


def test_quiet_prints_no_progress_lines(tmp_path: Path, job: Path) -> None:
    loud = flowstate("run", str(job), "--checkpoint-dir", "chk-loud", "--interval", "100ms", cwd=tmp_path)
    shutil.rmtree(tmp_path / "out")  # a run from scratch beside the first run's output is refused
    quiet = flowstate("run", str(job), "--checkpoint-dir", "chk-quiet", "--interval", "100ms", "--quiet", cwd=tmp_path)

    assert loud.returncode == 0 and quiet.returncode == 0, (shown(loud), shown(quiet))
    assert "[wordcount]" in loud.stderr, shown(loud)
    assert "[wordcount]" not in quiet.stderr, shown(quiet)


def test_a_second_run_without_fresh_restores_the_checkpoint_of_the_first(tmp_path: Path, job: Path) -> None:
    first = flowstate("run", str(job), "--checkpoint-dir", "chk", cwd=tmp_path)
    assert first.returncode == 0, shown(first)

    second = flowstate("run", str(job), "--checkpoint-dir", "chk", cwd=tmp_path)

    assert second.returncode == 0, shown(second)
    restored = re.search(r"restoring from checkpoint (\d+)", second.stderr)
    assert restored and int(restored[1]) >= 1, shown(second)
    assert committed_records(tmp_path / "out") == expected_counts()


def test_python_dash_m_flowstate_behaves_like_the_flowstate_script(tmp_path: Path, text: Path) -> None:
    assert SCRIPT.is_file(), f"no console script {SCRIPT}"
    results = {}
    for how, command in (("module", FLOWSTATE), ("script", [str(SCRIPT)])):
        directory = tmp_path / how
        directory.mkdir()
        job = directory / "job.py"
        job.write_text(ONE_FLOW.format(input=str(text), output=str(directory / "out")))
        ran = flowstate("run", str(job), "--checkpoint-dir", "chk", "--interval", "100ms", cwd=directory, command=command)
        refused = flowstate("run", str(job), "--checkpoint-dir", "chk", "--mode", "bogus", cwd=directory, command=command)
        results[how] = (ran.returncode, committed_records(directory / "out"), refused.returncode, refused.stderr)
        assert ran.returncode == 0, shown(ran)

    assert results["module"] == results["script"]
    assert results["script"][2] == 2


# ---- checkpoints list ---------------------------------------------------------------------------------


def test_checkpoints_list_shows_the_completed_checkpoint_with_its_id_status_and_size(tmp_path: Path, job: Path) -> None:
    ran = flowstate("run", str(job), "--checkpoint-dir", "chk", "--interval", "100ms", cwd=tmp_path)
    assert ran.returncode == 0, shown(ran)
    completed = [d for d in (tmp_path / "chk").glob("chk-*") if (d / "_metadata").is_file()]
    assert len(completed) == 1, completed  # one checkpoint is retained by default
    checkpoint = int(completed[0].name.split("-")[1])
    size = sum(f.stat().st_size for f in completed[0].rglob("*") if f.is_file())

    listed = flowstate("checkpoints", "list", "chk", cwd=tmp_path)

    assert listed.returncode == 0, shown(listed)
    header, *rows, summary = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATUS", "COMPLETED", "AT"], shown(listed)
    assert len(rows) == 1, shown(listed)
    assert rows[0].split()[:2] == [str(checkpoint), "completed"], shown(listed)
    assert f" {format_size(size)} " in rows[0], (size, shown(listed))
    assert summary == f"1 completed (newest: {checkpoint})", shown(listed)


def test_checkpoints_list_of_a_missing_directory_exits_2_naming_it(tmp_path: Path) -> None:
    listed = flowstate("checkpoints", "list", "no-such-dir", cwd=tmp_path)

    assert listed.returncode == 2, shown(listed)
    assert "no-such-dir" in listed.stderr, shown(listed)


def test_control_commands_without_a_running_job_exit_1_and_a_stray_target_exits_2(tmp_path: Path) -> None:
    for command in (["status", "chk"], ["checkpoint", "chk"], ["savepoint", "chk"], ["stop", "chk", "--savepoint"]):
        result = flowstate(*command, cwd=tmp_path)
        assert result.returncode == 1, shown(result)
        assert "no job is running with checkpoint directory chk" in result.stderr, shown(result)

    stray = flowstate("stop", "chk", "--target", "elsewhere", cwd=tmp_path)
    assert stray.returncode == 2 and "add --savepoint" in stray.stderr, shown(stray)



def test_fresh_over_committed_output_of_an_earlier_run_exits_2_naming_it_and_changes_nothing(
        tmp_path: Path, job: Path) -> None:
    first = flowstate("run", str(job), "--checkpoint-dir", "chk", cwd=tmp_path)
    assert first.returncode == 0, shown(first)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())

    fresh = flowstate("run", str(job), "--checkpoint-dir", "chk", "--fresh", cwd=tmp_path)

    assert fresh.returncode == 2, shown(fresh)
    assert "cannot start from scratch (--fresh)" in fresh.stderr and str(tmp_path / "out") in fresh.stderr, shown(fresh)
    assert "Traceback" not in fresh.stderr, shown(fresh)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert committed_records(tmp_path / "out") == expected_counts()
    again = flowstate("run", str(job), "--checkpoint-dir", "chk", cwd=tmp_path)
    assert again.returncode == 0 and "restoring from checkpoint" in again.stderr, shown(again)
