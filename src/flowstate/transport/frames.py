"""Length-prefixed frames: what crosses a connection between two processes of a job.

Rules:

1. A frame is a 13-byte header, then ``length`` bytes of payload. The header is little-endian
   ``length: u32, kind: u8, gate: u32, channel: u32``. Nothing else is ever on the wire: a reader
   that finds the connection closed in the middle of a frame has lost the peer, not a message.
2. Data frames (``BATCH``, ``LINES``, ``ARROW``, ``BARRIER``, ``PRIORITY``, ``END``, ``WATERMARK``) name the *gate* (the index of the
   consuming task in the job's placement) and the *channel* within that gate. A ``BATCH`` payload is
   one pickled record batch (pickled once, by the producer). A ``LINES`` payload is a batch whose
   records are all exact ``str`` without ``"\n"``: the records joined by ``"\n"``, encoded as UTF-8
   with ``surrogatepass`` (no pickle on either side; see ``encode_batch``). An ``ARROW`` payload is a
   batch whose items are ``pyarrow.RecordBatch`` of one schema, as one Arrow IPC stream
   (``flowstate.arrow.encode_ipc``; pyarrow is imported only when such a batch is sent or received). ``BARRIER`` and ``PRIORITY`` carry a
   pickled ``CheckpointBarrier``; ``END`` has no payload; ``WATERMARK`` carries a pickled
   ``flowstate.time.Watermark`` and, like a barrier, stays behind the batches sent before it. On one connection frames arrive in the order
   they were sent, so a barrier stays behind the batches sent before it (``PRIORITY`` is the
   exception by design: the receiver puts it at the head of its channel, see ``remote.py``).
3. ``CREDIT`` flows the other way: the consumer of ``(gate, channel)`` grants its producer room for
   more batches; the payload is the number of batches as a ``u32``.
4. ``HELLO`` opens a data connection: ``gate`` holds the sending worker's index, the payload the
   attempt's token. ``CONTROL`` carries one pickled message between a worker and the coordinator.

The decoder is pure: ``FrameReader`` takes its bytes from an injected ``recv_into``, so a test feeds
it any split of a byte stream.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

from flowstate.columnar import is_record_batch

HEADER = struct.Struct("<IBII")
"""length, kind, gate, channel"""
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 0xFFFFFFFF

BATCH = 1
BARRIER = 2
PRIORITY = 3
END = 4
CREDIT = 5
HELLO = 6
CONTROL = 7
WATERMARK = 8
LINES = 9
ARROW = 10
KINDS = frozenset({BATCH, BARRIER, PRIORITY, END, CREDIT, HELLO, CONTROL, WATERMARK, LINES, ARROW})

_PICKLE = pickle.HIGHEST_PROTOCOL

COUNT = struct.Struct("<I")
"""The payload of a ``CREDIT`` frame."""

Frame = tuple[int, int, int, memoryview]
"""``(kind, gate, channel, payload)``"""


class FrameError(Exception):
    """The byte stream is not a sequence of frames (rule 1), or it ended inside one."""


def encode(kind: int, gate: int, channel: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One frame as bytes (rule 1)."""
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"a frame payload of {len(payload):,} bytes does not fit a u32 length")
    return HEADER.pack(len(payload), kind, gate, channel) + payload


def encode_batch(gate: int, channel: int, batch: list[Any]) -> bytes:
    """A non-empty record batch as one frame: ``LINES`` when every record is an exact ``str``
    without ``"\n"`` (the usual batch out of a line-based source), ``ARROW`` when every item is a
    ``pyarrow.RecordBatch`` of one schema, else ``BATCH`` (pickle). Raises
    what pickle raises for a record it cannot serialise."""
    # Counting in a list of the types is about half the cost of a set of them (a per-record cost).
    if list(map(type, batch)).count(str) == len(batch):
        text = "\n".join(batch)
        if text.count("\n") == len(batch) - 1:
            return encode(LINES, gate, channel, text.encode("utf-8", "surrogatepass"))
    elif is_record_batch(batch[0]):
        from flowstate.columnar import encode_ipc

        ipc = encode_ipc(batch)
        if ipc is not None:
            return encode(ARROW, gate, channel, ipc)
    return encode(BATCH, gate, channel, pickle.dumps(batch, _PICKLE))


