"""The Ray executor, isolated: the word count of the engine tests runs on two Ray worker actors,
one of which is killed with SIGKILL after a checkpoint completed, and the job recovers by itself to
the batch result, exactly once. Its last attempt must have restored the checkpoint and resumed from
it: its sources read only the lines after the checkpoint (a restart from scratch, or actors that
ignore their resume state, also give the right output).

Ray runs bound to loopback inside a network namespace made for the test (``unshare -n``) that has
nothing but a loopback interface, so nothing it does can leave the machine. The driver
(``ray_wordcount.py``) reports the namespace's interfaces and the addresses of the Ray nodes, and
the test checks them. When the namespace cannot be made or Ray is not installed, the test is
skipped, or fails when the ``CI`` environment variable is set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from engine.jobs import batch_reference, committed_output, difference, lines

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
LINES = 6000
"""As in ``ray_wordcount.py``."""
TIMEOUT = 240.0
"""Seconds a run may take before the test gives up on it: a guard against a hang, not a measurement."""


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the Ray executor cannot be tested here: {reason}")
    pytest.skip(reason)


def isolating_command() -> list[str]:
    """``unshare`` making a network namespace (a user namespace too, when not root) whose loopback
    interface is up."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        unavailable("the test needs unshare and ip (util-linux, iproute2) to make a network namespace")
    command = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    probe = subprocess.run([*command, "ip", "link", "set", "lo", "up"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        unavailable(f"cannot make a network namespace with {' '.join(command)}: {probe.stderr.strip()}")
    return command


@pytest.fixture(scope="module")
def isolated() -> list[str]:
    try:
        import ray  # noqa: F401
    except ImportError:
        unavailable("Ray is not installed (pip install 'flowstate[ray]')")
    return isolating_command()


@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_a_killed_worker_actor_is_replaced_and_the_job_recovers_exactly_once_without_leaving_loopback(
    mode, isolated, tmp_path,
):
    temp = tempfile.mkdtemp(prefix="fsray")  # short: Ray's socket paths must fit in 107 bytes
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([str(HERE.parent), *sys.path]))
    env.pop("RAY_ADDRESS", None)
    script = (f"ip link set lo up && exec {sys.executable} {HERE / 'ray_wordcount.py'} {mode} "
              f"{tmp_path / 'out'} {tmp_path / 'chk'} {temp}")
    try:
        run = subprocess.run([*isolated, "sh", "-c", script], capture_output=True, text=True, env=env,
                             timeout=TIMEOUT, check=False)
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    assert run.returncode == 0, run.stderr[-5000:]
    [report] = [json.loads(line[len("RESULT "):]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert report["interfaces"] == ["lo"], report
    assert report["nodes"] == ["127.0.0.1"], report
    assert (report["executor"], report["workers"]) == ("ray", 2)
    [killed] = report["killed"]
    assert len(report["failures"]) == 1 and f"(pid {killed};" in report["failures"][0], report
    assert report["restored_from"][0] is None and report["restored_from"][-1] >= 1, report
    assert report["records_read"][-1] < LINES, f"the last attempt read the whole input again: {report}"
    assert report["records_total"] == LINES, f"the attempts read {report['records_total']} lines of {LINES}: {report}"
    actual = committed_output(tmp_path / "out")
    expected = batch_reference(lines(LINES))
    assert Counter(actual) == expected, difference(actual, expected)
