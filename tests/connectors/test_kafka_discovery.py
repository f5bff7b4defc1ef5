"""KafkaSource reads partitions added to its topics while the job runs (rule 1b of
``flowstate.connectors.kafka``).

librdkafka's mock cluster cannot add partitions to a topic (it answers neither CreateTopics nor
CreatePartitions) and creates every topic with 4 partitions. So the listing of partitions is
scripted: ``ScriptedPartitions`` shows the first ``n`` partitions of a real 4-partition topic, ``n``
read from a file the test rewrites, and everything else (offsets, fetches, positions, checkpoints,
restores) runs against the broker. Against a real broker (``FLOWSTATE_KAFKA_BOOTSTRAP``) the same
tests run with the same scripted listing.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import flowstate as fs
from flowstate.connectors.kafka import KafkaSource, discovered, split_owner

from .test_kafka_eventtime import create_topic, produce

PARTITIONS = 4


class ScriptedPartitions(KafkaSource):
    """The topic's first ``n`` partitions, ``n`` read from ``count_file`` at every listing."""

    def __init__(self, topic: str, bootstrap: str, count_file: Path, **kwargs: Any) -> None:
        super().__init__(topics=[topic], bootstrap_servers=bootstrap, **kwargs)
        self.count_file = count_file

    def list_partitions(self) -> dict[str, list[int]]:
        listed = super().list_partitions()
        shown = int(self.count_file.read_text())
        return {topic: partitions[:shown] for topic, partitions in listed.items()}


# ---- the pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2, 3, 5])
def test_every_partition_has_one_owner_whoever_lists_it(parallelism: int) -> None:
    splits = [f"{topic}:{p}" for topic in ("orders", "payments", "t") for p in range(12)]
    owners = {s: split_owner(s, parallelism) for s in splits}
    assert all(0 <= o < parallelism for o in owners.values())
    assert owners == {s: split_owner(s, parallelism) for s in reversed(splits)}  # order does not matter
    # A topic's partitions go round the subtasks: none is left without partitions when there are enough.
    assert {owners[f"orders:{p}"] for p in range(12)} == set(range(parallelism))


def test_a_listing_yields_the_new_partitions_a_subtask_owns_and_nothing_it_reads_already() -> None:
    listings = [{"t": [0, 1]}, {"t": [0, 1]}, {"t": [0, 1, 2, 3, 4, 5]}, {"t": [0, 1, 2, 3, 4, 5]}]
    for subtask in range(2):
        known = {s for s in ("t:0", "t:1") if split_owner(s, 2) == subtask}
        found_per_listing = []
        for listed in listings:
            found = discovered(listed, known, subtask, 2)
            found_per_listing.append(found)
            known |= set(found)
        assert found_per_listing[0] == found_per_listing[1] == found_per_listing[3] == []
        assert found_per_listing[2] == [f"t:{p}" for p in range(2, 6) if split_owner(f"t:{p}", 2) == subtask]


# ---- readers against the broker -----------------------------------------------------------------


def test_parallel_readers_each_read_the_new_partitions_they_own_once_and_snapshot_them(
    kafka_bootstrap: str, unique: str, tmp_path: Path,
) -> None:
    create_topic(kafka_bootstrap, unique, PARTITIONS)
    records = {p: [[p, n] for n in range(20)] for p in range(PARTITIONS)}
    produce(kafka_bootstrap, unique, records)
    count = tmp_path / "partitions"
    count.write_text("2")
    source = ScriptedPartitions(unique, kafka_bootstrap, count, discovery_interval=0.05)
    readers = [source.build_reader([s for s in source.splits() if split_owner(s, 2) == i], None,
                                   subtask=i, parallelism=2) for i in range(2)]
    try:
        read: list[list[Any]] = [[], []]

        def drain_until(total: int) -> None:
            for _ in range(200):  # at most 10 s of empty polls: a failure, not a wait
                if len(read[0]) + len(read[1]) >= total:
                    return
                for i, reader in enumerate(readers):
                    read[i].extend(reader.poll(100))

        drain_until(40)
        assert sorted(map(tuple, read[0] + read[1])) == sorted(tuple(r) for p in (0, 1) for r in records[p])
        count.write_text(str(PARTITIONS))  # partitions 2 and 3 "added"
        drain_until(sum(map(len, records.values())))
        for i, reader in enumerate(readers):
            read[i].extend(reader.poll(100))  # nothing more: a partition read twice would show here
        everything = Counter(tuple(r) for r in read[0] + read[1])
        assert everything == Counter(tuple(r) for rs in records.values() for r in rs), "lost or read twice"
        for i, reader in enumerate(readers):
            assert {r[0] for r in read[i]} == {p for p in range(PARTITIONS) if split_owner(f"{unique}:{p}", 2) == i}
            snapshot = reader.snapshot()
            assert snapshot == {f"{unique}:{p}": {"next": 20, "end": None}
                                for p in range(PARTITIONS) if split_owner(f"{unique}:{p}", 2) == i}
    finally:
        for reader in readers:
            reader.close()


