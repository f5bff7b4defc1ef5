"""Channels between tasks in different processes: frames over sockets, with credit-based flow control.

Rules:

1. One connection per pair of workers carries every channel between them, both ways (frames of
   ``flowstate.transport.frames``). One thread per connection reads it and never waits on anything but
   the socket: it appends what arrives to the consumer's gate (``InputGate.deliver``) and hands
   credits to the producers.
2. A producer sends a batch only with a **credit** of its channel. A channel starts with
   ``WINDOW × capacity`` credits (``capacity``: that of a channel inside one process) and its consumer
   returns one each time its task takes a batch of that channel from the gate. The batches of a
   channel that are queued at the consumer or in flight therefore never exceed the window: a slow
   consumer back-pressures its producer across processes as a full local channel does, and the
   reading thread never has to wait for room (rule 1). The window is wider than a local channel
   because a credit takes a while to travel back (the producer's process must wake up and get the
   interpreter lock); with ``capacity`` credits only, producers stall meanwhile
   (``benchmarks/scaling.py``).
3. Barriers, watermarks and end-of-input take no credit: at most a few of them are ever in a channel.
4. An unaligned barrier (a ``PRIORITY`` frame) is put at the head of its channel by the reading
   thread (``InputGate.put_priority``), which records the batches it overtakes. By rule 1 every
   batch sent before the barrier on the connection is in the gate by then, so the overtaken batches
   are exactly those ahead of the barrier in the channel: none is lost between two sockets.
5. A connection that breaks cancels what waits on it: a producer waiting for credit, or sending,
   raises ``Cancelled``; the owner of the data plane hears of it (``on_lost``) unless it is closing.
"""

from __future__ import annotations

import pickle
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from flowstate.checkpoint.barrier import END_OF_INPUT, CheckpointBarrier, EndOfInput
from flowstate.errors import FlowstateError
from flowstate.time.watermarks import Watermark
from flowstate.transport.channels import Cancelled, InputGate
from flowstate.transport.frames import (
    ARROW,
    BARRIER,
    BATCH,
    CONTROL,
    COUNT,
    CREDIT,
    END,
    LINES,
    PRIORITY,
    WATERMARK,
    FrameError,
    FrameReader,
    credit,
    decode_batch,
    encode,
    encode_batch,
)

_PICKLE = pickle.HIGHEST_PROTOCOL
WINDOW = 2
"""Credits of a channel between processes, in multiples of the capacity of a local channel (rule 2)."""


class UnpicklableRecordError(FlowstateError):
    """A batch bound for another process holds a record that pickle cannot serialise."""


