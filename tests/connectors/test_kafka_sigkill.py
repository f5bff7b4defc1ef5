"""End to end under SIGKILL through Kafka: ``flowstate run`` of KafkaSource → keyed word count →
KafkaSink, killed, run again, and the output topic read back (``read_committed``) is compared with a
batch count of the input. The runs connect to the session's Kafka (librdkafka's mock cluster,
listening on 127.0.0.1, or ``FLOWSTATE_KAFKA_BOOTSTRAP``).

Two kinds of kill: at a failpoint (threads, parallelism 1), and at a moment of the test's choosing in
``unaligned`` mode at parallelism 2 on worker processes, the input spread over the topic's
partitions. The kills are outside any Kafka transaction: on the mock cluster, which shows aborted
transactions to every reader, a kill inside one would show its records (see test_kafka.py).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import covered_lines
from .test_kafka import read_topic

pytestmark = pytest.mark.slow

RESTORING = re.compile(r"restoring from checkpoint (\d+)")
LINES = 3000

JOB = '''\
import time

import flowstate as fs


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield [word, n]


def decode(payload):
    with open({reads!r}, "ab", buffering=0) as f:
        f.write(b".")
        read = f.tell()  # lines read by this run, over every worker process
    while {hold} and read > {hold}:
        time.sleep(1)  # held here until the run is killed: the kill lands before the end of the input
    time.sleep(0.0003)  # at least 0.9 s for the input: several checkpoints before its end
    return payload.decode()


flow = fs.Dataflow("kafka-count", parallelism={parallelism})
(flow.source(fs.KafkaSource(topics=[{topic!r}], bootstrap_servers={bootstrap!r}, bounded=True, decoder=decode,
                            rate={rate!r}), uid="lines")
     .flat_map(str.split, uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.KafkaSink(topic={out!r}, bootstrap_servers={bootstrap!r}, key=lambda r: r[0], name={name!r}),
           uid="counts"))
'''


def publish_lines(bootstrap: str, topic: str, partitions: int = 1) -> list[str]:
    from confluent_kafka import Producer

    rng = random.Random(topic)
    lines = [" ".join(f"w{rng.randint(0, 200)}" for _ in range(rng.randint(3, 9))) for _ in range(LINES)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, line in enumerate(lines):
        producer.produce(topic, line.encode(), partition=i % partitions)
    producer.flush(30)
    return lines


def write_job(tmp_path: Path, n: int, *, topic: str, bootstrap: str, out: str, name: str, parallelism: int = 1,
              rate: float | None = None, hold: int = 0) -> tuple[Path, Path]:
    job, reads = tmp_path / "job.py", tmp_path / f"run-{n}.reads"
    job.write_text(JOB.format(reads=str(reads), topic=topic, bootstrap=bootstrap, out=out, name=name,
                              parallelism=parallelism, rate=rate, hold=hold))
    return job, reads


def expected_counts(lines: list[str]) -> Counter[tuple[str, int]]:
    counts = Counter(word for line in lines for word in line.split())
    return Counter((w, k) for w, c in counts.items() for k in range(1, c + 1))


def check_exactly_once(bootstrap: str, out: str, lines: list[str]) -> None:
    expected = expected_counts(lines)
    actual = Counter(tuple(r) for r in read_topic(bootstrap, out))
    assert actual == expected, (f"{sum((expected - actual).values())} missing, "
                                f"{sum((actual - expected).values())} unexpected")


# The 8th commit (or metadata) of 100 ms checkpoints comes long after the consumer's first records,
# however slowly it starts; the run to be killed reads at most 1,000 lines/s and holds at 7/8 of the
# input, so the kill lands before its end.
@pytest.mark.parametrize("failpoint", ["sink.before_commit=kill@8", "coordinator.metadata_before_notify=kill@8"])
def test_a_kafka_job_killed_at_a_failpoint_writes_every_count_once_for_read_committed_readers(
    failpoint: str, kafka_bootstrap: str, unique: str, tmp_path: Path,
) -> None:
    lines = publish_lines(kafka_bootstrap, unique)
    out = f"{unique}-out"
    runs = []
    for n, points in enumerate([failpoint, None], start=1):
        job, reads = write_job(tmp_path, n, topic=unique, bootstrap=kafka_bootstrap, out=out, name=f"{unique}-sink",
                               rate=1000.0 if points else None, hold=LINES * 7 // 8 if points else 0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
        if points:
            env["FLOWSTATE_FAILPOINTS"] = points
        stderr = tmp_path / f"run-{n}.stderr"
        with open(stderr, "wb") as f:
            code = subprocess.run([sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir",
                                   str(tmp_path / "chk"), "--interval", "100ms", "--executor", "threads"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, env=env,
                                  cwd=tmp_path, timeout=120).returncode
        runs.append((code, stderr.read_text(errors="replace"), reads.stat().st_size if reads.exists() else 0))
    (killed, _, _), (code, log, read) = runs
    assert killed == -signal.SIGKILL, f"the run was not killed at {failpoint}: {runs[0][1][-2000:]}"
    assert code == 0, log[-2000:]
    restored = RESTORING.findall(log)
    assert restored and int(restored[-1]) >= 1, f"the second run did not restore a checkpoint: {log[-2000:]}"
    assert read < LINES, f"the second run read {read} of {LINES} lines: it did not resume from the checkpoint"
    check_exactly_once(kafka_bootstrap, out, lines)


def test_an_unaligned_kafka_job_at_parallelism_2_on_processes_killed_after_a_checkpoint_writes_every_count_once(
    kafka_bootstrap: str, unique: str, tmp_path: Path,
) -> None:
    """The run to be killed reads at most 1,000 lines/s per reader and holds once it read 7/8 of the
    input; it is killed 50 ms after a checkpoint that covers an eighth of the input completed."""
    from .test_kafka_eventtime import create_topic

    partitions = create_topic(kafka_bootstrap, unique, 2)
    lines = publish_lines(kafka_bootstrap, unique, partitions)
    out, chk = f"{unique}-out", tmp_path / "chk"
    runs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []

    def start(held: bool) -> subprocess.Popen[bytes]:
        n = len(runs) + 1
        job, reads = write_job(tmp_path, n, topic=unique, bootstrap=kafka_bootstrap, out=out, name=f"{unique}-sink",
                               parallelism=2, rate=1000.0 if held else None, hold=LINES * 7 // 8 if held else 0)
        stderr = tmp_path / f"run-{n}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
        with open(stderr, "wb") as f:
            process = subprocess.Popen([sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir", str(chk),
                                        "--interval", "100ms", "--mode", "unaligned", "--executor", "processes"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, env=env,
                                       cwd=tmp_path)
        runs.append((process, stderr, reads))
        return process

    def describe() -> str:
        return "\n".join(f"run {k + 1}: exit {p.returncode}: {e.read_text(errors='replace')[-1500:]}"
                         for k, (p, e, _) in enumerate(runs))

    killed = start(held=True)
    give_up = time.monotonic() + 120
    while killed.poll() is None and covered_lines(chk) < LINES // 8:
        assert time.monotonic() < give_up, f"no checkpoint covered {LINES // 8} lines: {describe()}"
        time.sleep(0.005)
    time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, f"the run ended before its kill: {describe()}"
    last = start(held=False)
    try:
        code = last.wait(timeout=120)
    except subprocess.TimeoutExpired:
        last.kill()
        pytest.fail(f"the last run did not end within 120 s: {describe()}")
    assert code == 0, describe()
    log = runs[-1][1].read_text(errors="replace")
    restored = RESTORING.findall(log)
    assert restored and int(restored[-1]) >= 1, f"the last run did not restore a checkpoint: {describe()}"
    read = runs[-1][2].stat().st_size if runs[-1][2].exists() else 0
    assert read < LINES, f"the last run read {read} of {LINES} lines: it did not resume from the checkpoint"
    check_exactly_once(kafka_bootstrap, out, lines)
