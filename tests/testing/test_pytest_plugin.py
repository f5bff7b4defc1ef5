"""The ``flowstate_chaos`` fixture, used the way a user's CI would use it: from a test file of its own
run by pytest (the plugin comes from the installed package's entry point)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

JOBS = '''\
from flowstate.testing.oracles import sequence
import flowstate as fs


class Forgetful:
    """A file sink writer whose snapshot leaves out its pending files: a restore deletes them."""

    def __init__(self, writer):
        self.writer = writer

    def __getattr__(self, name):
        return getattr(self.writer, name)

    def snapshot(self):
        return dict(self.writer.snapshot(), pending=[])


class ForgetfulFileSink(fs.FileSink):
    __slots__ = ()

    def build_writer(self, subtask, parallelism, resume_state):
        return Forgetful(super().build_writer(subtask, parallelism, resume_state))


good = sequence.sequence_job("out", count=3000)
forgetful = sequence.sequence_job("out", count=3000, sink=ForgetfulFileSink("out"))
'''

TESTS = '''\
from pathlib import Path

JOBS = Path(__file__).with_name("jobs.py")
FAST = {"checkpoint_interval": "50ms", "batch_size": 64, "failpoints": ["coordinator.metadata_before_notify"]}


def test_good_job(flowstate_chaos):
    report = flowstate_chaos(f"{JOBS}:good", kills=1, **FAST)
    assert report.kills >= 2


def test_forgetful_job(flowstate_chaos):
    flowstate_chaos(f"{JOBS}:forgetful", kills=1, **FAST)
'''


def test_the_fixture_passes_a_correct_job_and_fails_a_lossy_one_with_the_table(pytester: pytest.Pytester):
    pytester.makepyfile(jobs=JOBS, test_my_jobs=TESTS)

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*ChaosFailure: flowstate chaos *jobs.py:forgetful*",
        "*exactly_once*coordinator.metadata_before_notify*FAILED*",
        "*DIFFERENCES FOUND after*",
    ])


def test_chaos_kills_on_the_command_line_override_the_tests_value(pytester: pytest.Pytester):
    pytester.makepyfile(jobs=JOBS, test_my_jobs=TESTS.replace("report.kills >= 2", "report.kills >= 4"))

    result = pytester.runpytest("-k", "good", "--chaos-kills", "3")

    result.assert_outcomes(passed=1)