class Connection:
    """A socket to another process. Any thread may send (sends are serialised); one thread reads."""

    __slots__ = ("_send_lock", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: int) -> None:
        self.sock = sock
        self.peer = peer
        self._send_lock = threading.Lock()

    def send(self, frame: bytes) -> None:
        """Send one whole frame; raises ``OSError`` when the connection is broken."""
        with self._send_lock:
            self.sock.sendall(frame)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class RemoteChannelWriter:
    """The producer end of the input channels of one task in another process (a ``ChannelWriter``).

    Batches are pickled here, once, by the producing task's thread, and sent when the channel has a
    credit (rule 2)."""

    __slots__ = ("_cond", "_connection", "_credits", "_gate", "_lost")

    def __init__(self, connection: Connection, gate: int, num_channels: int, capacity: int) -> None:
        self._connection = connection
        self._gate = gate
        self._credits = [capacity] * num_channels
        self._cond = threading.Condition(threading.Lock())
        self._lost = False

    def put(self, channel: int, item: Any, producer_cancelled: threading.Event | None = None) -> None:
        kind = type(item)
        if kind is list:
            cond = self._cond
            credits = self._credits
            with cond:
                while credits[channel] <= 0:
                    if self._lost or (producer_cancelled is not None and producer_cancelled.is_set()):
                        raise Cancelled()
                    cond.wait(0.05)
                credits[channel] -= 1
            try:
                frame = encode_batch(self._gate, channel, item)
            except Exception as exc:
                raise UnpicklableRecordError(
                    f"a record for a task in another worker process cannot be pickled ({type(exc).__name__}: {exc}); "
                    "records that cross processes must be picklable, or run the job with executor threads"
                ) from exc
            self._send(frame)
        elif kind is CheckpointBarrier:
            self._send(encode(BARRIER, self._gate, channel, pickle.dumps(item, _PICKLE)))
        elif kind is EndOfInput:
            self._send(encode(END, self._gate, channel))
        elif kind is Watermark:
            self._send(encode(WATERMARK, self._gate, channel, pickle.dumps(item, _PICKLE)))
        else:
            raise TypeError(f"cannot send {item!r} on a channel")

    def has_room(self, channel: int) -> bool:
        return self._credits[channel] > 0

    def put_priority(self, channel: int, barrier: Any) -> None:
        """Rule 4: the consumer's reading thread puts ``barrier`` at the head of the channel."""
        self._send(encode(PRIORITY, self._gate, channel, pickle.dumps(barrier, _PICKLE)))

    def grant(self, channel: int, batches: int) -> None:
        with self._cond:
            self._credits[channel] += batches
            self._cond.notify_all()

    def lose(self) -> None:
        """The connection broke: whoever waits for credit gives up (rule 5)."""
        with self._cond:
            self._lost = True
            self._cond.notify_all()

    def _send(self, frame: bytes) -> None:
        if self._lost:
            raise Cancelled()
        try:
            self._connection.send(frame)
        except OSError:
            raise Cancelled() from None


