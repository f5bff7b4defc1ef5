"""A TCP client source reading newline-delimited lines from a live stream. **Not replayable.**

Rules:

1. The reader connects to ``host:port`` on its first poll and reads lines until the peer closes the
   connection; then the input has ended. A connection that is refused is an error.
2. Lines are split as in ``flowstate.connectors.files``: no ``\\n``, a ``\\r\\n`` loses its ``\\r``,
   empty lines are records, a last line without ``\\n`` before the peer closes is a record.
3. One poll waits at most 0.1 s for data (socket timeout) and returns ``[]`` when none came.
4. There is one split. Its snapshot holds only the number of lines read so far; that is
   informational. A reader restored from it cannot rewind: it opens a new connection and reads
   whatever the live stream sends from then on, continuing the count. Across a failure this source
   therefore gives **at-most-once** (lines received after the restored checkpoint and before the
   failure are lost), unless the sender itself replays them on reconnect.
5. With ``journal=`` (a directory or ``s3://…``; ``flowstate.connectors.ingress``) the source is
   replayable: a receiver thread reads the connection and appends every line to the journal, and
   reads nothing further until the journal holds it (TCP's flow control holds the sender back
   meanwhile); the job reads the journal, its position in the checkpoint. Every line the source
   took from the connection is processed exactly once; lines still in flight in the network when
   the job died are the sender's to send again (a raw socket has no acknowledgement to wait for).
   When the peer closes, the input ends once every journaled line was read.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from flowstate.connectors.files import check_line_encoding

_POLL_TIMEOUT = 0.1
"""Seconds one poll may wait to connect or for data."""
_RECEIVE_SIZE = 256 * 1024


class SocketDecodeError(ValueError):
    """A received line does not decode with the source's encoding."""


class SocketSource:
    """Lines from a TCP server (see the module rules). Not replayable."""

    __slots__ = ("_host", "_port", "_encoding", "_name", "_journal", "_linger")

    def __init__(self, host: str, port: int, *, encoding: str = "utf-8", name: str | None = None,
                 journal: Any = None, journal_linger: float = 0.0) -> None:
        check_line_encoding(encoding, "SocketSource")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"SocketSource: port must be an int in 1..65535, got {port!r}")
        from flowstate.connectors.ingress import _location

        self._host = host
        self._port = port
        self._encoding = encoding
        self._name = f"socket:{host}:{port}" if name is None else name
        self._journal, self._linger = _location(journal, journal_linger, "SocketSource")

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return self._journal is not None

    def splits(self) -> list[str]:
        return [self._split]

    @property
    def _split(self) -> str:
        return f"{self._host}:{self._port}"

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> Any:
        if self._journal is not None:
            from flowstate.connectors.ingress import SPLIT, JournaledReader, _Idle

            if not splits:
                return _Idle()
            position = (resume_state or {}).get(SPLIT)
            receiver = _SocketReceiver(SocketReader(self._host, self._port, self._encoding, [self._split], 0))
            return JournaledReader(self._journal, receiver, position, linger=self._linger)
        if list(splits) not in ([], [self._split]):
            raise ValueError(f"SocketSource {self._name!r}: unknown splits {list(splits)!r}; the only split is {self._split!r}")
        lines_read = (resume_state or {}).get(self._split, 0)
        if isinstance(lines_read, bool) or not isinstance(lines_read, int) or lines_read < 0:
            raise ValueError(f"SocketSource {self._name!r}: line count must be an int ≥ 0, got {lines_read!r}")
        return SocketReader(self._host, self._port, self._encoding, list(splits), lines_read)


class SocketReader:
    """One connection. ``snapshot`` counts the lines returned by ``poll`` (rule 4)."""

    __slots__ = ("_host", "_port", "_encoding", "_splits", "_lines_read", "_socket", "_lines", "_next", "_tail", "_ended")

    def __init__(self, host: str, port: int, encoding: str, splits: list[str], lines_read: int) -> None:
        self._host = host
        self._port = port
        self._encoding = encoding
        self._splits = splits
        self._lines_read = lines_read
        self._socket: socket.socket | None = None
        self._lines: list[str] = []
        self._next = 0
        self._tail = b""
        """Bytes received after the last newline."""
        self._ended = not splits
        """The peer closed the connection (or this reader owns no split)."""

    def poll(self, max_records: int) -> list[Any] | None:
        if self._next >= len(self._lines):
            if self._ended:
                return None
            self._receive()
        start = self._next
        out = self._lines[start:start + max_records]
        self._next = start + len(out)
        self._lines_read += len(out)
        if not out and self._ended:
            return None
        return out

    def snapshot(self) -> dict[str, Any]:
        return {split: self._lines_read for split in self._splits}

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _receive(self) -> None:
        """Wait at most ``_POLL_TIMEOUT`` for data and turn it into lines."""
        if self._socket is None:
            try:
                self._socket = socket.create_connection((self._host, self._port), timeout=_POLL_TIMEOUT)
            except TimeoutError:
                return  # try again on the next poll
            except OSError as error:
                raise ConnectionError(
                    f"SocketSource: cannot connect to {self._host}:{self._port}: {error}"
                ) from error
            self._socket.settimeout(_POLL_TIMEOUT)
        try:
            chunk = self._socket.recv(_RECEIVE_SIZE)
        except TimeoutError:
            return
        if not chunk:
            self._ended = True
            tail, self._tail = self._tail, b""
            self._lines, self._next = ([self._decode(tail)] if tail else []), 0
            self.close()
            return
        data = self._tail + chunk if self._tail else chunk
        newline = data.rfind(b"\n")
        if newline < 0:
            self._tail = data
            self._lines, self._next = [], 0
            return
        lines = self._decode(data[:newline + 1]).replace("\r\n", "\n").split("\n")
        lines.pop()  # the empty string after the last newline
        self._lines, self._next, self._tail = lines, 0, data[newline + 1:]

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode(self._encoding)
        except UnicodeDecodeError as error:
            line = self._lines_read + data.count(b"\n", 0, error.start) + 1
            raise SocketDecodeError(
                f"SocketSource {self._host}:{self._port}: line {line} does not decode as "
                f"{self._encoding}: {error.reason}"
            ) from None


class _SocketReceiver:
    """Rule 5: a thread that reads the connection through a ``SocketReader`` and hands each batch of
    lines to the journal (``deliver`` returns once they are durable) before it reads further."""

    def __init__(self, reader: SocketReader) -> None:
        self._reader = reader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ended = False
        """The peer closed the connection and every line before it was delivered."""
        self.error: BaseException | None = None
        """Why the thread stopped reading (a refused connection, a line that does not decode)."""

    def start(self, deliver: Callable[[list[Any]], object]) -> None:
        self._thread = threading.Thread(target=self._run, args=(deliver,), daemon=True,
                                        name=f"flowstate-socket-{self._reader._port}")
        self._thread.start()

    def _run(self, deliver: Callable[[list[Any]], None]) -> None:
        try:
            while not self._stop.is_set():
                lines = self._reader.poll(8192)
                if lines is None:
                    self.ended = True
                    return
                if lines:
                    deliver(lines)
        except BaseException as error:  # noqa: BLE001 - the reader's next poll raises it
            self.error = error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._reader.close()