def decode_batch(kind: int, payload: memoryview) -> list[Any]:
    """The records of a ``BATCH``, ``LINES`` or ``ARROW`` payload."""
    if kind == LINES:
        return str(payload, "utf-8", "surrogatepass").split("\n")
    if kind == ARROW:
        from flowstate.columnar import decode_ipc

        return decode_ipc(payload)
    return pickle.loads(payload)  # type: ignore[no-any-return]


def credit(gate: int, channel: int, batches: int = 1) -> bytes:
    """A ``CREDIT`` frame granting ``batches`` more batches on ``(gate, channel)``."""
    return HEADER.pack(COUNT.size, CREDIT, gate, channel) + COUNT.pack(batches)


class FrameReader:
    """Whole frames from a byte stream, read through ``recv_into`` (a socket's, or a test's).

    ``read()`` returns every complete frame it has, at least one, reading more bytes only when it has
    none. The payloads are views into the reader's buffer: they are valid until the next call of
    ``read()``, so the caller decodes (unpickles) them before reading again. A ``recv_into`` that
    raises (a socket timeout) leaves the reader as it was: ``read()`` may be called again.
    """

    __slots__ = ("_buffer", "_end", "_recv_into", "_start", "_view")

    def __init__(self, recv_into: Callable[[memoryview], int], buffer_size: int = 1 << 20) -> None:
        self._recv_into = recv_into
        self._buffer = bytearray(max(buffer_size, HEADER_SIZE))
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0

    def read(self) -> list[Frame] | None:
        """At least one frame; ``None`` when the stream ended between two frames. Raises
        ``FrameError`` when it ended inside a frame or a header names an unknown kind."""
        while True:
            frames, needed = self._parse()
            if frames:
                return frames
            self._make_room(needed)
            received = self._recv_into(self._view[self._end:])
            if received == 0:
                if self._end > self._start:
                    raise FrameError(
                        f"the connection closed inside a frame ({self._end - self._start} of {needed} bytes read)"
                    )
                return None
            self._end += received

    def _parse(self) -> tuple[list[Frame], int]:
        """The complete frames from ``_start``, and the bytes the next incomplete one needs."""
        frames: list[Frame] = []
        view = self._view
        start, end = self._start, self._end
        unpack = HEADER.unpack_from
        while end - start >= HEADER_SIZE:
            length, kind, gate, channel = unpack(view, start)
            if kind not in KINDS:
                raise FrameError(f"unknown frame kind {kind} at byte {start} of the buffer")
            stop = start + HEADER_SIZE + length
            if stop > end:
                self._start = start
                return frames, HEADER_SIZE + length
            frames.append((kind, gate, channel, view[start + HEADER_SIZE : stop]))
            start = stop
        self._start = start
        return frames, HEADER_SIZE

    def _make_room(self, needed: int) -> None:
        """Move the incomplete frame to the front of the buffer, or into a larger buffer, so that
        ``needed`` bytes fit from its start."""
        start, end = self._start, self._end
        pending = end - start
        if needed > len(self._buffer):
            # A new buffer rather than a resize: views handed out earlier may still exist.
            bigger = bytearray(max(needed, 2 * len(self._buffer)))
            bigger[:pending] = self._view[start:end]
            self._buffer = bigger
            self._view = memoryview(bigger)
        elif start and (start + needed > len(self._buffer) or start == end):
            self._view[:pending] = self._view[start:end]
        else:
            return
        self._start = 0
        self._end = pending
