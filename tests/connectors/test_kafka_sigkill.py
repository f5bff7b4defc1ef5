"""End to end under SIGKILL through Kafka: ``flowstate run`` of KafkaSource → keyed word count →
KafkaSink, killed at a failpoint, run again, and the output topic read back (``read_committed``) is
compared with a batch count of the input. The runs connect to the session's Kafka (librdkafka's mock
cluster, listening on 127.0.0.1, or ``FLOWSTATE_KAFKA_BOOTSTRAP``).

The kills are at failpoints outside any Kafka transaction: on the mock cluster, which shows aborted
transactions to every reader, a kill inside one would show its records (see test_kafka.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

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
    time.sleep(0.0003)  # at least 0.9 s for the input: several checkpoints before its end
    return payload.decode()


flow = fs.Dataflow("kafka-count", parallelism=1)
(flow.source(fs.KafkaSource(topics=[{topic!r}], bootstrap_servers={bootstrap!r}, bounded=True, decoder=decode),
             uid="lines")
     .flat_map(str.split, uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.KafkaSink(topic={out!r}, bootstrap_servers={bootstrap!r}, key=lambda r: r[0], name={name!r}),
           uid="counts"))
'''


def publish_lines(bootstrap: str, topic: str) -> list[str]:
    from confluent_kafka import Producer

    rng = random.Random(topic)
    lines = [" ".join(f"w{rng.randint(0, 200)}" for _ in range(rng.randint(3, 9))) for _ in range(LINES)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, line in enumerate(lines):
        producer.produce(topic, line.encode(), partition=0)
    producer.flush(30)
    return lines


@pytest.mark.parametrize("failpoint", ["sink.before_commit=kill@2", "coordinator.metadata_before_notify=kill@2"])
def test_a_kafka_job_killed_at_a_failpoint_writes_every_count_once_for_read_committed_readers(
    failpoint: str, kafka_bootstrap: str, unique: str, tmp_path: Path,
) -> None:
    lines = publish_lines(kafka_bootstrap, unique)
    out = f"{unique}-out"
    runs = []
    for n, points in enumerate([failpoint, None], start=1):
        job = tmp_path / "job.py"
        reads = tmp_path / f"run-{n}.reads"
        job.write_text(JOB.format(reads=str(reads), topic=unique, bootstrap=kafka_bootstrap, out=out, name=f"{unique}-sink"))
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
    counts = Counter(word for line in lines for word in line.split())
    expected = Counter((w, k) for w, c in counts.items() for k in range(1, c + 1))
    actual = Counter(tuple(r) for r in read_topic(kafka_bootstrap, out))
    assert actual == expected, (f"{sum((expected - actual).values())} missing, "
                                f"{sum((actual - expected).values())} unexpected")
