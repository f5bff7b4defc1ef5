"""NatsSource and NatsSink against the NATS server on this machine: the conformance kit, and the
one-line errors of a bad configuration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import flowstate as fs
from flowstate.connectors.broker_common import ConnectorError, UnencodableRecordError
from flowstate.testing.conformance import SINK_CHECKS, SOURCE_CHECKS, SinkCase, SinkTarget, SourceCase

RECORDS = [{"n": i, "word": f"w{i % 4}"} for i in range(12)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _admin(url: str, action: Any) -> Any:
    import nats

    nc = await nats.connect(url)
    try:
        return await action(nc.jetstream())
    finally:
        await nc.close()


def create_stream(url: str, name: str, subjects: list[str], duplicate_window: float = 900.0) -> None:
    from nats.js.api import StreamConfig

    run(_admin(url, lambda js: js.add_stream(StreamConfig(name=name, subjects=subjects, duplicate_window=duplicate_window))))


def delete_stream(url: str, name: str) -> None:
    run(_admin(url, lambda js: js.delete_stream(name)))


def publish(url: str, items: list[tuple[str, bytes]]) -> None:
    async def go(js: Any) -> None:
        # Sent in order on one connection (the stream keeps that order), acknowledged 500 at a time.
        for start in range(0, len(items), 500):
            await asyncio.gather(*(js.publish(subject, payload) for subject, payload in items[start:start + 500]))

    run(_admin(url, go))


def read_stream(url: str, name: str) -> list[Any]:
    """Every message of the stream, decoded as JSON, in stream order."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def go(js: Any) -> list[Any]:
        info = await js.stream_info(name)
        if info.state.messages == 0:
            return []
        sub = await js.pull_subscribe(">", stream=name, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, mem_storage=True))
        out: list[Any] = []
        while len(out) < info.state.messages:
            out += [json.loads(m.data) for m in await sub.fetch(1000, timeout=2)]
        return out

    return run(_admin(url, go))


