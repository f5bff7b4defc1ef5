"""Kafka: a replayable source read from stored partition offsets, and a sink made exactly-once by
transactions that carry a commit marker (client: confluent-kafka, ``pip install 'flowstate[brokers]'``).

**KafkaSource** rules:

1. One split per partition, ``"{topic}:{partition}"``, listed from the broker's metadata. Subtask
   *i* of *p* reads the partitions whose owner ``(crc32(topic) + partition) % p`` is *i*
   (``split_owner``: a function of the partition alone, the same in every subtask and attempt).
1b. Discovery (unbounded sources; ``discovery_interval``, default 30 s, ``None`` to turn it off):
   every reader lists the topics' partitions again at that interval of processing time and starts
   reading each new partition it owns at its **earliest** offset (its records were written while the
   job ran, so ``start`` does not apply to them); from then on it is one of the reader's splits, with
   its position in every snapshot, and a restore reassigns it like any other. Each new partition is
   read by exactly one subtask, since its owner does not depend on who found it. A bounded source
   reads the partitions it listed first, and no others.
2. A split's position is ``{"next": offset, "end": E}``: the offset of the **next** record to read,
   and ``None`` or, with ``bounded=True``, the partition's high watermark when the split was first
   read. ``start`` chooses the first offset of a split the checkpoint does not name: ``"earliest"``
   (low watermark), ``"latest"`` (high watermark) or a timestamp in milliseconds.
3. The consumer is assigned its partitions at the positions (no group rebalancing) and reads with
   ``isolation.level=read_committed``. The group's offsets are committed to the broker only when a
   checkpoint covering them completed (``AcknowledgingReader``), for monitoring: a restore resumes
   from the checkpoint's positions, never from the group's.
   ``rate``: at most that many records per second per reader (a token bucket; a throttled poll
   sleeps at most 0.05 s).

**KafkaSink** rules (``delivery="exactly_once"``: the publishing committer of
``flowstate.connectors.broker_common``, one transactional id per subtask, ``{name}-{subtask}``; two
jobs writing at once must give their sinks different ``name``s, or they fence each other):

1. The records of checkpoint *n* are kept in the sink's pre-committed state until *n* completed.
   librdkafka cannot resume another producer's open transaction after a crash (a new producer with
   the same transactional id aborts it in ``init_transactions``), so records produced into an open
   transaction on the barrier would be lost by a crash after the checkpoint completed; keeping them
   in the checkpoint makes that window harmless.
2. On completion, one transaction per batch: the records, and a marker record (key ``run/sink/subtask``,
   value *n*) to the marker topic ``{topic}.flowstate-commits`` (one partition), then
   ``commit_transaction``. Records and marker become visible together or not at all.
3. A writer built from a resume state first fences any earlier producer of its transactional id
   (``init_transactions`` aborts its open transaction), reads the markers (``read_committed``), and
   publishes again, in new transactions, exactly the batches whose marker is absent. Consumers with
   ``isolation.level=read_committed`` see every record once.

The Kafka mock cluster of librdkafka (``test.mock.num.brokers``) does not honour ``read_committed``:
aborted records are visible there, so only a real broker shows rule 3 after a crash inside a
transaction (see docs/architecture.md).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from flowstate.clock import SystemClock
from flowstate.config import parse_duration
from flowstate.connectors.base import SplitEvent
from flowstate.connectors.broker_common import (
    MID_COMMIT,
    BrokerSinkWriter,
    ConnectorError,
    Delivery,
    SplitGroups,
    SplitTracker,
    WriterIdentity,
    flatten,
    hit,
    json_bytes,
    json_record,
    parse_delivery,
    read_limiter,
    redistribute_publishing_states,
    require,
)

_POLL_TIMEOUT = 0.05
_METADATA_TIMEOUT = 5.0
_TXN_TIMEOUT = 30.0
MARKER_SUFFIX = ".flowstate-commits"


def _metadata(bootstrap: str, topics: Sequence[str], owner: str, extra: dict[str, Any]) -> dict[str, list[int]]:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **extra})
    try:
        metadata = admin.list_topics(timeout=_METADATA_TIMEOUT)
    except KafkaException as exc:
        raise ConnectorError(f"{owner}: cannot reach Kafka at {bootstrap} ({exc.args[0].str()})") from None
    out = {}
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise ConnectorError(f"{owner}: topic {topic!r} does not exist at {bootstrap}")
        out[topic] = sorted(found.partitions)
    return out


def split_owner(split: str, parallelism: int) -> int:
    """Rule 1: the subtask that reads partition ``split`` (``topic:partition``). The partitions of one
    topic go round the subtasks from an offset that depends on the topic (as Flink's Kafka source
    does), so that the first partitions of several topics do not all land on subtask 0."""
    topic, _, partition = split.rpartition(":")
    return (zlib.crc32(topic.encode("utf-8")) + int(partition)) % parallelism


def discovered(listed: Mapping[str, Sequence[int]], known: Collection[str], subtask: int,
               parallelism: int) -> list[str]:
    """Rule 1b: the partitions of ``listed`` (topic → partitions) that subtask ``subtask`` owns and
    does not read yet, in listing order."""
    return [split for topic, partitions in listed.items() for split in (f"{topic}:{p}" for p in partitions)
            if split not in known and split_owner(split, parallelism) == subtask]


class KafkaSource:
    """Kafka partitions read from stored offsets (see the module rules). Replayable."""

    __slots__ = ("_topics", "_bootstrap", "_start", "_bounded", "_rate", "_decoder", "_name", "_config", "_splits",
                 "_discovery")

    def __init__(
        self,
        topics: Sequence[str] | str,
        bootstrap_servers: str,
        *,
        start: str | int = "earliest",
        bounded: bool = False,
        rate: float | None = None,
        decoder: Callable[[bytes], Any] = json_record,
        config: dict[str, Any] | None = None,
        discovery_interval: float | str | None = "30s",
        name: str | None = None,
    ) -> None:
        require("confluent_kafka", "confluent-kafka", "KafkaSource")
        topics = [topics] if isinstance(topics, str) else list(topics)
        if not topics or len(set(topics)) != len(topics):
            raise ValueError(f"KafkaSource: topics must be distinct and non-empty, got {topics!r}")
        if start not in ("earliest", "latest") and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
            raise ValueError(f"KafkaSource: start must be 'earliest', 'latest' or a timestamp in ms, got {start!r}")
        if not callable(decoder):
            raise TypeError(f"KafkaSource: decoder must be callable (bytes → record), got {decoder!r}")
        self._topics = topics
        self._bootstrap = bootstrap_servers
        self._start = start
        self._bounded = bounded
        self._rate = rate
        read_limiter(rate, "KafkaSource")  # validates
        self._decoder = decoder
        self._config = dict(config or {})
        self._name = name or f"kafka:{','.join(topics)}"
        self._splits: list[str] | None = None
        self._discovery = None if discovery_interval is None or bounded else parse_duration(
            discovery_interval, what="KafkaSource discovery_interval")

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    @property
    def discovery_interval(self) -> float | None:
        """Seconds between two listings of a reader (rule 1b), ``None`` when it does not discover."""
        return self._discovery

    def list_partitions(self) -> dict[str, list[int]]:
        """Topic → its partitions, from the broker's metadata (one line when unreachable or missing)."""
        return _metadata(self._bootstrap, self._topics, f"KafkaSource {self._name!r}", self._config)

    def splits(self) -> list[str]:
        """Listed once by a bounded source (every attempt reads the same partitions); listed on every
        call by a discovering one (a restore then knows the partitions found while running)."""
        if self._splits is None or self._discovery is not None:
            partitions = self.list_partitions()
            self._splits = [f"{topic}:{p}" for topic in self._topics for p in partitions[topic]]
        return list(self._splits)

    def split_owner(self, split: str, parallelism: int) -> int:
        return split_owner(split, parallelism)

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None, *,
                     subtask: int | None = None, parallelism: int | None = None) -> KafkaReader:
        known = self.splits()
        for split in splits:
            if split not in known:
                raise ValueError(f"KafkaSource {self._name!r}: unknown split {split!r}; splits are {known}")
        if (subtask is None) != (parallelism is None) or (parallelism is not None and not 0 <= subtask < parallelism):  # type: ignore[operator]
            raise ValueError(f"KafkaSource {self._name!r}: subtask {subtask!r} of parallelism {parallelism!r}")
        owner = None if subtask is None or self._discovery is None else (subtask, parallelism)
        return KafkaReader(self, list(splits), resume_state or {}, owner)  # type: ignore[arg-type]


