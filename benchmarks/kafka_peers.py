"""The reference keyed count from Kafka on flowstate, Quix Streams and Bytewax: same machine, same
data, same Kafka (librdkafka's mock cluster, or the broker ``FLOWSTATE_KAFKA_BOOTSTRAP`` names).

The first ``--records`` lines of the reference workload (``events_5m_10k.txt`` of
/work/shared/bench/gen_events.py, 10,000 keys; ``--input``) are produced to a topic of one partition,
untimed. Each system then runs as a process of its own, timed from its start to its exit (interpreter
start-up included, as in /work/shared/bench/README.md): read the topic from the beginning, key by the
line, keep a running count per key in its keyed state, emit (key, count) for every record into a sink
that only counts, and stop after the last record. Cases:

- ``flowstate-eo``: ``KafkaSource(bounded=True)``, exactly-once, 1 s checkpoints (parallelism 1);
- ``flowstate-off``: the same with checkpoints off;
- ``quix-eo`` / ``quix-alo``: Quix Streams ``Application`` with ``processing_guarantee="exactly-once"``
  / ``"at-least-once"``, the count in its RocksDB state (``sdf.apply(..., stateful=True)``), commits
  every 1 s, changelog topics off (the mock cluster cannot create topics); it stops itself at the
  last record. Quix asks for each topic's configuration (DescribeConfigs) before it starts, which
  the mock cluster cannot answer: on it, that one call is answered from the topic's metadata;
- ``bytewax-rec`` / ``bytewax``: Bytewax's ``KafkaSource`` (``tail=False``) → ``stateful_map`` → a
  counting sink, with recovery (snapshots every 1 s) / without.

Runs are interleaved (every case once per round) and each figure is the median of ``--repeat`` rounds.

    pip install -e '.[peers]'   # quixstreams (it pins confluent-kafka < 2.13) and bytewax 0.21.1
    python benchmarks/kafka_peers.py [--records 500000] [--repeat 3] [--input FILE] [--only CASE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve()
CASES = ("flowstate-eo", "flowstate-off", "quix-eo", "quix-alo", "bytewax-rec", "bytewax")


# ---- the jobs, each run in a process of its own ---------------------------------------------------


def run_flowstate(bootstrap: str, topic: str, n: int, checkpoints: bool) -> int:
    import flowstate as fs

    class Count(fs.KeyedProcessFunction):
        def open(self, ctx):  # type: ignore[no-untyped-def]
            self.count = ctx.value_state("count", default=0)

        def process(self, key, ctx):  # type: ignore[no-untyped-def]
            c = self.count.value() + 1
            self.count.update(c)
            yield (key, c)

    seen = [0]
    flow = fs.Dataflow("kafka-peers", parallelism=1)
    (flow.source(fs.KafkaSource(topics=[topic], bootstrap_servers=bootstrap, bounded=True, decoder=bytes.decode),
                 uid="in")
         .key_by(lambda w: w).process(Count(), uid="count")
         .sink(fs.BatchCallbackSink(lambda records: seen.__setitem__(0, seen[0] + len(records)), name="count"),
               uid="out"))
    with tempfile.TemporaryDirectory() as chk:
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(
                mode="exactly_once" if checkpoints else "none",
                checkpoint_dir=chk if checkpoints else None,
                interval="1s",
            ),
            execution=fs.ExecutionOptions(executor="threads"),
        )
    return seen[0]


def run_quix(bootstrap: str, topic: str, n: int, exactly_once: bool) -> int:
    from quixstreams import Application

    if not os.environ.get("FLOWSTATE_KAFKA_BOOTSTRAP"):
        _answer_describe_configs_for_quix()
    seen = [0]
    with tempfile.TemporaryDirectory() as state:
        app = Application(broker_address=bootstrap, consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
                          auto_offset_reset="earliest", state_dir=state, commit_interval=1.0,
                          processing_guarantee="exactly-once" if exactly_once else "at-least-once",
                          loglevel="WARNING", use_changelog_topics=False, auto_create_topics=False)
        source = app.topic(topic, value_deserializer="bytes", key_deserializer="bytes")
        sdf = app.dataframe(source)

        def count(value: bytes, state) -> tuple[str, int]:  # type: ignore[no-untyped-def]
            # The state is the message key's: each message is keyed by its line when produced (a
            # group_by would need a repartition topic, which the mock cluster cannot create).
            c = state.get("n", 0) + 1
            state.set("n", c)
            return value, c

        def sink(_: tuple[str, int]) -> None:
            seen[0] += 1
            if seen[0] >= n:
                app.stop()

        sdf = sdf.apply(count, stateful=True)
        sdf.update(sink)
        app.run()
    return seen[0]


_KAFKA_TOPIC_DEFAULTS = {"retention.ms": "604800000", "retention.bytes": "-1", "cleanup.policy": "delete",
                         "min.insync.replicas": "1"}


def _answer_describe_configs_for_quix() -> None:
    """Quix Streams reads each topic's configuration (Kafka's DescribeConfigs) before it starts; the
    mock cluster has no controller to answer it, so the topic's partitions and replicas are taken from
    its metadata instead, and its configuration is Kafka's defaults. Nothing Quix does while processing changes."""
    from quixstreams.models.topics import admin

    def inspect_topics(self, topic_names, timeout=None):  # type: ignore[no-untyped-def]
        cluster = self.list_topics(timeout=timeout)
        return {name: admin.TopicConfig(num_partitions=len(cluster[name].partitions),
                                        replication_factor=len(cluster[name].partitions[0].replicas),
                                        extra_config=dict(_KAFKA_TOPIC_DEFAULTS)) if name in cluster else None
                for name in topic_names}

    admin.TopicAdmin.inspect_topics = inspect_topics


