"""Channels between processes (``flowstate.transport.remote``), over a real socket pair: items arrive
in order per channel, a producer waits for credits exactly as it waits for room in a local channel,
an unaligned barrier overtakes exactly the batches queued at the consumer, and a broken connection
cancels whoever waits on it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from flowstate.checkpoint.barrier import END_OF_INPUT, CheckpointBarrier
from flowstate.checkpoint.ids import CheckpointId
from flowstate.transport.channels import Cancelled, InputGate, Overtaking
from flowstate.transport.remote import WINDOW, CreditGate, DataPlane, RemoteChannelWriter

CAPACITY = 4
"""Of a local channel; a channel between processes has ``CREDITS``."""
CREDITS = WINDOW * CAPACITY
GATE = 1
"""The consumer's gate number (gate 0 is unused: numbers come from the job's placement)."""
CHANNELS = 2


@dataclass
class Pair:
    """Worker 0 produces into gate ``GATE`` of worker 1."""

    writer: RemoteChannelWriter
    gate: CreditGate
    producer: DataPlane
    consumer: DataPlane
    lost: list[tuple[str, int, str]]


@pytest.fixture
def pair() -> Iterator[Pair]:
    left, right = socket.socketpair()
    producer, consumer = DataPlane(2, CAPACITY), DataPlane(2, CAPACITY)
    producer.add_peer(1, left)
    consumer.add_peer(0, right)
    writer = producer.writer(GATE, 1, CHANNELS)
    gate = consumer.gate(GATE, CHANNELS)
    lost: list[tuple[str, int, str]] = []
    producer.start(lambda peer, reason: lost.append(("producer", peer, reason)))
    consumer.start(lambda peer, reason: lost.append(("consumer", peer, reason)))
    yield Pair(writer, gate, producer, consumer, lost)
    producer.close()
    consumer.close()


def take(gate: InputGate, timeout: float = 5.0) -> tuple[int, object]:
    got = gate.take(timeout)
    assert got is not None, "nothing arrived"
    return got


def eventually(condition, what: str, timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, what
        time.sleep(0.001)


def barrier(n: int, *, unaligned: bool = False) -> CheckpointBarrier:
    return CheckpointBarrier(CheckpointId(n), 0.0, unaligned=unaligned)


def test_batches_barriers_and_end_of_input_arrive_in_order_on_each_channel(pair):
    pair.writer.put(0, [1, 2])
    pair.writer.put(1, ["a"])
    pair.writer.put(0, barrier(1))
    pair.writer.put(0, [3])
    pair.writer.put(1, END_OF_INPUT)
    pair.writer.put(0, END_OF_INPUT)

    items = [take(pair.gate) for _ in range(6)]

    assert [item for ch, item in items if ch == 0] == [[1, 2], barrier(1), [3], END_OF_INPUT]
    assert [item for ch, item in items if ch == 1] == [["a"], END_OF_INPUT]


def test_a_producer_waits_for_credit_like_for_room_in_a_full_local_channel(pair):
    # The window of a channel between processes is wider than a local channel (rule 2).
    for i in range(CREDITS):
        pair.writer.put(0, [i])
    eventually(lambda: pair.gate.queued(0) == CREDITS, "the batches arrive")
    assert not pair.writer.has_room(0)
    assert pair.writer.has_room(1), "credits are per channel"

    sent = threading.Event()
    blocked = threading.Thread(target=lambda: (pair.writer.put(0, [CREDITS]), sent.set()), daemon=True)
    blocked.start()
    time.sleep(0.2)
    assert not sent.is_set(), "a producer without credit must wait"

    # Credits go back two at a time (half a local channel's capacity): one batch taken is not enough yet.
    take(pair.gate)
    time.sleep(0.1)
    assert not sent.is_set()
    take(pair.gate)
    eventually(sent.is_set, "two batches taken return two credits")
    blocked.join()
    assert [take(pair.gate)[1] for _ in range(CREDITS - 1)] == [[i] for i in range(2, CREDITS + 1)]


def test_the_batches_of_a_channel_queued_at_the_consumer_never_exceed_its_window(pair):
    done = threading.Event()

    def produce() -> None:
        for i in range(200):
            pair.writer.put(0, [i])
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    received, most_queued = [], 0
    while len(received) < 200:
        most_queued = max(most_queued, pair.gate.queued(0))
        _, item = take(pair.gate)
        received.append(item[0])
        if len(received) % 7 == 0:
            time.sleep(0.005)  # a slow consumer: the producer is held back by credits

    assert received == list(range(200))
    assert most_queued <= CREDITS
    assert done.is_set()


def test_barriers_and_end_of_input_need_no_credit(pair):
    for i in range(CREDITS):
        pair.writer.put(0, [i])

    pair.writer.put(0, barrier(1))
    pair.writer.put(0, END_OF_INPUT)

    eventually(lambda: pair.gate.queued(0) == CREDITS + 2, "barrier and end-of-input arrive behind the batches")


def test_an_unaligned_barrier_overtakes_exactly_the_batches_queued_at_the_consumer(pair):
    pair.writer.put(0, [1])
    pair.writer.put(0, [2])
    eventually(lambda: pair.gate.queued(0) == 2, "the batches arrive")
    assert take(pair.gate) == (0, [1])

    pair.writer.put(0, [3])
    pair.writer.put_priority(0, barrier(1, unaligned=True))
    pair.writer.put(0, [4])
    eventually(lambda: pair.gate.queued(0) == 4, "the frames arrive")

    ch, first = take(pair.gate)
    assert ch == 0 and type(first) is Overtaking
    assert first.barrier == barrier(1, unaligned=True)
    assert first.batches == [[2], [3]], "every batch sent before the barrier and not yet taken"
    assert [take(pair.gate)[1] for _ in range(3)] == [[2], [3], [4]], "overtaken batches are still processed"


def test_a_broken_connection_cancels_a_producer_waiting_for_credit_and_is_reported(pair):
    for i in range(CREDITS):
        pair.writer.put(0, [i])
    failure: list[BaseException] = []

    def blocked() -> None:
        try:
            pair.writer.put(0, ["never"])
        except Cancelled as exc:
            failure.append(exc)

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    time.sleep(0.1)
    pair.consumer.close()  # the consumer's process is gone

    thread.join(5.0)
    assert failure and isinstance(failure[0], Cancelled)
    eventually(lambda: any(side == "producer" and peer == 1 for side, peer, _ in pair.lost), "the loss is reported")
    with pytest.raises(Cancelled):
        pair.writer.put(0, END_OF_INPUT)
    assert not any(side == "consumer" for side, _, _ in pair.lost), "a plane that closes reports nothing"


def test_items_for_a_cancelled_gate_are_dropped_and_the_connection_stays_up(pair):
    pair.gate.cancel()

    pair.writer.put(1, barrier(1))
    pair.writer.put(1, ["dropped"])
    time.sleep(0.1)

    assert pair.lost == []
    assert pair.writer.has_room(1)