@pytest.fixture
def streams(nats_url: str) -> Iterator[list[str]]:
    """Streams the test creates; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            delete_stream(nats_url, name)
        except Exception:  # noqa: BLE001 - best effort clean-up
            pass


@pytest.mark.parametrize("check", list(SOURCE_CHECKS))
def test_the_nats_source_passes_every_source_check(check: str, nats_url: str, unique: str, streams: list[str]) -> None:
    create_stream(nats_url, unique, [f"{unique}.>"])
    streams.append(unique)
    # Three subjects (splits), interleaved in the stream; one more message on a subject nobody reads.
    items = [(f"{unique}.{'abc'[i % 3]}", json.dumps(r).encode()) for i, r in enumerate(RECORDS)]
    publish(nats_url, items[:5] + [(f"{unique}.other", b"1")] + items[5:])
    subjects = [f"{unique}.a", f"{unique}.b", f"{unique}.c"]
    SOURCE_CHECKS[check](SourceCase(
        lambda: fs.NatsSource(stream=unique, subjects=subjects, servers=nats_url, bounded=True), RECORDS))


def nats_sink_case(nats_url: str, unique: str, streams: list[str], delivery: str) -> SinkCase:
    counter = iter(range(10_000))

    def make_target() -> SinkTarget:
        name = f"{unique}x{next(counter)}"
        create_stream(nats_url, name, [f"{name}.out"])
        streams.append(name)
        sink = fs.NatsSink(subject=f"{name}.out", servers=nats_url, delivery=delivery)
        return SinkTarget(sink, lambda: read_stream(nats_url, name))

    return SinkCase(make_target, RECORDS, exactly_once=delivery == "exactly_once")


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize("check", list(SINK_CHECKS))
def test_the_nats_sink_passes_every_sink_check(
    check: str, delivery: str, nats_url: str, unique: str, streams: list[str],
) -> None:
    SINK_CHECKS[check](nats_sink_case(nats_url, unique, streams, delivery))


def test_a_bounded_source_reads_what_was_in_the_stream_when_it_started(
    nats_url: str, unique: str, streams: list[str],
) -> None:
    create_stream(nats_url, unique, [f"{unique}.>"])
    streams.append(unique)
    publish(nats_url, [(f"{unique}.a", b"1"), (f"{unique}.a", b"2")])
    reader = fs.NatsSource(stream=unique, servers=nats_url, bounded=True).build_reader([f"{unique}/>"], None)
    try:
        publish(nats_url, [(f"{unique}.a", b"3")])
        got = []
        while (batch := reader.poll(10)) is not None:
            got += batch
        assert got == [1, 2]
        assert reader.snapshot() == {f"{unique}/>": {"next": 3, "end": 2}}
    finally:
        reader.close()


def test_an_unreachable_server_is_one_line_naming_it() -> None:
    source = fs.NatsSource(stream="s", servers="nats://127.0.0.1:1")
    with pytest.raises(ConnectorError, match=r"^NatsSource 'nats:s': cannot reach NATS at nats://127.0.0.1:1") as info:
        source.build_reader(source.splits(), None)
    assert "\n" not in str(info.value)


def test_a_missing_stream_is_one_line(nats_url: str, unique: str) -> None:
    source = fs.NatsSource(stream=unique, servers=nats_url)
    with pytest.raises(ConnectorError, match=f"stream '{unique}' does not exist"):
        source.build_reader(source.splits(), None)
    with pytest.raises(ConnectorError, match=f"no JetStream stream captures subject '{unique}.out'"):
        fs.NatsSink(subject=f"{unique}.out", servers=nats_url).build_writer(0, 1, None)


def test_a_duplicate_window_shorter_than_the_checkpoint_timeout_is_refused(
    nats_url: str, unique: str, streams: list[str],
) -> None:
    create_stream(nats_url, unique, [f"{unique}.out"], duplicate_window=120)
    streams.append(unique)
    with pytest.raises(ConnectorError, match="keeps message ids for 120 s, shorter than min_duplicate_window 600 s"):
        fs.NatsSink(subject=f"{unique}.out", servers=nats_url).build_writer(0, 1, None)
    fs.NatsSink(subject=f"{unique}.out", servers=nats_url, min_duplicate_window="1m").build_writer(0, 1, None).close()
    fs.NatsSink(subject=f"{unique}.out", servers=nats_url, delivery="at_least_once").build_writer(0, 1, None).close()


def test_an_unencodable_record_names_the_sink_and_the_record(nats_url: str, unique: str, streams: list[str]) -> None:
    create_stream(nats_url, unique, [f"{unique}.out"])
    streams.append(unique)
    writer = fs.NatsSink(subject=f"{unique}.out", servers=nats_url, name="counts").build_writer(0, 1, None)
    try:
        with pytest.raises(UnencodableRecordError, match=r"^NatsSink 'counts': cannot encode record \{'bad': \{1, 2\}\}"):
            writer.write_batch([{"ok": 1}, {"bad": {1, 2}}])
    finally:
        writer.close()


def test_a_source_without_subjects_reads_the_whole_stream_as_one_split(
    nats_url: str, unique: str, streams: list[str],
) -> None:
    create_stream(nats_url, unique, [f"{unique}.>"])
    streams.append(unique)
    publish(nats_url, [(f"{unique}.a", b"1"), (f"{unique}.b.c", b"2")])
    source = fs.NatsSource(stream=unique, servers=nats_url, bounded=True)
    assert source.splits() == [f"{unique}/>"]
    reader = source.build_reader(source.splits(), None)
    try:
        got: list[int] = []
        while (batch := reader.poll(10)) is not None:
            got += batch
    finally:
        reader.close()
    assert got == [1, 2]


def test_the_nats_reader_tells_each_subject_apart_for_per_split_watermarks(
    nats_url: str, unique: str, streams: list[str],
) -> None:
    create_stream(nats_url, unique, [f"{unique}.>"])
    streams.append(unique)
    publish(nats_url, [(f"{unique}.{'abc'[i % 3]}", json.dumps(r).encode()) for i, r in enumerate(RECORDS)])
    subjects = [f"{unique}.a", f"{unique}.b", f"{unique}.c"]
    source = fs.NatsSource(stream=unique, subjects=subjects, servers=nats_url, bounded=True)
    reader = source.build_reader(source.splits(), None)
    events = []
    try:
        while (got := reader.poll_splits(2)) is not None:
            events.extend(got)
    finally:
        reader.close()
    for k, split in enumerate(source.splits()):
        mine = [(records, finished) for s, records, finished in events if s == split]
        assert mine[0] == ([], False), f"{split} was not announced before its records"
        assert mine[-1] == ([], True), f"{split} was not finished after its records"
        assert [r for records, _ in mine for r in records] == RECORDS[k::3]


def test_the_sink_reads_back_the_messages_of_its_own_subject_in_stream_order(
    nats_url: str, unique: str, streams: list[str],
) -> None:
    create_stream(nats_url, unique, [f"{unique}.*"])
    streams.append(unique)
    publish(nats_url, [(f"{unique}.{'out' if n % 3 else 'other'}", json.dumps(n).encode()) for n in range(12)])
    sink = fs.NatsSink(subject=f"{unique}.out", servers=nats_url)
    assert sink.committed_records() == [json.dumps(n).encode() for n in range(12) if n % 3]
