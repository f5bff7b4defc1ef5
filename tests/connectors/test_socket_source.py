"""SocketSource: a TCP client reading lines from a live stream, not replayable."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from flowstate.connectors.socket import SocketDecodeError, SocketSource


class LineServer:
    """A TCP server on 127.0.0.1 that sends ``pieces`` to each client, in order, then closes it.

    A piece that is a ``threading.Event`` is waited for instead of sent.
    """

    def __init__(self, *connections):
        self.connections = list(connections)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.listener.close()
        self.thread.join(timeout=5)

    def _serve(self):
        for pieces in self.connections:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with client:
                for piece in pieces:
                    if isinstance(piece, threading.Event):
                        piece.wait(timeout=5)
                    else:
                        client.sendall(piece)
                        time.sleep(0.01)  # let the reader see the pieces separately


def read_all(reader, max_records=1000, deadline_seconds=5.0):
    out = []
    deadline = time.monotonic() + deadline_seconds
    while (batch := reader.poll(max_records)) is not None:
        out.extend(batch)
        assert time.monotonic() < deadline, "the reader never saw the end of the stream"
    return out


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def test_lines_are_read_until_the_peer_closes_the_connection():
    pieces = [b"one\ntw", b"o\r", b"\n\nthr\xc3", b"\xa9e\r\nfo", b"ur"]
    with LineServer(pieces) as server:
        source = SocketSource("127.0.0.1", server.port)
        reader = source.build_reader(source.splits(), None)
        assert read_all(reader) == ["one", "two", "", "thrée", "four"]
        assert reader.poll(10) is None
        reader.close()


def test_poll_returns_at_most_max_records():
    with LineServer([b"".join(b"%d\n" % i for i in range(10))]) as server:
        source = SocketSource("127.0.0.1", server.port)
        reader = source.build_reader(source.splits(), None)
        batches = []
        while (batch := reader.poll(4)) is not None:
            batches.append(batch)
        reader.close()
    assert max(len(b) for b in batches) == 4
    assert [r for b in batches for r in b] == [str(i) for i in range(10)]


def test_a_poll_without_data_returns_an_empty_batch_within_a_tenth_of_a_second():
    release = threading.Event()
    with LineServer([b"first\n", release, b"second\n"]) as server:
        source = SocketSource("127.0.0.1", server.port)
        reader = source.build_reader(source.splits(), None)
        deadline = time.monotonic() + 5
        while (batch := reader.poll(10)) != ["first"]:
            assert batch == [] and time.monotonic() < deadline
        durations = []
        for _ in range(3):
            started = time.monotonic()
            assert reader.poll(10) == []
            durations.append(time.monotonic() - started)
        release.set()
        assert read_all(reader) == ["second"]
        reader.close()
    assert max(durations) < 0.3, durations
    assert max(durations) >= 0.05, "the poll waited for data instead of returning at once"


def test_the_source_is_not_replayable_and_has_one_split():
    source = SocketSource("localhost", 9999)
    assert source.replayable is False
    assert source.splits() == ["localhost:9999"]
    assert source.name == "socket:localhost:9999"
    assert SocketSource("localhost", 9999, name="feed").name == "feed"


def test_the_snapshot_counts_the_lines_returned_so_far():
    release = threading.Event()
    with LineServer([b"a\nb\nc\n", release]) as server:
        source = SocketSource("127.0.0.1", server.port)
        reader = source.build_reader(source.splits(), None)
        assert reader.snapshot() == {f"127.0.0.1:{server.port}": 0}
        got = []
        while len(got) < 2:
            got.extend(reader.poll(2 - len(got)))
        assert reader.snapshot() == {f"127.0.0.1:{server.port}": 2}
        release.set()
        reader.close()


def test_a_restored_reader_reconnects_to_the_live_stream_and_continues_the_count():
    with LineServer([b"old-1\nold-2\n"], [b"new-1\n"]) as server:
        source = SocketSource("127.0.0.1", server.port)
        first = source.build_reader(source.splits(), None)
        assert read_all(first) == ["old-1", "old-2"]
        state = first.snapshot()
        first.close()
        second = source.build_reader(source.splits(), {f"127.0.0.1:{server.port}": 1})
        assert read_all(second) == ["new-1"], "a restore cannot rewind: it reads what the stream sends now"
        assert second.snapshot() == {f"127.0.0.1:{server.port}": 2}
        second.close()
    assert state == {f"127.0.0.1:{server.port}": 2}
    assert server.accepted == 2


def test_a_refused_connection_is_an_error_naming_host_and_port():
    port = free_port()
    source = SocketSource("127.0.0.1", port)
    reader = source.build_reader(source.splits(), None)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        reader.poll(10)
    reader.close()


def test_bytes_that_do_not_decode_raise_an_error_naming_the_line():
    with LineServer([b"fine\n", b"bad \xff\n"]) as server:
        source = SocketSource("127.0.0.1", server.port)
        reader = source.build_reader(source.splits(), None)
        with pytest.raises(SocketDecodeError, match="line 2"):
            read_all(reader)
        reader.close()


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="port"):
        SocketSource("localhost", 0)
    with pytest.raises(ValueError, match="utf-16"):
        SocketSource("localhost", 80, encoding="utf-16")
    with pytest.raises(ValueError, match="unknown splits"):
        SocketSource("localhost", 80).build_reader(["elsewhere:80"], None)