class KafkaReader:
    """Reads the partitions of one subtask. State: ``next`` and ``end`` per partition."""

    __slots__ = ("_limiter", "_source", "_consumer", "_next", "_end", "_done", "_to_commit", "_tracker", "_owner",
                 "_clock", "_next_listing")

    def __init__(self, source: KafkaSource, splits: list[str], resume: dict[str, Any],
                 owner: tuple[int, int] | None = None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._source = source
        self._owner = owner
        """(subtask, parallelism) of a reader that discovers partitions (rule 1b), else ``None``."""
        self._clock = SystemClock()
        self._next_listing = self._clock.monotonic() + (source._discovery or 0.0)
        self._limiter = read_limiter(source._rate, source.name)
        self._consumer = Consumer({
            "bootstrap.servers": source._bootstrap, "group.id": f"flowstate.{source.name}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "isolation.level": "read_committed", "auto.offset.reset": "earliest", **source._config,
        })
        self._next: dict[str, int] = {}
        self._end: dict[str, int | None] = {}
        self._done: set[str] = set()
        self._to_commit: list[tuple[int, dict[str, int]]] = []
        self._tracker = SplitTracker()
        assignment = []
        for split in splits:
            topic, _, part = split.rpartition(":")
            tp = TopicPartition(topic, int(part))
            position = resume.get(split)
            if position is None:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=_METADATA_TIMEOUT)
                if source._start == "earliest":
                    first = low
                elif source._start == "latest":
                    first = high
                else:
                    found = self._consumer.offsets_for_times([TopicPartition(topic, int(part), int(source._start))],
                                                             timeout=_METADATA_TIMEOUT)[0].offset
                    first = high if found < 0 else found
                position = {"next": first, "end": high if source._bounded else None}
            self._next[split] = int(position["next"])
            self._end[split] = position["end"]
            if self._exhausted(split):
                self._done.add(split)
            assignment.append(TopicPartition(topic, int(part), self._next[split]))
        self._consumer.assign(assignment)

    def _exhausted(self, split: str) -> bool:
        end = self._end[split]
        return end is not None and self._next[split] >= end

    def poll(self, max_records: int) -> list[Any] | None:
        groups = self._read(max_records)
        return None if groups is None else flatten(groups)

    def poll_splits(self, max_records: int) -> list[SplitEvent] | None:
        groups = self._read(max_records)
        return None if groups is None else self._tracker.events(groups, self._active())

    def _active(self) -> list[str]:
        return [s for s in self._next if s not in self._done]

    def _discover(self) -> None:
        """Rule 1b: at most once per ``discovery_interval``, start reading the new partitions this
        reader owns, at their earliest offsets."""
        from confluent_kafka import TopicPartition

        now = self._clock.monotonic()
        if self._owner is None or now < self._next_listing:
            return
        self._next_listing = now + (self._source._discovery or 0.0)
        try:
            listed = self._source.list_partitions()
        except ConnectorError:
            return  # the broker is out of reach for now: the next listing tries again
        found = discovered(listed, self._next, *self._owner)
        if not found:
            return
        added = []
        for split in found:
            topic, _, part = split.rpartition(":")
            low, _ = self._consumer.get_watermark_offsets(TopicPartition(topic, int(part)), timeout=_METADATA_TIMEOUT)
            self._next[split], self._end[split] = int(low), None
            added.append(TopicPartition(topic, int(part), int(low)))
        self._consumer.incremental_assign(added)

    def _read(self, max_records: int) -> SplitGroups | None:
        if len(self._done) == len(self._next) and self._owner is None:
            return None  # a discovering reader is unbounded: it may own partitions added later
        self._discover()
        if max_records <= 0:
            return []
        if self._limiter is not None:
            max_records = self._limiter.take(max_records)
            if max_records == 0:
                return []
        messages = self._consumer.consume(num_messages=max_records, timeout=_POLL_TIMEOUT)
        decode = self._source._decoder
        by_split: dict[str, list[Any]] = {}
        advanced: dict[str, int] = {}
        for message in messages:
            if message.error() is not None:
                continue  # partition EOF and transient errors: librdkafka retries by itself
            split = f"{message.topic()}:{message.partition()}"
            offset = message.offset()
            assert offset is not None  # a consumed message without error has one
            nxt = advanced.get(split, self._next[split])
            end = self._end[split]
            if offset < nxt or split in self._done or (end is not None and offset >= end):
                continue
            by_split.setdefault(split, []).append(decode(message.value()))  # type: ignore[arg-type] # null: None
            advanced[split] = offset + 1
        # Assigned after every record decoded: a failing decoder leaves the positions where they were.
        self._next.update(advanced)
        if not messages:
            self._check_ends()
        for split in advanced:
            if self._exhausted(split):
                self._done.add(split)
        return list(by_split.items())

    def _check_ends(self) -> None:
        """A bounded partition whose last offsets are transaction markers delivers no record at its end:
        the consumer's position, past them, says it is done."""
        from confluent_kafka import TopicPartition

        waiting = [s for s in self._next if s not in self._done and self._end[s] is not None]
        if not waiting:
            return
        tps = [TopicPartition(s.rpartition(":")[0], int(s.rpartition(":")[2])) for s in waiting]
        for split, tp in zip(waiting, self._consumer.position(tps)):
            end = self._end[split]
            if end is not None and tp.offset >= 0 and tp.offset >= end:
                self._next[split] = max(self._next[split], end)
                self._done.add(split)

    def snapshot(self) -> dict[str, Any]:
        return {s: {"next": self._next[s], "end": self._end[s]} for s in self._next}

    def snapshot_for(self, checkpoint_id: int) -> dict[str, Any]:
        self._to_commit.append((checkpoint_id, dict(self._next)))
        return self.snapshot()

    def notify_complete(self, checkpoint_id: int) -> None:
        from confluent_kafka import TopicPartition

        covered = [offsets for cid, offsets in self._to_commit if cid <= checkpoint_id]
        self._to_commit = [(cid, o) for cid, o in self._to_commit if cid > checkpoint_id]
        if covered:
            offsets = [TopicPartition(s.rpartition(":")[0], int(s.rpartition(":")[2]), o) for s, o in covered[-1].items()]
            # Synchronous: once notify_complete returns, the group shows what the checkpoint covers.
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def notify_aborted(self, checkpoint_id: int) -> None:
        """Kept: committed with the next checkpoint that completes."""

    def close(self) -> None:
        self._consumer.close()


