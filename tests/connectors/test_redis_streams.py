"""RedisStreamSource and RedisStreamSink against the Redis server on this machine: the conformance
kit (with and without a consumer group), and the one-line errors of a bad configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import flowstate as fs
from flowstate.connectors.broker_common import ConnectorError, UnencodableRecordError
from flowstate.testing.conformance import SINK_CHECKS, SOURCE_CHECKS, SinkCase, SinkTarget, SourceCase

RECORDS = [{"n": i, "word": f"w{i % 4}"} for i in range(12)]


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A client; every key the test names with its unique prefix is deleted afterwards."""
    import redis

    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def keys(client: Any, unique: str) -> Iterator[str]:
    yield unique
    for key in client.scan_iter(f"{unique}*"):
        client.delete(key)


def read_stream(client: Any, key: str) -> list[Any]:
    return [json.loads(fields[b"data"]) for _, fields in client.xrange(key)]


def fill(client: Any, prefix: str) -> list[str]:
    """Three streams holding RECORDS between them (record i in stream i % 3)."""
    streams = [f"{prefix}:in{k}" for k in range(3)]
    for i, record in enumerate(RECORDS):
        client.xadd(streams[i % 3], {"data": json.dumps(record)})
    return streams


@pytest.mark.parametrize("group", [None, "readers"])
@pytest.mark.parametrize("check", list(SOURCE_CHECKS))
def test_the_redis_source_passes_every_source_check(
    check: str, group: str | None, redis_url: str, client: Any, keys: str,
) -> None:
    streams = fill(client, keys)

    def acknowledged() -> int:
        # Entries delivered to the group and no longer pending: acknowledged.
        delivered = sum(len(client.xrange(s)) for s in streams if client.xinfo_groups(s))
        return delivered - sum(client.xpending(s, group)["pending"] for s in streams if client.xinfo_groups(s))

    counter = iter(range(1000))

    def make_source() -> fs.RedisStreamSource:
        # A group of its own per reader set, so that each starts with nothing pending.
        name = None if group is None else f"{group}{next(counter)}"
        return fs.RedisStreamSource(streams=streams, url=redis_url, bounded=True, group=name)

    if check == "acknowledges_only_after_completion" and group is not None:
        def make_source() -> fs.RedisStreamSource:  # noqa: F811 - one fixed group, probed by acknowledged()
            return fs.RedisStreamSource(streams=streams, url=redis_url, bounded=True, group=group)
        SOURCE_CHECKS[check](SourceCase(make_source, RECORDS, acknowledged))
        return
    SOURCE_CHECKS[check](SourceCase(make_source, RECORDS))


def test_a_group_reader_restored_from_a_checkpoint_reads_again_what_it_had_not_acknowledged(
    redis_url: str, client: Any, keys: str,
) -> None:
    streams = fill(client, keys)
    source = fs.RedisStreamSource(streams=streams, url=redis_url, bounded=True, group="g")
    first = source.build_reader(streams, None)
    got: list[Any] = []
    while len(got) < 4:
        got += first.poll(2) or []
    state = first.snapshot_for(1)
    first.notify_complete(1)
    while len(got) < 8:
        got += first.poll(2) or []  # delivered to the group, never acknowledged: the attempt dies here
    first.close()
    second = source.build_reader(streams, state)
    rest: list[Any] = []
    while (batch := second.poll(5)) is not None:
        rest += batch
    second.close()
    covered = len(got[:4])
    assert sorted(json.dumps(r) for r in got[:covered] + rest) == sorted(json.dumps(r) for r in RECORDS)


def redis_sink_case(redis_url: str, client: Any, prefix: str, delivery: str) -> SinkCase:
    counter = iter(range(10_000))

    def make_target() -> SinkTarget:
        key = f"{prefix}:out{next(counter)}"
        return SinkTarget(fs.RedisStreamSink(stream=key, url=redis_url, delivery=delivery),
                          lambda: read_stream(client, key))

    return SinkCase(make_target, RECORDS, exactly_once=delivery == "exactly_once")


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize("check", list(SINK_CHECKS))
def test_the_redis_sink_passes_every_sink_check(
    check: str, delivery: str, redis_url: str, client: Any, keys: str,
) -> None:
    SINK_CHECKS[check](redis_sink_case(redis_url, client, keys, delivery))


