"""Frames (``flowstate.transport.frames``): whatever way a byte stream is cut into reads, the reader
returns exactly the frames that were written, in order; a stream that ends inside a frame, or holds
something that is not a frame, is an error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowstate.transport.frames import (
    BATCH,
    CONTROL,
    COUNT,
    CREDIT,
    END,
    HEADER,
    KINDS,
    LINES,
    FrameError,
    FrameReader,
    credit,
    decode_batch,
    encode,
    encode_batch,
)


class Stream:
    """A byte stream read in pieces of the given sizes (then whatever is left, in one piece)."""

    def __init__(self, data: bytes, pieces: list[int] | None = None) -> None:
        self.data = data
        self.pieces = list(pieces or [])
        self.position = 0

    def recv_into(self, view: memoryview) -> int:
        left = len(self.data) - self.position
        if left == 0:
            return 0
        size = min(self.pieces.pop(0) if self.pieces else left, len(view), left)
        view[:size] = self.data[self.position : self.position + size]
        self.position += size
        return size


def read_all(reader: FrameReader) -> list[tuple[int, int, int, bytes]]:
    frames = []
    while (got := reader.read()) is not None:
        frames.extend((kind, gate, channel, bytes(payload)) for kind, gate, channel, payload in got)
    return frames


frame_strategy = st.tuples(
    st.sampled_from(sorted(KINDS)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
)


@given(frames=st.lists(frame_strategy, max_size=30), pieces=st.lists(st.integers(1, 400), max_size=60),
       buffer_size=st.integers(1, 64))
def test_frames_come_out_as_they_went_in_whatever_the_reads_and_the_buffer_size(frames, pieces, buffer_size):
    data = b"".join(encode(*frame) for frame in frames)

    assert read_all(FrameReader(Stream(data, pieces).recv_into, buffer_size)) == frames


def test_a_payload_larger_than_the_buffer_is_read_whole():
    payload = bytes(range(256)) * 100

    frames = read_all(FrameReader(Stream(encode(BATCH, 3, 4, payload) + encode(END, 3, 4), [7, 9000]).recv_into, 16))

    assert frames == [(BATCH, 3, 4, payload), (END, 3, 4, b"")]


def test_a_read_returns_every_complete_frame_it_has_and_payloads_are_views_valid_until_the_next_read():
    reader = FrameReader(Stream(encode(BATCH, 0, 1, b"one") + encode(BATCH, 0, 2, b"two")).recv_into)

    first = reader.read()

    assert [(k, g, c, bytes(p)) for k, g, c, p in first] == [(BATCH, 0, 1, b"one"), (BATCH, 0, 2, b"two")]
    assert reader.read() is None


def test_a_stream_that_ends_inside_a_frame_is_an_error():
    data = encode(BATCH, 1, 2, b"payload")

    for cut in (3, len(data) - 1):
        reader = FrameReader(Stream(data[:cut]).recv_into)
        with pytest.raises(FrameError, match="closed inside a frame"):
            reader.read()


def test_a_header_of_an_unknown_kind_is_an_error():
    reader = FrameReader(Stream(HEADER.pack(0, 99, 0, 0)).recv_into)

    with pytest.raises(FrameError, match="unknown frame kind 99"):
        reader.read()
    with pytest.raises(FrameError):
        encode(99, 0, 0)


def test_a_read_interrupted_by_a_timeout_can_be_tried_again_without_losing_bytes():
    data = encode(CONTROL, 0, 0, b"x" * 50) + encode(CONTROL, 0, 0, b"y")
    stream = Stream(data, [20])
    calls = []

    def recv_into(view: memoryview) -> int:
        calls.append(len(calls))
        if len(calls) == 2:
            raise TimeoutError()
        return stream.recv_into(view)

    reader = FrameReader(recv_into, 8)
    with pytest.raises(TimeoutError):
        reader.read()

    assert read_all(reader) == [(CONTROL, 0, 0, b"x" * 50), (CONTROL, 0, 0, b"y")]


def test_a_credit_frame_carries_the_number_of_batches_granted():
    [(kind, gate, channel, payload)] = read_all(FrameReader(Stream(credit(5, 6, 4)).recv_into))

    assert (kind, gate, channel, COUNT.unpack(payload)[0]) == (CREDIT, 5, 6, 4)


# ---- record batches ------------------------------------------------------------------------------


def through_a_stream(frame: bytes) -> list:
    [(kind, _, _, payload)] = FrameReader(Stream(frame, [3]).recv_into, 16).read()
    return decode_batch(kind, payload)


@given(st.lists(st.text(), min_size=1, max_size=20))
def test_a_batch_comes_out_equal_to_what_went_in_whatever_its_strings(batch):
    frame = encode_batch(4, 2, batch)
    assert HEADER.unpack_from(frame)[1:] == ((LINES if all("\n" not in s for s in batch) else BATCH), 4, 2)
    assert through_a_stream(frame) == batch


class Line(str):
    """A str subclass: it must come out as itself, so it crosses pickled."""


def test_a_batch_of_plain_lines_crosses_as_text_and_any_other_batch_as_a_pickle():
    lines = ["", "a b", "é\ud800", ""]
    assert HEADER.unpack_from(encode_batch(0, 0, lines))[1] == LINES
    assert encode_batch(0, 0, lines)[HEADER.size:] == "\na b\né\ud800\n".encode("utf-8", "surrogatepass")
    for other in (["a", ("b", 1)], ["a\nb"], [Line("x")], ["a", Line("x")], [Line("x"), "a"], [1, 2], [("k", 1)]):
        frame = encode_batch(0, 0, other)
        assert HEADER.unpack_from(frame)[1] == BATCH, other
        assert through_a_stream(frame) == other
        assert [type(r) for r in through_a_stream(frame)] == [type(r) for r in other]
    assert through_a_stream(encode_batch(0, 0, lines)) == lines
