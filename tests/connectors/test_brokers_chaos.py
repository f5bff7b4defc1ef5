"""The chaos runner over a broker sink: ``examples/nats_to_redis.py`` (NATS JetStream → keyed word count
→ Redis stream, parallelism 2, and 1 on the command line, on worker processes) is killed at random moments and at failpoints,
started again until it completes, and the records **read back from the Redis stream** of every job
(``RedisStreamSink.committed_records()``: XRANGE) are compared with those of a failure-free run.

Every job of the runner writes to a stream of its own (the example appends ``FLOWSTATE_CHAOS_JOB`` to
its output key). The runner itself proves each restore (a checkpoint with id ≥ 1 restored and only
the rest of the input read) and fails a mode in which no kill came after a completed checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowstate.testing.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "examples" / "nats_to_redis.py")
_spec = importlib.util.spec_from_file_location("nats_to_redis_demo", ROOT / "examples" / "nats_to_redis_demo.py")
demo = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(demo)  # type: ignore[union-attr]

LINES = 3000
FAILPOINTS = ("sink.before_commit", "sink.mid_commit", "coordinator.metadata_before_notify")


@pytest.fixture
def words(nats_url: str, redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A JetStream stream holding the input, and the job's configuration in the environment; every
    Redis key the jobs wrote is deleted afterwards."""
    import redis

    demo.NATS = nats_url
    demo.publish(unique, demo.make_lines(LINES, seed=7))
    monkeypatch.setenv("DEMO_STREAM", unique)
    monkeypatch.setenv("DEMO_OUT", f"{unique}:out")
    monkeypatch.setenv("DEMO_NATS", nats_url)
    monkeypatch.setenv("DEMO_REDIS", redis_url)
    monkeypatch.setenv("DEMO_DELAY_MS", "0.3")  # several checkpoints before the end, however fast the machine
    yield unique
    demo.delete_stream(unique)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{unique}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def chaos(tmp_path: Path, **options: object) -> object:
    config = ChaosConfig(job=JOB, seed=13, checkpoint_interval="100ms", executor="processes", workers=2,
                         **options)  # type: ignore[arg-type]
    return run_chaos(config, tmp_path)


def test_the_counts_read_back_from_redis_equal_a_run_without_failures_after_every_kill(
    words: str, tmp_path: Path,
) -> None:
    report = chaos(tmp_path, modes=("exactly_once", "at_least_once"), kills=3, failpoint_kills=1,
                   failpoints=FAILPOINTS)
    assert report.ok, report.table()
    expected = sum(demo.expected_records(demo.make_lines(LINES, seed=7)).values())
    for mode in ("exactly_once", "at_least_once"):
        # The reference itself was read back from Redis: the batch count of the input.
        assert report.reference_records[mode] == expected, report.table()
        rows = [row for row in report.scenarios if row.mode == mode]
        assert {row.where for row in rows if row.kills} >= {"random moments", *FAILPOINTS}, report.table()
        assert sum(row.resumed for row in rows) >= 1, report.table()
        assert all(row.records == row.jobs * expected for row in rows), report.table()
    written = list((tmp_path / "exactly_once" / "reference" / "out" / "counts").iterdir())
    assert [p.name for p in written] == ["server-records"]


def test_flowstate_chaos_on_the_command_line_reads_the_output_back_from_redis(words: str, tmp_path: Path) -> None:
    # Parallelism 1 here (the tests above run the example at its default, 2).
    command = [sys.executable, "-m", "flowstate", "chaos", JOB, "--mode", "unaligned", "--kills", "1",
               "--failpoint-kills", "1", "--failpoints", "sink.mid_commit", "--executor", "processes",
               "--seed", "3", "--work-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, DEMO_PARALLELISM="1"),
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unaligned" in done.stdout and "sink.mid_commit" in done.stdout
    assert " 0 lost, 0 duplicated, 0 unexpected" in done.stdout, done.stdout