def test_the_commit_marker_is_written_with_the_records(redis_url: str, client: Any, keys: str) -> None:
    sink = fs.RedisStreamSink(stream=f"{keys}:out", url=redis_url, name="counts")
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([1, 2])
    writer.pre_commit(7)
    writer.commit(7)
    writer.close()
    (field, value), = client.hgetall(f"{keys}:out:flowstate-committed").items()
    assert field.decode().endswith("/counts/0") and value == b"7"
    assert read_stream(client, f"{keys}:out") == [1, 2]


def test_an_unreachable_server_is_one_line_naming_it() -> None:
    source = fs.RedisStreamSource(streams=["s"], url="redis://127.0.0.1:1")
    with pytest.raises(ConnectorError, match=r"^RedisStreamSource 'redis:s': cannot reach Redis at redis://127.0.0.1:1") as info:
        source.build_reader(["s"], None)
    assert "\n" not in str(info.value)
    with pytest.raises(ConnectorError, match=r"^RedisStreamSink 'redis-sink:s': cannot reach Redis"):
        fs.RedisStreamSink(stream="s", url="redis://127.0.0.1:1").build_writer(0, 1, None)


def test_a_missing_stream_is_one_line(redis_url: str, keys: str) -> None:
    with pytest.raises(ConnectorError, match=f"stream '{keys}:nope' does not exist at {redis_url}$"):
        fs.RedisStreamSource(streams=[f"{keys}:nope"], url=redis_url).build_reader([f"{keys}:nope"], None)


def test_an_unencodable_record_names_the_sink_and_the_record(redis_url: str, keys: str) -> None:
    for delivery in ("exactly_once", "at_least_once"):
        writer = fs.RedisStreamSink(stream=f"{keys}:out", url=redis_url, name="counts", delivery=delivery).build_writer(0, 1, None)
        with pytest.raises(UnencodableRecordError, match=r"^RedisStreamSink 'counts': cannot encode record b'\\xff'"):
            writer.write_batch([b"\xff"])
        writer.close()


def test_a_source_with_a_rate_reads_no_faster_than_it(redis_url: str, client: Any, keys: str) -> None:
    import time

    for i in range(60):
        client.xadd(f"{keys}:in", {"data": json.dumps(i)})
    reader = fs.RedisStreamSource(streams=[f"{keys}:in"], url=redis_url, bounded=True, rate=200).build_reader(
        [f"{keys}:in"], None)
    started, got = time.monotonic(), []
    try:
        while (batch := reader.poll(1000)) is not None:
            got += batch
    finally:
        reader.close()
    assert got == list(range(60))
    # 60 records at 200/s with a burst of 20: at least (60 - 20) / 200 = 0.2 s.
    assert time.monotonic() - started >= 0.19
    with pytest.raises(ValueError, match="rate must be > 0"):
        fs.RedisStreamSource(streams=["x"], url=redis_url, rate=0)


@pytest.mark.parametrize("group", [None, "readers"])
def test_the_redis_reader_tells_each_stream_apart_for_per_split_watermarks(
    group: str | None, redis_url: str, client: Any, keys: str,
) -> None:
    streams = fill(client, keys)
    reader = fs.RedisStreamSource(streams, url=redis_url, bounded=True, group=group).build_reader(streams, None)
    events = []
    try:
        while (got := reader.poll_splits(5)) is not None:
            events.extend(got)
    finally:
        reader.close()
    for k, stream in enumerate(streams):
        mine = [(records, finished) for split, records, finished in events if split == stream]
        assert mine[0] == ([], False), f"{stream} was not announced before its records"
        assert mine[-1] == ([], True), f"{stream} was not finished after its records"
        assert [r for records, _ in mine for r in records] == RECORDS[k::3]


def test_the_sink_reads_its_committed_records_back_from_the_stream_in_order(
    redis_url: str, client: Any, keys: str,
) -> None:
    for n in range(5):
        client.xadd(keys, {"data": json.dumps({"n": n})})
    client.xadd(keys, {"other": "field"})  # not a record the sink wrote: no ``data``
    sink = fs.RedisStreamSink(stream=keys, url=redis_url)
    assert sink.committed_records() == [json.dumps({"n": n}).encode() for n in range(5)]
