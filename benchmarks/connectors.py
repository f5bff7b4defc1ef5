"""Records/s of the reference keyed count through each broker connector, exactly-once with 1 s
checkpoints beside the same job with checkpoints off.

- Sources: ``NatsSource`` / ``RedisStreamSource`` / ``KafkaSource`` (bounded) → key_by → count →
  a sink that only counts. The input (``--records`` words over 1,000 keys) is written to the broker
  first and is not timed.
- Sinks: ``GeneratorSource`` (the same words) → key_by → count → ``NatsSink`` / ``RedisStreamSink`` /
  ``KafkaSink`` (``exactly_once``; with checkpoints off, a sink publishes at the end of the input).

Each figure is the median of ``--repeat`` runs on the threads executor, parallelism 1, timed by the
engine (``JobResult.seconds``). Kafka is librdkafka's mock cluster unless ``FLOWSTATE_KAFKA_BOOTSTRAP``
names a broker. Needs NATS (JetStream) on 127.0.0.1:4222 and Redis on 127.0.0.1:6379.

    python benchmarks/connectors.py [--records 100000] [--repeat 3] [--only nats redis kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import flowstate as fs

NATS = "nats://127.0.0.1:4222"
REDIS = "redis://127.0.0.1:6379"


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, key: str, ctx: fs.RuntimeContext):  # type: ignore[no-untyped-def]
        n = self.count.value() + 1
        self.count.update(n)
        yield (key, n)


def word(i: int) -> str:
    return f"k{(i * 7919) % 1000}"


def job(source: Any, sink: Any) -> fs.Dataflow:
    flow = fs.Dataflow("connector-bench", parallelism=1)
    flow.source(source, uid="in").key_by(lambda w: w).process(Count(), uid="count").sink(sink, uid="out")
    return flow


def timed(make_flow: Callable[[], fs.Dataflow], checkpoints: bool) -> float:
    with tempfile.TemporaryDirectory() as chk:
        result = fs.run(
            make_flow(),
            checkpoints=fs.CheckpointOptions(
                mode="exactly_once" if checkpoints else "none",
                checkpoint_dir=chk if checkpoints else None,
                interval="1s",
            ),
            execution=fs.ExecutionOptions(executor="threads"),
        )
    return result.seconds


# ---- inputs on the brokers ----------------------------------------------------------------------


def nats_input(n: int) -> tuple[str, Callable[[], None]]:
    import nats
    from nats.js.api import StreamConfig

    name = f"bench{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        nc = await nats.connect(NATS)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.*"], duplicate_window=900))
        for start in range(0, n, 1000):
            await asyncio.gather(*(js.publish(f"{name}.in", json.dumps(word(i)).encode())
                                   for i in range(start, min(n, start + 1000))))
        await js.add_stream(StreamConfig(name=name + "out", subjects=[f"{name}out.*"], duplicate_window=900))
        await nc.close()

    async def drop() -> None:
        nc = await nats.connect(NATS)
        for stream in (name, name + "out"):
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(fill())
    return name, lambda: asyncio.run(drop())


def redis_input(n: int) -> tuple[str, Callable[[], None]]:
    import redis

    key = f"bench{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS)
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.xadd(key, {"data": json.dumps(word(i))})
        pipe.execute()

    def drop() -> None:
        for k in client.scan_iter(f"{key}*"):
            client.delete(k)
        client.close()

    return key, drop


def kafka_input(n: int, bootstrap: str) -> tuple[str, Callable[[], None]]:
    from confluent_kafka import Producer

    topic = f"bench{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(n):
        while True:
            try:
                producer.produce(topic, json.dumps(word(i)).encode())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    return topic, lambda: None


# ---- the measurements ------------------------------------------------------------------------------


def measure(label: str, make_flow: Callable[[], fs.Dataflow], n: int, repeat: int, reset: Callable[[], None]) -> dict[str, Any]:
    row: dict[str, Any] = {"case": label}
    for checkpoints in (True, False):
        seconds = []
        for _ in range(repeat):
            reset()
            seconds.append(timed(make_flow, checkpoints))
        row["exactly_once" if checkpoints else "off"] = n / statistics.median(seconds)
    row["overhead"] = 1 - row["exactly_once"] / row["off"]
    print(f"{label:<34} {row['exactly_once']:>10,.0f} rec/s exactly-once 1 s  {row['off']:>10,.0f} rec/s off  "
          f"({row['overhead']:+.0%})", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["nats", "redis", "kafka"])
    args = parser.parse_args()
    n, repeat = args.records, args.repeat
    rows = []
    generator = lambda: fs.GeneratorSource(word, count=n)  # noqa: E731
    discard = lambda: fs.BatchCallbackSink(lambda records: None, name="discard")  # noqa: E731
    cleanups: list[Callable[[], None]] = []
    holder = None
    try:
        if "nats" in args.only:
            name, drop = nats_input(n)
            cleanups.append(drop)
            rows.append(measure("NatsSource → count", lambda: job(
                fs.NatsSource(stream=name, subjects=[f"{name}.in"], servers=NATS, bounded=True), discard()),
                n, repeat, lambda: None))
            rows.append(measure("count → NatsSink", lambda: job(
                generator(), fs.NatsSink(subject=f"{name}out.out", servers=NATS)), n, repeat, lambda: None))
        if "redis" in args.only:
            key, drop = redis_input(n)
            cleanups.append(drop)
            rows.append(measure("RedisStreamSource → count", lambda: job(
                fs.RedisStreamSource(streams=[key], url=REDIS, bounded=True), discard()), n, repeat, lambda: None))
            rows.append(measure("count → RedisStreamSink", lambda: job(
                generator(), fs.RedisStreamSink(stream=f"{key}:out", url=REDIS)), n, repeat, lambda: None))
        if "kafka" in args.only:
            bootstrap = os.environ.get("FLOWSTATE_KAFKA_BOOTSTRAP")
            if not bootstrap:
                from confluent_kafka import Producer

                holder = Producer({"test.mock.num.brokers": 1, "log_level": 3})
                bootstrap = ",".join(f"{b.host}:{b.port}" for b in holder.list_topics(timeout=10).brokers.values())
            topic, _ = kafka_input(n, bootstrap)
            rows.append(measure("KafkaSource → count", lambda: job(
                fs.KafkaSource(topics=[topic], bootstrap_servers=bootstrap, bounded=True), discard()),
                n, repeat, lambda: None))
            rows.append(measure("count → KafkaSink", lambda: job(
                generator(), fs.KafkaSink(topic=f"{topic}-out", bootstrap_servers=bootstrap,
                                          key=lambda record: record[0])), n, repeat, lambda: None))
    finally:
        for cleanup in cleanups:
            cleanup()
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