def test_a_restored_job_resumes_the_partitions_it_found_while_running_from_the_checkpoint(
    kafka_bootstrap: str, unique: str, tmp_path: Path,
) -> None:
    """Run 1 (parallelism 2) starts with 2 partitions listed, finds the other 2 while running and stops
    with a final checkpoint once it read everything. Run 2 restores it at parallelism 3, after 10 more
    records per partition: it must read exactly those (a partition missing from the checkpoint, or
    given to no subtask, would be read from its start, or not at all)."""
    create_topic(kafka_bootstrap, unique, PARTITIONS)
    count = tmp_path / "partitions"
    count.write_text("2")
    first = {p: [[p, n] for n in range(30)] for p in range(PARTITIONS)}
    produce(kafka_bootstrap, unique, first)

    def run(expected: Counter[tuple[int, int]], grow_after: set[int] | None, parallelism: int) -> Counter[tuple[int, int]]:
        control = fs.JobControl()
        seen: Counter[tuple[int, int]] = Counter()
        lock = threading.Lock()
        done = threading.Event()

        def collect(record: Any) -> None:
            with lock:
                seen[tuple(record)] += 1
                got = {p for p, _ in seen}
                if grow_after is not None and got >= grow_after and count.read_text() != str(PARTITIONS):
                    count.write_text(str(PARTITIONS))
                if sum(seen.values()) >= sum(expected.values()) and not done.is_set():
                    done.set()
                    control.stop()

        watchdog = threading.Timer(60.0, control.stop)
        watchdog.start()
        try:
            flow = fs.Dataflow("discovery", parallelism=parallelism)
            (flow.source(ScriptedPartitions(unique, kafka_bootstrap, count, discovery_interval=0.1), uid="events")
                 .sink(fs.CallbackSink(collect), uid="out"))
            fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="100ms"),
                execution=fs.ExecutionOptions(executor="threads"),
                control=control,
            )
        finally:
            watchdog.cancel()
        assert done.is_set(), f"the run saw {sum(seen.values())} of {sum(expected.values())} records"
        return seen

    seen = run(Counter(tuple(r) for rs in first.values() for r in rs), grow_after={0, 1}, parallelism=2)
    assert seen == Counter(tuple(r) for rs in first.values() for r in rs)
    more = {p: [[p, n] for n in range(30, 40)] for p in range(PARTITIONS)}
    produce(kafka_bootstrap, unique, more)
    seen = run(Counter(tuple(r) for rs in more.values() for r in rs), grow_after=None, parallelism=3)
    assert seen == Counter(tuple(r) for rs in more.values() for r in rs), "run 2 read records of run 1 again"


def test_a_bounded_source_does_not_discover() -> None:
    pytest.importorskip("confluent_kafka")
    assert KafkaSource("t", "127.0.0.1:1", bounded=True).discovery_interval is None
    assert KafkaSource("t", "127.0.0.1:1", discovery_interval=None).discovery_interval is None
    assert KafkaSource("t", "127.0.0.1:1", discovery_interval="2s").discovery_interval == 2.0
