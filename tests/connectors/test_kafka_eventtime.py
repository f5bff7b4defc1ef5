"""Event time over Kafka partitions: one watermark per partition (``SplitReader.poll_splits``).

A reader of several partitions gets their records in whatever order its fetches return them, often
one partition far ahead of another. Watermarks taken over the reader as one stream would then run
ahead of the partitions it has not read yet and make their records late. With a watermark per
partition, the windows equal a batch computation of the same input, and a partition that stops
receiving stops holding the watermark back once it is idle.

The partitions are written with different densities over the same span of event time (300, 1,500 and
600 records over 60 s), each with its own disorder, so that the partition read first is far ahead
of the others in event time.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import flowstate as fs

from .conftest import on_mock_cluster

pytestmark = pytest.mark.slow

WINDOW = 10.0
OUT_OF_ORDERNESS = 3.0
DENSITIES = (300, 1500, 600)
SPAN = 60.0


def partition_records(partition: int, count: int, span: float, start: float = 0.0) -> list[list[Any]]:
    """``[key, ts, partition]``, rising through ``[start, start + span)`` with up to 2.5 s of disorder."""
    rng = random.Random(partition * 7919 + count)
    out = []
    for n in range(count):
        ts = start + n * span / count + rng.uniform(0.0, 2.5)
        out.append([f"k{rng.randint(0, 4)}", round(ts, 6), partition])
    return out


def create_topic(bootstrap: str, topic: str, partitions: int) -> int:
    """A topic with at least ``partitions`` partitions; how many it has. The mock cluster creates
    topics only by auto-creation (4 partitions); a real broker through the admin API."""
    from confluent_kafka import Producer

    if not on_mock_cluster():
        from confluent_kafka.admin import AdminClient, NewTopic

        AdminClient({"bootstrap.servers": bootstrap}).create_topics([NewTopic(topic, partitions)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    found = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    assert found >= partitions, f"{topic} has {found} partitions, the test needs {partitions}"
    return found


def produce(bootstrap: str, topic: str, by_partition: dict[int, list[Any]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition, records in by_partition.items():
        for record in records:
            producer.produce(topic, json.dumps(record).encode(), partition=partition)
    producer.flush(30)


def batch_windows(records: list[list[Any]]) -> Counter[tuple[str, float]]:
    """The plain batch computation: records per (key, 10 s window)."""
    return Counter((key, (ts // WINDOW) * WINDOW) for key, ts, _ in records)


def windowed(flow: fs.Dataflow, source: Any, idle_timeout: str | None) -> Any:
    return (flow.source(source, uid="events")
                .assign_timestamps(lambda r: r[1], max_out_of_orderness=OUT_OF_ORDERNESS, idle_timeout=idle_timeout,
                                   uid="timestamps")
                .key_by(lambda r: r[0])
                .window(fs.TumblingWindows(WINDOW))
                .aggregate(fs.aggregates.count(), uid="win"))


@pytest.mark.parametrize("parallelism", [1, 2])
def test_windows_over_partitions_read_out_of_step_equal_a_batch_computation(
    parallelism: int, kafka_bootstrap: str, unique: str, tmp_path: Path,
) -> None:
    create_topic(kafka_bootstrap, unique, len(DENSITIES))
    by_partition = {p: partition_records(p, count, SPAN) for p, count in enumerate(DENSITIES)}
    produce(kafka_bootstrap, unique, by_partition)
    seen: list[tuple[str, float, int]] = []
    late: list[Any] = []
    flow = fs.Dataflow("kafka-windows", parallelism=parallelism)
    counts = windowed(flow, fs.KafkaSource(topics=[unique], bootstrap_servers=kafka_bootstrap, bounded=True), None)
    counts.sink(fs.CallbackSink(lambda r: seen.append((r.key, r.window.start, r.value))), uid="out")
    counts.late_records().sink(fs.CallbackSink(late.append), uid="late")
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="100ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    expected = batch_windows([r for records in by_partition.values() for r in records])
    actual = Counter({(key, start): value for key, start, value in seen})
    assert not late, f"{len(late)} records were late, e.g. {late[:3]}: a partition's watermark ran ahead of another's"
    assert len(seen) == len(expected), "a window fired more than once"
    assert actual == expected


def test_a_partition_that_stops_receiving_does_not_stall_the_windows_once_idle(
    kafka_bootstrap: str, unique: str, tmp_path: Path,
) -> None:
    """Partitions 0 and 1 run to 60 s of event time, partition 2 stops at 30 s. Unbounded: the run
    is stopped from the sink once the window [40, 50) fired, which needs partition 2 to be idle; a
    watchdog stops it after 60 s otherwise, and the test fails."""
    create_topic(kafka_bootstrap, unique, len(DENSITIES))
    by_partition = {0: partition_records(0, 300, SPAN), 1: partition_records(1, 600, SPAN),
                    2: partition_records(2, 150, SPAN / 2)}
    produce(kafka_bootstrap, unique, by_partition)
    control = fs.JobControl()
    seen: list[tuple[str, float, int]] = []
    late: list[Any] = []
    stopped_by_window = threading.Event()

    def collect(result: Any) -> None:
        seen.append((result.key, result.window.start, result.value))
        if result.window.start >= 40.0 and not stopped_by_window.is_set():
            stopped_by_window.set()
            control.stop()

    watchdog = threading.Timer(60.0, control.stop)
    watchdog.start()
    try:
        flow = fs.Dataflow("kafka-idle")
        counts = windowed(flow, fs.KafkaSource(topics=[unique], bootstrap_servers=kafka_bootstrap), "300ms")
        counts.sink(fs.CallbackSink(collect), uid="out")
        counts.late_records().sink(fs.CallbackSink(late.append), uid="late")
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="100ms"),
            execution=fs.ExecutionOptions(executor="threads"),
            control=control,
        )
    finally:
        watchdog.cancel()
    assert stopped_by_window.is_set(), f"the window [40, 50) never fired: partition 2 held the watermark, {seen}"
    assert not late, f"{len(late)} records were late, e.g. {late[:3]}"
    # Every window partition 2 took part in (all below 30 s) fired with all of its records.
    expected = batch_windows([r for records in by_partition.values() for r in records if r[1] < 30.0])
    actual = Counter({(key, start): value for key, start, value in seen if start < 30.0})
    assert actual == expected
