"""Sources that cannot replay — HTTP webhooks, MQTT subscriptions — made replayable by the ingress
journal (``flowstate.connectors.journal``).

With ``journal=DIR`` (or ``journal="s3://bucket/prefix"``) a source is *journaled*: its receiver appends each record to the journal and
acknowledges it to the sender only once it is durable (the HTTP 200, the MQTT PUBACK); the job reads
the journal as a replayable source whose position (the index of the next record) is in the
checkpoint, and a completed checkpoint releases the records it covers, deleting whole segments. The
guarantee: **every record the sender saw acknowledged is processed exactly once**; a record not yet
acknowledged when the job died is the sender's to retry (HTTP clients retry on an error or a refused
connection; the MQTT broker redelivers unacknowledged QoS 1 messages to the job's persistent
session), and one journaled in the instant between the fsync and the acknowledgement is journaled
again by the retry (at-least-once for that record, as for any at-least-once sender).

Without a journal a source is not replayable: records received since the last completed checkpoint
are lost on a failure, and an exactly-once job refuses it unless ``allow_non_replayable``.

Rules of every reader here (one split, ``"journal"``; a subtask other than the first reads nothing):

1. The receiver starts when the reader is built and stops at ``close()``.
2. Position ``p`` (restored): every record below ``p`` was consumed by a completed checkpoint, so the
   reader releases them and reads from ``p``. Without a position it reads from the oldest record
   not yet released: records acknowledged by an earlier run and never covered by a completed
   checkpoint are processed.
3. ``snapshot_for(n)`` remembers the position under ``n``; ``notify_complete(n)`` releases up to it.
4. A receiver whose input can end (the socket's peer closing) says so with ``ended``; the reader
   ends once it read every record journaled before that. A receiver that fails on its own thread
   (a refused connection) puts the error in ``error``, and the next poll raises it.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from flowstate.connectors.journal import Journal, JournalLocation
from flowstate.errors import ConfigError

SPLIT = "journal"


class Receiver(Protocol):
    """Takes records from senders and hands each batch to ``deliver`` before acknowledging it.

    ``ended`` turns true once the input can bring nothing more (a socket's peer closed it; a server
    that listens forever never sets it); ``error`` is what made the receiver's thread fail. Both are
    set once, after every record before them was delivered (rule 4)."""

    ended: bool
    error: BaseException | None

    def start(self, deliver: Callable[[list[Any]], object]) -> None: ...

    def stop(self) -> None: ...


class _Idle:
    def poll(self, max_records: int) -> list[Any]:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class JournaledReader:
    """Reads what its receiver journaled (rules 1-3)."""

    def __init__(self, location: JournalLocation, receiver: Receiver, position: Any | None, *,
                 linger: float = 0.0) -> None:
        self._journal = Journal(location, linger=linger)
        if position is not None:
            self._journal.release(int(position))
        self._next = self._journal.start if position is None else int(position)
        self._remembered: dict[int, int] = {}
        self._receiver = receiver
        receiver.start(self._journal.append)

    def poll(self, max_records: int) -> list[Any] | None:
        # Rule 4: a receiver whose input ended (``ended``) ends the reader once every record it
        # journaled was read; one whose thread failed (``error``) fails it. Read ``ended`` first: a
        # record delivered before it was set is in the journal by then.
        ended = self._receiver.ended
        records = self._journal.read(self._next, max_records)
        self._next += len(records)
        if not records:
            error = self._receiver.error
            if error is not None:
                raise error
            if ended:
                return None
            threading.Event().wait(0.01)  # nothing journaled yet: do not spin
        return records

    def snapshot(self) -> dict[str, Any]:
        return {SPLIT: self._next}

    def snapshot_for(self, checkpoint_id: int) -> dict[str, Any]:
        self._remembered[checkpoint_id] = self._next
        return self.snapshot()

    def notify_complete(self, checkpoint_id: int) -> None:
        covered = [cid for cid in self._remembered if cid <= checkpoint_id]
        if covered:
            self._journal.release(max(self._remembered.pop(cid) for cid in covered))

    def notify_aborted(self, checkpoint_id: int) -> None:
        pass  # released with the next checkpoint that completes

    def close(self) -> None:
        self._receiver.stop()
        self._journal.close()


class QueueReader:
    """Not journaled: records go from the receiver into memory and are acknowledged at once."""

    def __init__(self, receiver: Receiver, position: Any | None) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._count = int(position or 0)
        self._receiver = receiver
        receiver.start(self._deliver)

    def _deliver(self, records: list[Any]) -> None:
        for record in records:
            self._queue.put(record)

    def poll(self, max_records: int) -> list[Any]:
        out: list[Any] = []
        try:
            out.append(self._queue.get(timeout=0.05))
            while len(out) < max_records:
                out.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        self._count += len(out)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {SPLIT: self._count}

    def close(self) -> None:
        self._receiver.stop()


class _IngressSource:
    """What the HTTP and MQTT sources share: one split, a journal or not."""

    _name: str
    _journal: JournalLocation | None
    _linger: float = 0.0

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return self._journal is not None

    def splits(self) -> list[str]:
        return [SPLIT]

    def _receiver(self) -> Receiver:
        raise NotImplementedError

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> Any:
        if not splits:
            return _Idle()
        position = (resume_state or {}).get(SPLIT)
        if self._journal is None:
            return QueueReader(self._receiver(), position)
        return JournaledReader(self._journal, self._receiver(), position, linger=self._linger)


def _location(journal: JournalLocation | None, linger: float, source: str) -> tuple[JournalLocation | None, float]:
    """A directory becomes a ``Path``; a URL (``s3://…``) and a blob store are kept as they are."""
    if not 0 <= float(linger) <= 60:
        raise ConfigError(f"{source}: journal_linger must be 0-60 seconds, got {linger!r}")
    if journal is None or (isinstance(journal, str) and "://" in journal):
        return journal, float(linger)
    if isinstance(journal, (str, os.PathLike)):
        return Path(journal), float(linger)
    return journal, float(linger)


# ---- HTTP ----------------------------------------------------------------------------------------


class HttpSource(_IngressSource):
    """Records POSTed to ``http://host:port{path}``: each non-empty line of a body is one record —
    text, or (``json=True``) a JSON value. The answer is ``200`` once every record of the body is
    journaled (or queued), ``400`` for a body that does not decode, ``404`` for another path."""

    def __init__(
        self, port: int, *, path: str = "/", host: str = "127.0.0.1", json: bool = False,
        journal: JournalLocation | None = None, journal_linger: float = 0.0, name: str | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ConfigError(f"HttpSource: path must start with '/', got {path!r}")
        if not 0 <= int(port) < 65536:
            raise ConfigError(f"HttpSource: port must be 0-65535, got {port!r}")
        self._port, self._path, self._host, self._json = int(port), path, host, json
        self._journal, self._linger = _location(journal, journal_linger, self.__class__.__name__)
        self._name = name or f"http:{host}:{port}{path}"

    def _receiver(self) -> Receiver:
        return _HttpReceiver(self._host, self._port, self._path, self._json, self._name)


class _HttpReceiver:
    ended = False  # a server listens until the job stops
    error: BaseException | None = None

    def __init__(self, host: str, port: int, path: str, as_json: bool, name: str) -> None:
        self._address, self._path, self._json, self._name = (host, port), path, as_json, name
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, deliver: Callable[[list[Any]], object]) -> None:
        path, as_json = self._path, self._json

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a sender may POST many bodies on one connection

            def setup(self) -> None:
                super().setup()
                # The answer is written in two parts (head, body): without this, Nagle's algorithm and
                # the sender's delayed ACK hold the body back ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:  # noqa: N802 (the http.server name)
                if self.path != path:
                    self._answer(404, f"no source at {self.path}; POST to {path}")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    lines = [line for line in body.decode("utf-8").splitlines() if line.strip()]
                    records = [json.loads(line) for line in lines] if as_json else lines
                except (UnicodeDecodeError, ValueError) as error:
                    self._answer(400, f"body does not decode: {error}")
                    return
                deliver(records)  # durable (journaled) before the answer
                self._answer(200, f"ok {len(records)}")

            def _answer(self, status: int, text: str) -> None:
                data = (text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the http.server name)
                pass

        try:
            server = ThreadingHTTPServer(self._address, Handler)
        except OSError as error:
            raise ConfigError(f"HttpSource {self._name!r}: cannot listen on {self._address[0]}:{self._address[1]}: "
                              f"{error.strerror or error}") from None
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"flowstate-http-{self._address[1]}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ---- MQTT ----------------------------------------------------------------------------------------


class MqttSource(_IngressSource):
    """Messages of ``topics`` from an MQTT broker at QoS 1, as ``(topic, payload text)`` records. The
    job's session is persistent (``client_id``, clean session off), so the broker keeps the messages
    that arrive while the job restarts, and redelivers those it had not acknowledged; with a journal
    each message is acknowledged (PUBACK) only once journaled."""

    def __init__(
        self, topics: Sequence[str], *, host: str = "127.0.0.1", port: int = 1883, client_id: str | None = None,
        journal: JournalLocation | None = None, journal_linger: float = 0.0, name: str | None = None,
    ) -> None:
        topics = tuple(topics)
        if not topics:
            raise ConfigError("MqttSource: topics must name at least one topic")
        self._topics, self._host, self._port = topics, host, int(port)
        self._journal, self._linger = _location(journal, journal_linger, self.__class__.__name__)
        self._name = name or f"mqtt:{host}:{port}:{','.join(topics)}"
        self._client_id = client_id or "flowstate-" + "-".join(t.replace("/", "_").replace("#", "all") for t in topics)[:40]

    def _receiver(self) -> Receiver:
        return _MqttReceiver(self._topics, self._host, self._port, self._client_id, self._name)


class _MqttReceiver:
    ended = False  # a subscription never ends by itself
    error: BaseException | None = None

    def __init__(self, topics: tuple[str, ...], host: str, port: int, client_id: str, name: str) -> None:
        self._topics, self._host, self._port, self._client_id, self._name = topics, host, port, client_id, name
        self._client: Any = None
        self._lock = threading.Lock()
        self._closing = False
        self._disconnected = threading.Event()
        self._synced = threading.Event()

    def start(self, deliver: Callable[[list[Any]], object]) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise ConfigError("MqttSource needs paho-mqtt: pip install 'flowstate[mqtt]'") from None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id,
                             clean_session=False, manual_ack=True)
        topics = self._topics
        subscribed = threading.Event()

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            client.subscribe([(topic, 1) for topic in topics])

        def on_subscribe(*_: Any) -> None:
            subscribed.set()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            with self._lock:
                if self._closing:
                    return  # not journaled, not acknowledged: the broker redelivers it to the next session
                deliver([(message.topic, message.payload.decode("utf-8", errors="replace"))])
                client.ack(message.mid, message.qos)  # after the journal's fsync

        def on_disconnect(*_: Any) -> None:
            self._disconnected.set()

        def on_unsubscribe(*_: Any) -> None:
            self._synced.set()

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.on_disconnect, client.on_unsubscribe = on_disconnect, on_unsubscribe
        try:
            client.connect(self._host, self._port, keepalive=30)
        except OSError as error:
            raise ConfigError(f"MqttSource {self._name!r}: cannot connect to {self._host}:{self._port}: "
                              f"{error.strerror or error}") from None
        client.loop_start()
        if not subscribed.wait(10):
            client.loop_stop()
            raise ConfigError(f"MqttSource {self._name!r}: the broker did not confirm the subscription to {list(topics)}")
        self._client = client

    def stop(self) -> None:
        # A message arriving from here on is neither journaled nor acknowledged; one being journaled
        # now is acknowledged before the DISCONNECT is queued, so its PUBACK reaches the broker.
        with self._lock:
            self._closing = True
        if self._client is not None:
            # The broker must have taken every PUBACK before the DISCONNECT reaches it, or it redelivers
            # those messages to the next session (seen with PUBACKs written just before a DISCONNECT).
            # A round trip settles it: packets are handled in order, so the UNSUBACK of a topic never
            # subscribed to comes after the broker processed every PUBACK sent before it.
            self._synced.clear()
            self._client.unsubscribe(f"flowstate/_sync/{self._client_id}")
            self._synced.wait(5)
            self._client.disconnect()
            # The network thread writes the queued PUBACKs and the DISCONNECT before it reports the
            # disconnection; stopping it earlier drops them and the broker redelivers those messages.
            self._disconnected.wait(5)
            self._client.loop_stop()
            self._client = None
