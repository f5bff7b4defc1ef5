"""The control endpoint of a real ``flowstate run`` process, driven by the real ``flowstate status |
checkpoint | savepoint | stop`` commands (and by raw HTTP for the token rules).

The job is a word count over a rate-limited generator (parallelism 2) that lasts several seconds, so
that it is still running while the tests talk to it. A stop with a savepoint ends it mid-input with
its output committed; a second ``flowstate run --from-savepoint`` at parallelism 3 finishes the
input, and what both runs committed together must equal the batch word count: every ``(word, n)``
exactly once.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FLOWSTATE = [sys.executable, "-m", "flowstate"]
WAIT = 60.0
"""Seconds a step may take before the test gives up: a guard against a hang, not a measurement."""
LINES = 3000
VOCABULARY = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda")

JOB = '''\
import flowstate as fs

VOCABULARY = {vocabulary!r}


def line(i):
    n = len(VOCABULARY)
    return f"{{VOCABULARY[i % n]}} {{VOCABULARY[(i * 7 + 3) % n]}} {{VOCABULARY[(i * i + 1) % n]}}"


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


flow = fs.Dataflow("controlled", parallelism=2)
(flow.source(fs.GeneratorSource(line, {lines}, splits=6, rate={rate}, name="lines"), uid="lines")
     .flat_map(str.split, uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.FileSink({output!r}), uid="counts"))
'''


def expected() -> Counter[tuple[str, int]]:
    n = len(VOCABULARY)
    counts: Counter[str] = Counter()
    for i in range(LINES):
        counts.update([VOCABULARY[i % n], VOCABULARY[(i * 7 + 3) % n], VOCABULARY[(i * i + 1) % n]])
    return Counter((word, k) for word, c in counts.items() for k in range(1, c + 1))


def committed(directory: Path) -> Counter[tuple[str, int]]:
    records: Counter[tuple[str, int]] = Counter()
    for path in sorted(directory.iterdir()) if directory.exists() else []:
        if not path.name.startswith("."):
            records.update(tuple(json.loads(text)) for text in path.read_text().splitlines())
    return records


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOWSTATE, *args], cwd=cwd, capture_output=True, text=True, timeout=WAIT, check=False)


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


class Job:
    """A ``flowstate run`` process of the job, in ``root``."""

    def __init__(self, root: Path, *extra: str, rate: float = 150.0) -> None:
        self.root = root
        self.chk = root / "chk"
        self.out = root / "out"
        self.file = root / "job.py"
        self.file.write_text(JOB.format(vocabulary=VOCABULARY, lines=LINES, rate=rate, output=str(self.out)))
        self.log = root / f"run-{len(list(root.glob('run-*.log')))}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*FLOWSTATE, "run", str(self.file), "--checkpoint-dir", str(self.chk), "--interval", "100ms",
                 "--quiet", *extra], cwd=root, stdout=log, stderr=subprocess.STDOUT,
            )

    @property
    def control_file(self) -> Path:
        return self.chk / "_control.json"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_endpoint(self) -> dict:
        deadline = time.monotonic() + WAIT
        while not self.control_file.exists():
            assert self.process.poll() is None, f"the job ended early:\n{self.stderr()}"
            assert time.monotonic() < deadline, "no control file"
            time.sleep(0.05)
        return json.loads(self.control_file.read_text())

    def wait(self) -> int:
        try:
            return self.process.wait(WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)


@pytest.fixture
def job(tmp_path: Path):
    running = Job(tmp_path)
    yield running
    running.kill()


def http(endpoint: dict, method: str, path: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://{endpoint['host']}:{endpoint['port']}{path}", method=method,
                                     data=b"{}" if method == "POST" else None, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_endpoint_needs_the_token_from_a_private_file_and_changes_nothing_without_it(job):
    endpoint = job.wait_for_endpoint()

    assert stat.S_IMODE(os.stat(job.control_file).st_mode) == 0o600
    assert endpoint["host"] == "127.0.0.1" and endpoint["pid"] == job.process.pid
    assert http(endpoint, "GET", "/status", None)[0] == 401
    assert http(endpoint, "POST", "/stop", None)[0] == 401
    assert http(endpoint, "POST", "/stop", "not-the-token")[0] == 403
    assert http(endpoint, "POST", "/savepoint", "not-the-token")[0] == 403
    code, status = http(endpoint, "GET", "/status", endpoint["token"])
    assert code == 200 and status["state"] in ("running", "starting"), status
    assert job.process.poll() is None, "the refused stop did not stop the job"

    wrong = dict(endpoint, token="not-the-token")
    job.control_file.write_text(json.dumps(wrong))
    refused = cli("status", str(job.chk), cwd=job.root)
    assert refused.returncode == 2 and "refused the token" in refused.stderr, shown(refused)


def test_status_checkpoint_savepoint_and_stop_with_savepoint_through_the_cli_then_a_rescaled_restore(job):
    job.wait_for_endpoint()

    status = cli("status", str(job.chk), "--json", cwd=job.root)
    assert status.returncode == 0, shown(status)
    fields = json.loads(status.stdout)
    assert fields["job"] == "controlled" and fields["mode"] == "exactly_once"
    assert fields["tasks"] == 4 and fields["parallelism"] == {"lines": 2, "count": 2}
    for name in ("records", "checkpoints_completed", "last_checkpoint", "restarts", "running_tasks"):
        assert name in fields, fields

    checkpoint = cli("checkpoint", str(job.chk), cwd=job.root)
    assert checkpoint.returncode == 0, shown(checkpoint)
    taken = int(re.fullmatch(r"checkpoint (\d+) completed\n", checkpoint.stdout)[1])
    after = json.loads(cli("status", str(job.chk), "--json", cwd=job.root).stdout)
    assert taken >= 1 and after["last_checkpoint"] >= taken and after["checkpoints_completed"] >= 1, after

    savepoint = cli("savepoint", str(job.chk), "--target", "mine", cwd=job.root)
    assert savepoint.returncode == 0, shown(savepoint)
    intermediate = Path(savepoint.stdout.strip())
    assert intermediate.parent == job.root / "mine"
    assert [p.name for p in intermediate.glob("chk-*/_metadata")], "one snapshot with its metadata"

    stop = cli("stop", str(job.chk), "--savepoint", cwd=job.root)
    assert stop.returncode == 0, shown(stop)
    final = Path(stop.stdout.strip())
    assert final.parent == job.chk / "savepoints"
    assert job.wait() == 3, job.stderr()  # stopped, not finished: distinct from a job that read all its input
    assert not job.control_file.exists(), "the endpoint closed with the job"
    first = committed(job.out)
    assert first and sum(first.values()) < sum(expected().values()), "stopped mid-input, output committed"

    gone = cli("status", str(job.chk), cwd=job.root)
    assert gone.returncode == 1 and "no job is running" in gone.stderr, shown(gone)

    resumed = Job(job.root, "--from-savepoint", str(final), "--parallelism", "3", rate=2000.0)
    assert resumed.wait() == 0, resumed.stderr()
    assert f"restoring from savepoint {final}" in resumed.stderr(), resumed.stderr()
    assert "rescaling from savepoint" in resumed.stderr(), resumed.stderr()
    assert committed(job.out) == expected()
    assert intermediate.exists() and final.exists(), "savepoints are never deleted"


def test_a_stop_without_savepoint_commits_and_the_same_command_resumes_from_its_checkpoint(job):
    job.wait_for_endpoint()
    time.sleep(0.5)

    stop = cli("stop", str(job.chk), cwd=job.root)
    assert stop.returncode == 0, shown(stop)
    assert re.fullmatch(r"job stopped after checkpoint \d+\n", stop.stdout), shown(stop)
    assert job.wait() == 3, job.stderr()
    assert re.search(r"job 'controlled' stopped: [\d,]+ records", job.stderr()), job.stderr()
    assert "finished" not in job.stderr()

    again = Job(job.root, rate=2000.0)
    assert again.wait() == 0, again.stderr()
    assert re.search(r"restoring from checkpoint [1-9]\d*", again.stderr()), again.stderr()
    assert "job 'controlled' finished" in again.stderr(), "read all its input: finished, exit 0"
    assert committed(job.out) == expected()


def test_commands_without_a_running_job_fail_with_exit_1(tmp_path: Path):
    missing = cli("checkpoint", str(tmp_path / "chk"), cwd=tmp_path)
    assert missing.returncode == 1 and "no job is running" in missing.stderr, shown(missing)

    # A control file left by a run that was killed: nothing answers on its port.
    killed = Job(tmp_path)
    killed.wait_for_endpoint()
    killed.kill()
    stale = cli("savepoint", str(killed.chk), cwd=tmp_path)
    assert stale.returncode == 1 and "does not answer" in stale.stderr and "is gone" in stale.stderr, shown(stale)