def run_bytewax(bootstrap: str, topic: str, n: int, recovery: bool) -> int:
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main

    seen = [0]

    class Counting(StatelessSinkPartition):
        def write_batch(self, items):  # type: ignore[no-untyped-def]
            seen[0] += len(items)

    class CountingSink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):  # type: ignore[no-untyped-def]
            return Counting()

    def count(c, _line):  # type: ignore[no-untyped-def]
        c = (c or 0) + 1
        return c, c

    flow = Dataflow("kafka-peers")
    lines = op.input("in", flow, KafkaSource([bootstrap], [topic], tail=False, batch_size=1000))
    keyed = op.key_on("key", op.map("line", lines, lambda msg: msg.value.decode()), lambda line: line)
    counts = op.stateful_map("count", keyed, count)
    op.output("out", counts, CountingSink())
    with tempfile.TemporaryDirectory() as db:
        config = None
        if recovery:
            init_db_dir(Path(db), 1)
            config = RecoveryConfig(db)
        from datetime import timedelta

        run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=config)
    return seen[0]


# ---- the driver -----------------------------------------------------------------------------------


def produce(bootstrap: str, path: Path, n: int) -> str:
    from confluent_kafka import Producer

    # Created by the first produce (the mock cluster answers no CreateTopics: it has no controller).
    topic = f"peers{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000})
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            while True:
                try:
                    line = line.rstrip(b"\n")
                    producer.produce(topic, line, key=line)  # keyed: Quix keeps its state per message key
                    break
                except BufferError:
                    producer.poll(0.05)
    producer.flush(120)
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    lows = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in partitions]
    consumer.close()
    if any(lows):
        # The mock cluster keeps a bounded log per partition (about 230,000 of these records).
        sys.exit(f"the cluster dropped the oldest records of {topic} (low offsets {lows}): use fewer --records")
    return topic


def child(case: str, bootstrap: str, topic: str, n: int) -> int:
    system, _, variant = case.partition("-")
    if system == "flowstate":
        got = run_flowstate(bootstrap, topic, n, checkpoints=variant == "eo")
    elif system == "quix":
        got = run_quix(bootstrap, topic, n, exactly_once=variant == "eo")
    else:
        got = run_bytewax(bootstrap, topic, n, recovery=variant == "rec")
    if got != n:
        print(f"{case}: counted {got} records, not {n}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--input", type=Path, default=HERE.parents[1] / "bench-data" / "events_5m_10k.txt")
    parser.add_argument("--only", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--child", nargs=4, metavar=("CASE", "BOOTSTRAP", "TOPIC", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, bootstrap, topic, n = args.child
        return child(case, bootstrap, topic, int(n))
    if not args.input.exists():
        print(f"no input at {args.input}: run python /work/shared/bench/gen_events.py {args.input.parent}",
              file=sys.stderr)
        return 2
    holder = None
    bootstrap = os.environ.get("FLOWSTATE_KAFKA_BOOTSTRAP")
    if not bootstrap:
        from confluent_kafka import Producer

        # The mock cluster lives as long as this producer: its listener is real TCP on 127.0.0.1.
        holder = Producer({"test.mock.num.brokers": 1, "log_level": 3})
        bootstrap = ",".join(f"{b.host}:{b.port}" for b in holder.list_topics(timeout=10).brokers.values())
    topic = produce(bootstrap, args.input, args.records)
    print(f"{args.records:,} records in topic {topic} at {bootstrap}; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    seconds: dict[str, list[float]] = {case: [] for case in args.only}
    failed: dict[str, str] = {}
    for round_ in range(args.repeat):
        for case in args.only:
            if case in failed:
                continue
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(HERE), "--child", case, bootstrap, topic, str(args.records)],
                                  capture_output=True, text=True)
            took = time.perf_counter() - started
            if done.returncode != 0:
                failed[case] = " | ".join(done.stderr.strip().splitlines()[-3:])
                print(f"round {round_ + 1} {case}: FAILED: {failed[case]}", flush=True)
                continue
            seconds[case].append(took)
            print(f"round {round_ + 1} {case}: {took:.2f} s ({args.records / took:,.0f} records/s); "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    rows = {case: statistics.median(s) for case, s in seconds.items() if s}
    base = rows.get("flowstate-eo")
    print("\n| case | median s | records/s | case time ÷ flowstate-eo time |\n|---|---|---|---|")
    for case, s in rows.items():
        ratio = f"{s / base:.2f}×" if base else "-"
        print(f"| {case} | {s:.2f} | {args.records / s:,.0f} | {ratio} |")
    for case, why in failed.items():
        print(f"| {case} | failed: {why} | | |")
    print(json.dumps({"records": args.records, "seconds": seconds, "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
