"""End to end under SIGKILL: ``flowstate run examples/postgres_changes.py`` (``PostgresCdcSource`` →
per-row change numbers → ``PostgresSink`` in ``insert`` mode, parallelism 2, worker processes) is
killed after a checkpoint completed, run again until it finishes, and the rows read back **from
PostgreSQL** are compared with the changes a plain computation of the input gives: each
``(op, id, name, score, n)`` exactly once (an insert-mode table keeps a duplicate).

Two inputs: the rows of a filled table read by the initial snapshot (the kill lands mid-snapshot, so
the restore reads on from a fresh one), and the changes of a script streamed from a slot made
before it. Every test proves the restore: the last run restored a checkpoint with id ≥ 1 and read
fewer changes than the input holds (the job appends one byte per change read to a file named by the
test, one file per run).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flowstate.connectors.postgres_cdc import PostgresCdcSource

from tests.connectors.test_postgres_cdc import DSN, Names, execute, logical_server, names, psycopg  # noqa: F401

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "examples" / "postgres_changes.py"
ROWS = 1200
DELAY_MS = "1"
"""Each change read sleeps this long: a whole read takes at least 1.2 s, so several checkpoints
complete before the end of the input and a kill lands before it, however fast the machine."""
FETCH = "40"
RUN_TIMEOUT = 60.0
KILLED = -signal.SIGKILL
RESTORING = re.compile(r"restoring from checkpoint (\d+)")


def latest_checkpoint(chk: Path) -> int:
    if not chk.exists():
        return 0
    return max((int(d.name.split("-")[1]) for d in chk.glob("chk-*") if (d / "_metadata").exists()), default=0)


@dataclass
class ChangesJob:
    root: Path
    table: str
    slot: str
    snapshot: bool
    runs: list[tuple[subprocess.Popen[bytes], Path, Path]] = field(default_factory=list)

    @property
    def out(self) -> str:
        return f"{self.table}_out"

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.runs) + 1
        stderr, reads = self.root / f"run-{n}.stderr", self.root / f"run-{n}.reads"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
        env.update(DEMO_DSN=DSN, DEMO_TABLE=self.table, DEMO_OUT=self.out, DEMO_SLOT=self.slot,
                   DEMO_SNAPSHOT="1" if self.snapshot else "0", DEMO_READS=str(reads), DEMO_DELAY_MS=DELAY_MS,
                   DEMO_FETCH=FETCH, DEMO_PARALLELISM="2")
        command = [sys.executable, "-m", "flowstate", "run", str(JOB), "--checkpoint-dir", str(self.root / "chk"),
                   "--interval", "100ms", "--executor", "processes", "--workers", "2"]
        with open(stderr, "wb") as f:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                       cwd=self.root, env=env)
        self.runs.append((process, stderr, reads))
        return process

    def wait(self, process: subprocess.Popen[bytes]) -> int:
        try:
            return process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"a run did not end within {RUN_TIMEOUT:.0f} s: {self.describe()}")

    def kill_after_a_new_checkpoint(self, total: int) -> None:
        """Start a run and kill it once a checkpoint completed that was triggered after the run had
        read a quarter of the input (so that the restore has something to skip)."""
        process = self.start()
        chk = self.root / "chk"
        give_up = time.monotonic() + RUN_TIMEOUT
        while process.poll() is None and self.last_reads() < total // 4:
            assert time.monotonic() < give_up, self.describe()
            time.sleep(0.005)
        target = latest_checkpoint(chk) + 2  # the one in flight may have been triggered before those reads
        while process.poll() is None and latest_checkpoint(chk) < target:
            assert time.monotonic() < give_up, self.describe()
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == KILLED, f"the run ended before its kill: {self.describe()}"

    def last_restored(self) -> int:
        found = RESTORING.findall(self.runs[-1][1].read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def last_reads(self) -> int:
        reads = self.runs[-1][2]
        return reads.stat().st_size if reads.exists() else 0

    def describe(self) -> str:
        return "\n".join(f"run {k + 1}: exit {p.returncode}: {e.read_text(errors='replace')[-1500:]}"
                         for k, (p, e, _) in enumerate(self.runs))


def script() -> list[tuple[str, int, str | None, int | None]]:
    """The input of the streamed case: inserts, then updates and deletes of some of the rows, as
    (op, id, name, score) in commit order."""
    changes: list[tuple[str, int, str | None, int | None]] = [("insert", i, f"n{i}", i) for i in range(ROWS * 3 // 4)]
    for i in range(0, ROWS * 3 // 4, 3):
        changes.append(("update", i, f"u{i}", i + 1))
    for i in range(1, ROWS * 3 // 4, 6):
        changes.append(("delete", i, f"n{i}", i))
    return changes[:ROWS]


def write(table: str, changes: list[tuple[str, int, str | None, int | None]]) -> None:
    with psycopg.connect(DSN) as conn:
        for start in range(0, len(changes), 100):
            with conn.transaction(), conn.cursor() as cur:
                for op, key, name, score in changes[start:start + 100]:
                    if op == "insert":
                        cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (key, name, score))
                    elif op == "update":
                        cur.execute(f"UPDATE {table} SET name = %s, score = %s WHERE id = %s", (name, score, key))
                    else:
                        cur.execute(f"DELETE FROM {table} WHERE id = %s", (key,))


def numbered(changes: list[tuple[str, int, str | None, int | None]]) -> Counter[tuple]:
    """The batch computation: each change with the count of changes of its row so far."""
    seen: Counter[int] = Counter()
    out: Counter[tuple] = Counter()
    for op, key, name, score in changes:
        seen[key] += 1
        out[(op, key, name, str(score), seen[key])] += 1
    return out


def read_back(table: str) -> Counter[tuple]:
    with psycopg.connect(DSN) as conn:
        rows = conn.execute(f"SELECT op, id, name, score, n FROM {table}").fetchall()
    return Counter((op, key, name, str(score), n) for op, key, name, score, n in rows)


@pytest.fixture
def changes_job(names: Names, tmp_path: Path, request):  # noqa: ANN201
    job = ChangesJob(tmp_path, names.table, names.slot(), snapshot=request.param == "snapshot")
    execute(f"CREATE TABLE {job.out} (op text, id int, name text, score numeric, n int)")
    yield job
    for process, _, _ in job.runs:
        if process.poll() is None:
            process.kill()
            process.wait()
    execute(f"DROP TABLE IF EXISTS {job.out}", f"DELETE FROM flowstate_sink_commits WHERE sink LIKE '%{job.out}%'")


@pytest.mark.parametrize("changes_job", ["snapshot", "stream"], indirect=True)
def test_killed_after_a_checkpoint_the_job_writes_every_change_to_postgres_exactly_once(changes_job: ChangesJob):
    job = changes_job
    if job.snapshot:
        execute(f"INSERT INTO {job.table} SELECT i, 'n' || i, i FROM generate_series(0, {ROWS - 1}) AS i")
        expected = Counter(("read", i, f"n{i}", str(i), 1) for i in range(ROWS))
    else:
        source = PostgresCdcSource([job.table], DSN, job.slot)
        source.build_reader(source.splits(), None).close()   # the slot, before the changes
        changes = script()
        write(job.table, changes)
        expected = numbered(changes)
    job.kill_after_a_new_checkpoint(ROWS)
    last = job.start()
    assert job.wait(last) == 0, job.describe()
    assert job.last_restored() >= 1, f"the last run did not restore a checkpoint: {job.describe()}"
    assert job.last_reads() < ROWS, f"the last run read {job.last_reads()} of {ROWS} changes: {job.describe()}"
    actual = read_back(job.out)
    missing, extra = expected - actual, actual - expected
    assert not missing, f"{sum(missing.values())} changes missing from PostgreSQL, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{sum(extra.values())} unexpected rows in PostgreSQL (duplicates?), e.g. {sorted(extra)[:5]}"