class CreditGate(InputGate):
    """An input gate some of whose channels are fed from other processes: taking a batch of such a
    channel returns its credit to the producer (rule 2).

    Credits go back ``grant`` at a time (half a local channel's capacity): a frame per batch would
    cost the producer's process a wake-up per batch. At most ``grant - 1`` credits of a channel are
    held back, so a producer whose batches were all taken always has a credit left."""

    def __init__(self, gate: int, num_channels: int, capacity: int) -> None:
        super().__init__(num_channels, capacity)
        self._returns: list[Connection | None] = [None] * num_channels
        self._taken = [0] * num_channels
        self._grant = max(1, capacity // 2)
        self._credit_frames = [credit(gate, ch, self._grant) for ch in range(num_channels)]

    def receive(self, channel: int, item: Any, connection: Connection) -> None:
        """An in-order item that arrived on ``connection`` (by the reading thread)."""
        self._returns[channel] = connection
        self.deliver(channel, item)

    def take(self, timeout: float) -> tuple[int, Any] | None:
        got = super().take(timeout)
        if got is not None and type(got[1]) is list:
            ch = got[0]
            connection = self._returns[ch]
            if connection is not None:
                taken = self._taken[ch] + 1
                if taken < self._grant:
                    self._taken[ch] = taken
                else:
                    self._taken[ch] = 0
                    try:
                        connection.send(self._credit_frames[ch])
                    except OSError:
                        pass  # the producer's process is gone: nobody needs the credit
        return got


class DataPlane:
    """The connections of one worker to its peers, the local gates they feed and the writers to the
    gates of other workers. Gates are numbered by the job's placement (every task of the job has a
    number, wherever it runs)."""

    def __init__(self, gates: int, capacity: int) -> None:
        self._capacity = capacity
        self._gates: list[CreditGate | None] = [None] * gates
        self._writers: list[RemoteChannelWriter | None] = [None] * gates
        self._connections: dict[int, Connection] = {}
        self._threads: list[threading.Thread] = []
        self._closing = False

    def add_peer(self, peer: int, sock: socket.socket) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Credits are tiny frames: Nagle's algorithm would hold them back behind delayed acks.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections[peer] = Connection(sock, peer)

    def gate(self, gate: int, num_channels: int) -> CreditGate:
        """The input gate of a local task."""
        made = CreditGate(gate, num_channels, self._capacity)
        self._gates[gate] = made
        return made

    def writer(self, gate: int, peer: int, num_channels: int) -> RemoteChannelWriter:
        """The writer to the gate of a task in worker ``peer``."""
        connection = self._connections.get(peer)
        if connection is None:
            raise ValueError(f"no connection to worker {peer}, which runs gate {gate}")
        made = RemoteChannelWriter(connection, gate, num_channels, WINDOW * self._capacity)
        self._writers[gate] = made
        return made

    def start(self, on_lost: Callable[[int, str], None]) -> None:
        """One reading thread per connection; ``on_lost(peer, reason)`` when one breaks while the
        plane is not closing."""
        for connection in self._connections.values():
            thread = threading.Thread(target=self._serve, args=(connection, on_lost),
                                      name=f"channels from worker {connection.peer}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        self._closing = True
        for connection in self._connections.values():
            connection.close()
        for thread in self._threads:
            thread.join(5.0)

    def _serve(self, connection: Connection, on_lost: Callable[[int, str], None]) -> None:
        gates = self._gates
        writers = self._writers
        loads = pickle.loads
        reader = FrameReader(connection.sock.recv_into)
        reason = "the connection was closed"
        try:
            while True:
                frames = reader.read()
                if frames is None:
                    break
                for kind, gate, channel, payload in frames:
                    try:
                        if kind == BATCH or kind == LINES or kind == ARROW:
                            gates[gate].receive(channel, decode_batch(kind, payload), connection)  # type: ignore[union-attr]
                        elif kind == BARRIER or kind == WATERMARK:
                            gates[gate].receive(channel, loads(payload), connection)  # type: ignore[union-attr]
                        elif kind == CREDIT:
                            writers[gate].grant(channel, COUNT.unpack(payload)[0])  # type: ignore[union-attr]
                        elif kind == PRIORITY:
                            gates[gate].put_priority(channel, loads(payload))  # type: ignore[union-attr]
                        elif kind == END:
                            gates[gate].receive(channel, END_OF_INPUT, connection)  # type: ignore[union-attr]
                        else:
                            raise FrameError(f"unexpected frame kind {kind} on a data connection")
                    except Cancelled:
                        pass  # the task is being cancelled: what still arrives for it is dropped
        except Exception as exc:  # noqa: BLE001 - a broken connection is reported, whatever broke it
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            for writer in writers:
                if writer is not None and writer._connection is connection:
                    writer.lose()
            if not self._closing:
                on_lost(connection.peer, reason)


class ControlChannel:
    """One end of a control connection: whole pickled messages in ``CONTROL`` frames. Any thread
    may send; one thread receives."""

    TIMED_OUT = object()
    """What ``receive`` returns when nothing arrived within its timeout."""

    def __init__(self, sock: socket.socket, peer: int = -1) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = Connection(sock, peer)
        self._reader = FrameReader(sock.recv_into, 1 << 16)
        self._pending: list[Any] = []

    def send(self, message: Any) -> None:
        """Raises ``OSError`` when the connection is broken."""
        self.connection.send(encode(CONTROL, 0, 0, pickle.dumps(message, _PICKLE)))

    def receive(self, timeout: float | None = None) -> Any:
        """The next message; ``None`` once the peer closed the connection; ``TIMED_OUT`` when nothing
        arrived within ``timeout`` seconds (``None``: wait as long as it takes)."""
        while not self._pending:
            if timeout is not None:
                readable, _, _ = select.select([self.connection.sock], [], [], timeout)
                if not readable:
                    return self.TIMED_OUT
            frames = self._reader.read()
            if frames is None:
                return None
            for kind, _, _, payload in frames:
                if kind != CONTROL:
                    raise FrameError(f"unexpected frame kind {kind} on a control connection")
                self._pending.append(pickle.loads(payload))
            self._pending.reverse()
        return self._pending.pop()

    def close(self) -> None:
        self.connection.close()