def _frame(key: bytes | None, value: bytes) -> bytes:
    """A record's key and value in one payload of the pre-committed state."""
    if key is None:
        return b"\xff\xff\xff\xff" + value
    return struct.pack(">I", len(key)) + key + value


def _unframe(payload: bytes) -> tuple[bytes | None, bytes]:
    (n,) = struct.unpack(">I", payload[:4])
    if n == 0xFFFFFFFF:
        return None, payload[4:]
    return payload[4:4 + n], payload[4 + n:]


class KafkaSink:
    """Records produced to a Kafka topic (see the module rules)."""

    __slots__ = ("_topic", "_bootstrap", "_key", "_encoder", "_delivery", "_name", "_config")

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        *,
        key: Callable[[Any], Any] | None = None,
        delivery: str | Delivery = Delivery.EXACTLY_ONCE,
        encoder: Callable[[Any], bytes] = json_bytes,
        config: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        require("confluent_kafka", "confluent-kafka", "KafkaSink")
        if not topic:
            raise ValueError("KafkaSink: topic must be a non-empty name")
        if key is not None and not callable(key):
            raise TypeError(f"KafkaSink: key must be callable (record → str | bytes), got {key!r}")
        if not callable(encoder):
            raise TypeError(f"KafkaSink: encoder must be callable (record → bytes), got {encoder!r}")
        self._topic = topic
        self._bootstrap = bootstrap_servers
        self._key = key
        self._encoder = encoder
        self._delivery = parse_delivery(delivery, "KafkaSink")
        self._config = dict(config or {})
        self._name = name or f"kafka-sink-{topic}"
        if "/" in self._name:
            raise ValueError(f"KafkaSink: name must not contain '/', got {self._name!r}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def transactional(self) -> bool:
        return self._delivery is Delivery.EXACTLY_ONCE

    @property
    def marker_topic(self) -> str:
        """The topic where this sink records which checkpoints it committed."""
        return self._topic + MARKER_SUFFIX

    def redistribute_state(self, states: Sequence[Any | None], parallelism: int) -> list[Any]:
        if self._delivery is Delivery.AT_LEAST_ONCE:
            return [None] * parallelism
        return redistribute_publishing_states(states, parallelism, f"KafkaSink {self._name!r}")

    def committed_records(self) -> list[bytes]:
        """The values of every record of the topic, partition by partition in offset order, read back
        by a ``read_committed`` consumer: what a downstream reader sees. The chaos runner compares them.
        (The confluent-kafka mock cluster ignores ``read_committed``: there, the records of aborted
        transactions are included too.)"""
        from confluent_kafka import Consumer, TopicPartition

        owner = f"KafkaSink {self._name!r}"
        _metadata(self._bootstrap, [], owner, self._config)  # one line when unreachable
        consumer = Consumer({"bootstrap.servers": self._bootstrap, "group.id": f"flowstate-read-back.{self._topic}",
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "fetch.wait.max.ms": 10, **self._config})
        try:
            topic = consumer.list_topics(self._topic, timeout=10).topics.get(self._topic)
            if topic is None or topic.error is not None:
                return []
            ends: dict[int, int] = {}
            start = []
            for p in sorted(topic.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=10)
                if high > low:
                    ends[p] = high
                    start.append(TopicPartition(self._topic, p, low))
            by_partition: dict[int, list[bytes]] = {p: [] for p in ends}
            consumer.assign(start)
            give_up = time.monotonic() + 60
            while ends:
                if time.monotonic() > give_up:
                    raise ConnectorError(f"{owner}: could not read topic {self._topic!r} back to its end within 60 s")
                for message in consumer.consume(1000, 0.05):
                    partition, value = message.partition(), message.value()
                    if message.error() is None and partition is not None and value is not None and partition in by_partition:
                        by_partition[partition].append(value)
                positions = consumer.position([TopicPartition(self._topic, p) for p in ends])
                if all(tp.offset >= ends[tp.partition] for tp in positions):
                    break
            return [value for p in sorted(by_partition) for value in by_partition[p]]
        finally:
            consumer.close()

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> KafkaSinkWriter:
        if not 0 <= subtask < parallelism:
            raise ValueError(f"KafkaSink {self._name!r}: subtask {subtask} outside 0..{parallelism - 1}")
        return KafkaSinkWriter(self, subtask, resume_state)


class KafkaSinkWriter(BrokerSinkWriter):
    __slots__ = ("_sink", "_producer", "_committed", "_errors")

    def __init__(self, sink: KafkaSink, subtask: int, resume_state: Any | None) -> None:
        from confluent_kafka import Producer

        self._sink = sink
        owner = f"KafkaSink {sink.name!r}"
        self._owner = owner
        self._errors: list[Any] = []
        _metadata(sink._bootstrap, [], owner, sink._config)  # one line when unreachable
        config: dict[str, Any] = {"bootstrap.servers": sink._bootstrap, "linger.ms": 5, **sink._config}
        self._committed: dict[str, int] = {}
        if sink._delivery is Delivery.EXACTLY_ONCE:
            config["transactional.id"] = f"{sink.name}-{subtask}"
            config["transaction.timeout.ms"] = int(_TXN_TIMEOUT * 1000)
            self._producer = Producer(config)
            # Rule 3: fence every earlier producer of this id; its open transaction is aborted.
            self._producer.init_transactions(_TXN_TIMEOUT)
            if resume_state is not None and resume_state.get("pending"):
                self._committed = self._read_markers()
        else:
            config["enable.idempotence"] = True
            self._producer = Producer(config)
        self._init_delivery(owner, sink.name, subtask, sink._delivery, self._encode, resume_state)

    def _encode(self, record: Any) -> bytes:
        key = self._sink._key(record) if self._sink._key is not None else None
        if isinstance(key, str):
            key = key.encode()
        elif key is not None and not isinstance(key, bytes):
            key = str(key).encode()
        return _frame(key, self._sink._encoder(record))

    def _read_markers(self) -> dict[str, int]:
        """Rule 3: the latest committed checkpoint of every writer identity, from the marker topic."""
        from confluent_kafka import Consumer, TopicPartition

        sink = self._sink
        consumer = Consumer({"bootstrap.servers": sink._bootstrap, "group.id": f"flowstate.{sink.name}.markers",
                             "enable.auto.commit": False, "isolation.level": "read_committed", **sink._config})
        try:
            tp = TopicPartition(sink.marker_topic, 0)
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=_METADATA_TIMEOUT)
            except Exception:  # noqa: BLE001 - no marker topic yet: nothing was ever committed
                return {}
            consumer.assign([TopicPartition(sink.marker_topic, 0, low)])
            found: dict[str, int] = {}
            while True:
                message = consumer.poll(1.0)
                if message is None:
                    position = consumer.position([tp])[0].offset
                    if position < 0 or position >= high:
                        break
                    continue
                key, value, offset = message.key(), message.value(), message.offset()
                if message.error() is None and key is not None and value is not None:
                    identity, cid = key.decode(), int(value)
                    found[identity] = max(found.get(identity, 0), cid)
                if offset is not None and offset + 1 >= high:
                    break
            return found
        finally:
            consumer.close()

    def _on_delivery(self, error: Any, _: Any) -> None:
        if error is not None:
            self._errors.append(error)

    def _raise_errors(self) -> None:
        if self._errors:
            error, self._errors = self._errors[0], []
            raise ConnectorError(f"{self._owner}: a record was not delivered to {self._sink._topic!r}: {error}")

    def _publish_batch(self, identity: WriterIdentity, checkpoint_id: int, payloads: tuple[bytes, ...]) -> None:
        if self._committed.get(identity, 0) >= checkpoint_id:
            return  # rule 3: its transaction committed before the crash
        producer, topic = self._producer, self._sink._topic
        producer.begin_transaction()
        for payload in payloads:
            key, value = _unframe(payload)
            self._produce(topic, value, key)
        self._produce(self._sink.marker_topic, str(checkpoint_id).encode(), identity.encode(), partition=0)
        producer.flush(_TXN_TIMEOUT)
        self._raise_errors()
        hit(self._failpoints, MID_COMMIT)  # the records are in an open transaction, not committed
        producer.commit_transaction(_TXN_TIMEOUT)
        self._committed[identity] = checkpoint_id

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int | None = None) -> None:
        kwargs: dict[str, Any] = {"key": key, "on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: let deliveries drain it

    def _send(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            key, value = _unframe(payload)
            self._produce(self._sink._topic, value, key)
        self._producer.poll(0)
        self._raise_errors()

    def _flush(self) -> None:
        self._producer.flush(_TXN_TIMEOUT)
        self._raise_errors()

    def close(self) -> None:
        if self._committer is None:
            self._producer.flush(5)
