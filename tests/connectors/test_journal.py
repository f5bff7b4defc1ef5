"""The ingress journal: durable before acknowledged, read by position, released by completed
checkpoints; and journaled HTTP and MQTT sources that process every acknowledged record exactly once
under crashes."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import flowstate as fs
from flowstate.connectors import journal as journal_module
from flowstate.connectors.ingress import HttpSource, JournaledReader, MqttSource
from flowstate.connectors.journal import (
    SEGMENTS,
    Journal,
    JournalBusyError,
    JournalFailedError,
    JournalLocation,
    open_store,
)
from flowstate.control.endpoint import ControlError
from flowstate.storage.blobs import BlobStore
from flowstate.storage.memory import MemoryBlobStore
from flowstate.testing.conformance import SOURCE_CHECKS, SourceCase

from storage.object_store import BUCKET, require_moto, unique_prefix
from tests.engine.jobs import FAST_RESTART

# ---- where a journal lives: every test of the journal runs on each blob store ------------------


@pytest.fixture(scope="module")
def moto():
    server = require_moto()
    yield server
    server.stop()


@pytest.fixture
def s3_journal(request, monkeypatch) -> str:
    server = request.getfixturevalue("moto")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return f"s3://{BUCKET}/{unique_prefix()}/journal"


@pytest.fixture(params=["local", "memory", "s3"])
def location(request, tmp_path) -> JournalLocation:
    """A new, empty journal location on each blob store (S3: moto's server)."""
    if request.param == "local":
        return tmp_path / "journal"
    if request.param == "memory":
        return MemoryBlobStore()
    return request.getfixturevalue("s3_journal")


def store_of(location: JournalLocation) -> BlobStore:
    return open_store(location)[0]


def segments(location: JournalLocation) -> list[str]:
    if isinstance(location, Path) and not location.exists():
        return []
    return sorted(blob.path for blob in store_of(location).list(SEGMENTS))


class FailingUploads:
    """A blob store whose segment uploads fail from the ``nth`` one on (a store that went down)."""

    def __init__(self, inner: BlobStore, nth: int) -> None:
        self.inner, self.nth, self.uploads = inner, nth, 0

    def put_if_absent(self, path: str, data: bytes, **kwargs: Any) -> bool:
        self.uploads += 1
        if self.uploads >= self.nth:
            raise OSError(f"injected: the store is down ({path})")
        return self.inner.put_if_absent(path, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GatedUploads:
    """A blob store whose first segment upload waits for ``gate``: the uploads made while it waits
    are what group commit is about."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner, self.gate, self.entered = inner, threading.Event(), threading.Event()
        self.uploaded: list[str] = []

    def put_if_absent(self, path: str, data: bytes, **kwargs: Any) -> bool:
        if not self.uploaded:
            self.entered.set()
            assert self.gate.wait(30)
        self.uploaded.append(path)
        return self.inner.put_if_absent(path, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---- the journal ---------------------------------------------------------------------------------


def test_records_are_read_back_by_index_across_segments_and_reopens(location):
    journal = Journal(location)
    for i in range(0, 30, 3):
        assert journal.append([f"r{i}", f"r{i + 1}", f"r{i + 2}"]) == i + 3
    assert len(segments(location)) == 10  # one append at a time: one segment each
    assert journal.read(0, 100) == [f"r{i}" for i in range(30)]
    assert journal.read(7, 5) == [f"r{i}" for i in range(7, 12)]
    journal.close()
    again = Journal(location)  # a restore, here or on another machine: read from the store
    assert again.end == 30 and again.read(25, 10) == [f"r{i}" for i in range(25, 30)]
    assert again.read(0, 4) == ["r0", "r1", "r2", "r3"]
    assert again.append(["next"]) == 31 and again.read(30, 1) == ["next"]
    again.close()


def test_a_failed_upload_acknowledges_nothing_and_the_reopened_journal_holds_what_was(location):
    failing = FailingUploads(store_of(location), nth=3)
    journal = Journal(failing)
    assert journal.append(["a"]) == 1 and journal.append(["b"]) == 2
    with pytest.raises(JournalFailedError, match="the upload of records 2-2 failed"):
        journal.append(["c"])
    with pytest.raises(JournalFailedError):  # the journal is done: the attempt fails and reopens it
        journal.read(0, 10)
    with pytest.raises(JournalFailedError):
        journal.append(["d"])
    journal.close()
    again = Journal(location)
    assert again.end == 2 and again.read(0, 10) == ["a", "b"]
    assert again.append(["c"]) == 3
    again.close()


def test_records_arriving_during_an_upload_share_the_next_one(location):
    gated = GatedUploads(store_of(location))
    journal = Journal(gated)
    ends: dict[str, int] = {}

    def append(record: str) -> None:
        ends[record] = journal.append([record])

    first = threading.Thread(target=append, args=("first",))
    first.start()
    assert gated.entered.wait(30)
    others = [threading.Thread(target=append, args=(f"o{i}",)) for i in range(5)]
    for thread in others:
        thread.start()
    while len(journal._open.payloads) < 5:  # all five wait in the open segment
        time.sleep(0.001)
    assert ends == {}  # none acknowledged while the upload in flight holds
    gated.gate.set()
    for thread in [first, *others]:
        thread.join(30)
    assert len(gated.uploaded) == 2, gated.uploaded  # the five shared one upload
    assert ends["first"] == 1 and sorted(ends[f"o{i}"] for i in range(5)) == [6] * 5
    assert sorted(journal.read(1, 10)) == sorted(f"o{i}" for i in range(5))
    journal.close()


def test_a_lingering_segment_gathers_appends_until_it_is_full(location, monkeypatch):
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 200)
    gated = GatedUploads(store_of(location))
    gated.gate.set()
    journal = Journal(gated, linger=60.0)  # would hold a segment under 200 bytes for a minute
    ends: list[int] = []
    first = threading.Thread(target=lambda: ends.append(journal.append(["small"])))
    first.start()
    while len(journal._open.payloads) < 1:  # the first append lingers in the open segment
        time.sleep(0.001)
    assert journal.append(["x" * 300]) == 2  # fills it: sealed at once, both in one upload
    first.join(30)
    assert ends == [2] and len(gated.uploaded) == 1
    assert journal.read(0, 10) == ["small", "x" * 300]
    journal.close()


def test_a_segment_name_taken_by_another_owner_is_refused_and_not_acknowledged(location):
    store = store_of(location)
    journal = Journal(location)
    assert journal.append(["mine"]) == 1
    store.put_if_absent(journal_module.segment_path(1, 2), journal_module.encode(["theirs"])[1])
    with pytest.raises(JournalFailedError, match="written by another owner"):
        journal.append(["also mine"])
    journal.close()


def test_released_segments_are_deleted_and_a_fully_released_journal_holds_none(location):
    journal = Journal(location)
    for i in range(10):
        journal.append([f"record {i}"])
    journal.release(5)
    assert len(segments(location)) == 5
    assert journal.start == 5 and journal.read(5, 100) == [f"record {i}" for i in range(5, 10)]
    with pytest.raises(ValueError, match="was released"):
        journal.read(4, 1)
    journal.release(10)
    assert segments(location) == []  # sealed segments: none is kept for appending
    journal.close()
    again = Journal(location)
    assert again.end == 10 and again.append(["later"]) == 11  # indices continue
    again.close()


def test_two_owners_in_one_process_are_refused(location):
    journal = Journal(location)
    with pytest.raises(JournalBusyError, match="in use by another reader"):
        Journal(location, wait=0.1)
    journal.close()
    Journal(location, wait=0.1).close()


def test_a_directory_of_the_earlier_layout_is_refused_in_one_line(tmp_path):
    (tmp_path / f"seg-{0:020d}.log").write_bytes(b"")
    with pytest.raises(ValueError, match="earlier layout .* give a new directory"):
        Journal(tmp_path)


def copy_journal(source: JournalLocation, target: JournalLocation) -> None:
    src, dst = store_of(source), store_of(target)
    for blob in src.list(SEGMENTS):
        dst.put(blob.path, src.get(blob.path))


def new_location(location: JournalLocation, n: int) -> JournalLocation:
    if isinstance(location, Path):
        return location.parent / f"j{n}"
    if isinstance(location, str):
        return f"{location}-{n}"
    return MemoryBlobStore()


def test_the_journal_source_passes_every_source_check(location):
    """Over a journal filled beforehand, read as a bounded source (the kit's contract)."""
    records = [f"m{i}" for i in range(9)]
    template = Journal(location)
    template.append(records[:4])
    template.append(records[4:])
    template.close()
    made = iter(range(100))
    current: list[JournalLocation] = []

    class Bounded:
        name, replayable = "journal", True

        def __init__(self) -> None:
            self.location = new_location(location, next(made))
            copy_journal(location, self.location)
            current.append(self.location)

        def splits(self) -> list[str]:
            return ["journal"]

        def build_reader(self, splits, state):
            reader = JournaledReader(self.location, NoReceiver(), (state or {}).get("journal"))
            return BoundedReader(reader, len(records))

    def acknowledged() -> int:  # what the reader released, read without taking the journal over
        try:
            return int(store_of(current[-1]).get("released"))
        except FileNotFoundError:
            return 0

    for check in SOURCE_CHECKS.values():
        check(SourceCase(Bounded, records, acknowledged=acknowledged))


class NoReceiver:
    ended = False
    error = None

    def start(self, deliver) -> None:
        pass

    def stop(self) -> None:
        pass


class BoundedReader:
    """Ends (``None``) at the end of a journal no one appends to."""

    def __init__(self, inner: JournaledReader, total: int) -> None:
        self.inner, self.total = inner, total

    def poll(self, n: int):
        if self.inner.snapshot()["journal"] >= self.total:
            return None
        return self.inner.poll(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---- journaled sources end to end ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_output(directory: Path) -> list[str]:
    import json

    out: list[str] = []
    for path in sorted(directory.iterdir()) if directory.exists() else []:
        if not path.name.startswith("."):
            out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def run_until(flow: fs.Dataflow, done, tmp_path: Path, failpoints: fs.Failpoints,
              checkpoint_dir: str | Path | None = None) -> fs.JobResult:
    """Run ``flow`` in a thread until ``done()``, then stop it (a last checkpoint, output committed)."""
    control = fs.JobControl()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=checkpoint_dir or tmp_path / "chk", interval="50ms"),
                recovery=fs.RecoveryOptions(restart=FAST_RESTART),
                execution=fs.ExecutionOptions(executor="threads"),
                failpoints=failpoints,
                control=control,
            )
        except BaseException as error:
            outcome["error"] = error

    job = threading.Thread(target=run)
    job.start()
    try:
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            assert job.is_alive(), outcome
            time.sleep(0.05)
    finally:
        stop_until_ended(job, control)
    assert "result" in outcome, outcome
    return outcome["result"]


def fired_once(failpoints: fs.Failpoints) -> bool:
    """Both failpoints fired: a stop asked before may race with the second one."""
    return failpoints.fired("operator.process") == 1 and failpoints.fired("sink.before_commit") == 1


def stop_until_ended(job: threading.Thread, control: fs.JobControl) -> None:
    """Stop the job: a stop whose last checkpoint is cut short by a failure (a failpoint may still
    fire during it) is asked again of the restarted attempt."""
    deadline = time.monotonic() + 60
    while job.is_alive() and time.monotonic() < deadline:
        try:
            control.stop().result(timeout=30)
        except ControlError:
            continue
        break
    job.join(timeout=30)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_acknowledged_http_post_is_processed_exactly_once_under_crashes(where, tmp_path, request):
    port = free_port()
    journal: JournalLocation = tmp_path / "journal" if where == "local" else request.getfixturevalue("s3_journal")
    flow = fs.Dataflow("webhook")
    (flow.source(HttpSource(port, path="/events", journal=journal), uid="webhook")
         .map(str.upper)
         .sink(fs.FileSink(tmp_path / "out"), uid="out"))
    attempts: Counter[str] = Counter()
    acknowledged: list[str] = []

    def send() -> None:
        for i in range(300):
            body = f"event {i}"
            while True:  # the sender retries until it sees the 200
                attempts[body] += 1
                try:
                    request = urllib.request.Request(f"http://127.0.0.1:{port}/events", data=body.encode())
                    with urllib.request.urlopen(request, timeout=2) as answer:
                        if answer.status == 200:
                            acknowledged.append(body)
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    time.sleep(0.02)

    sender = threading.Thread(target=send)
    sender.start()
    failpoints = fs.Failpoints({"operator.process": "raise@10", "sink.before_commit": "raise@6"})
    try:
        result = run_until(flow, lambda: fired_once(failpoints) and not sender.is_alive()
                           and len(read_output(tmp_path / "out")) >= 300,
                           tmp_path, failpoints,
                           # in S3, the checkpoints too: the restore reads both from the bucket
                           checkpoint_dir=None if where == "local" else f"{journal}-checkpoints")
    finally:
        sender.join(timeout=60)
    assert failpoints.fired("operator.process") == 1 and failpoints.fired("sink.before_commit") == 1
    assert result.restarts == 2 and all(c is not None and c >= 1 for c in result.restored_from[1:]), result
    output = Counter(read_output(tmp_path / "out"))
    for body in acknowledged:
        seen = output[body.upper()]
        if attempts[body] == 1:
            assert seen == 1, f"{body!r}, acknowledged at its first attempt, was processed {seen} times"
        else:
            assert 1 <= seen <= attempts[body], f"{body!r}: {attempts[body]} attempts, processed {seen} times"
    assert len(acknowledged) == 300
    assert segments(journal) == [], "a journal segment was left behind after the job ended"


def test_without_a_journal_an_exactly_once_job_refuses_the_http_source(tmp_path):
    flow = fs.Dataflow("webhook")
    flow.source(HttpSource(free_port())).sink(fs.FileSink(tmp_path / "out"))
    with pytest.raises(fs.ConfigError, match="cannot replay"):
        fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", mode="exactly_once"))


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        source = HttpSource(port, journal=tmp_path / "j")
        with pytest.raises(fs.ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            source.build_reader(source.splits(), None)


@pytest.fixture
def mosquitto() -> tuple[str, int]:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=2).close()
    except OSError as error:
        if os.environ.get("CI"):
            pytest.fail(f"Mosquitto is not reachable at 127.0.0.1:1883: {error} (.ci/services must start it)")
        pytest.skip(f"Mosquitto is not reachable at 127.0.0.1:1883: {error}")
    pytest.importorskip("paho.mqtt.client")
    return "127.0.0.1", 1883


def test_every_mqtt_message_is_processed_under_crashes_and_acknowledged_ones_exactly_once(tmp_path, mosquitto):
    import uuid

    import paho.mqtt.client as mqtt

    topic = f"flowstate/test/{uuid.uuid4().hex[:8]}"
    journal = tmp_path / "journal"
    flow = fs.Dataflow("mqtt")
    (flow.source(MqttSource([topic], client_id=f"fs-{uuid.uuid4().hex[:8]}", journal=journal), uid="mqtt")
         .map(lambda message: message[1])
         .sink(fs.FileSink(tmp_path / "out"), uid="out"))
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    publisher.connect(*mosquitto)
    publisher.loop_start()

    def publish() -> None:
        time.sleep(0.5)  # the job's session subscribes first
        for i in range(200):
            publisher.publish(topic, f"m{i}", qos=1).wait_for_publish(5)
            if i % 20 == 0:
                time.sleep(0.02)

    sender = threading.Thread(target=publish)
    sender.start()
    failpoints = fs.Failpoints({"operator.process": "raise@8", "sink.before_commit": "raise@6"})
    try:
        result = run_until(flow, lambda: fired_once(failpoints) and not sender.is_alive()
                           and len(set(read_output(tmp_path / "out"))) >= 200,
                           tmp_path, failpoints)
    finally:
        sender.join(timeout=60)
        publisher.loop_stop()
        publisher.disconnect()
    assert failpoints.fired("operator.process") == 1 and failpoints.fired("sink.before_commit") == 1
    assert result.restarts == 2 and all(c is not None and c >= 1 for c in result.restored_from[1:]), result
    output = Counter(read_output(tmp_path / "out"))
    assert set(output) == {f"m{i}" for i in range(200)}
    # A message is journaled twice only if the job died between the journal's fsync and its PUBACK:
    # with two failures raised in the job (not in the receiver), none is.
    assert all(n == 1 for n in output.values()), {m: n for m, n in output.items() if n > 1}
    assert segments(journal) == []


# ---- a raw socket, journaled ----------------------------------------------------------------------


class LineServer:
    """A TCP server that sends ``lines`` on its first connection and keeps it open until the job
    closes it (its attempt failed), then closes every later connection at once: the input ends."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with connection:
                if self.connections == 1:
                    connection.sendall("".join(f"{line}\n" for line in self.lines).encode())
                    while connection.recv(1024):  # until the job closes its end
                        pass

    def close(self) -> None:
        self.listener.close()


def slow_upper(line: str) -> str:
    time.sleep(0.0005)
    return line.upper()


def test_a_journaled_socket_source_processes_every_line_it_took_exactly_once_across_a_crash(tmp_path):
    lines = [f"line {i}" for i in range(500)]
    server = LineServer(lines)
    journal = tmp_path / "journal"
    flow = fs.Dataflow("socket")
    # The source reads every line off the connection at once and emits them 16 at a time; the crash
    # comes half-way, so that lines it took but had not emitted at the last checkpoint must come back
    # from the journal (without it they would be gone with the connection).
    (flow.source(fs.SocketSource("127.0.0.1", server.port, journal=journal), uid="socket")
         .map(slow_upper)
         .sink(fs.FileSink(tmp_path / "out"), uid="out"))
    failpoints = fs.Failpoints({"operator.process": "raise@16"})  # a batch of 16 lines a hit
    try:
        result = fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms", mode="exactly_once"),
            recovery=fs.RecoveryOptions(restart=FAST_RESTART),
            execution=fs.ExecutionOptions(executor="threads", batch_size=16),
            failpoints=failpoints,
        )
    finally:
        server.close()

    assert failpoints.fired("operator.process") == 1 and server.connections >= 2
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < len(lines), "the last attempt read every line again: it did not restore"
    assert Counter(read_output(tmp_path / "out")) == Counter(line.upper() for line in lines)
    assert segments(journal) == [], "a journal segment was left behind after the job ended"


def test_without_a_journal_an_exactly_once_job_still_refuses_the_socket_source(tmp_path):
    flow = fs.Dataflow("socket")
    flow.source(fs.SocketSource("127.0.0.1", free_port())).sink(fs.FileSink(tmp_path / "out"))
    with pytest.raises(fs.ConfigError, match="cannot replay"):
        fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", mode="exactly_once"))
