"""What the broker connectors (NATS JetStream, Redis Streams, Kafka) share.

Rules of every broker sink with ``delivery="exactly_once"`` (a *publishing committer*):

1. ``write_batch`` encodes each record at once (a record the encoder rejects fails the task with an
   ``UnencodableRecordError`` naming the sink and the record) and buffers the payloads in memory.
   Nothing reaches the broker before the checkpoint that covers it completes.
2. ``pre_commit(n)`` moves the buffer into the ``CommitLog`` under *n*, as one *batch*: the writer's
   identity (``run/sink/subtask``), and the payloads. The snapshot holds every batch not yet known
   to be published: the records travel inside the checkpoint (they are *pre-committed state*).
3. ``commit(n)`` publishes every batch recorded under an id ≤ *n*, oldest first, through the adapter's
   ``publish_batch``, which must be idempotent per (identity, checkpoint id): publishing the same
   batch twice leaves the broker as publishing it once (NATS: message ids within the duplicate
   window; Redis: a last-committed marker written atomically with the records).
4. A writer built from a resume state first publishes every batch it names (that checkpoint
   completed; its batches may or may not have reached the broker) and keeps the identity it names.
   A writer built without one takes a new *run* id, so that a job started afresh never has its
   output taken for a duplicate of an earlier run's.
5. Rescaling: old writer *j*'s batches go to new writer ``j % p`` (they keep their identity, so a
   re-publish is still recognised); new writer *i* keeps old writer *i*'s run id when there was one.

``delivery="at_least_once"``: records are sent in ``write_batch``, ``pre_commit`` waits until the broker
acknowledged every one of them, and the snapshot is empty. A restore replays what followed the
checkpoint, so records may be written twice, never lost.
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NewType, TypeVar

from flowstate import failpoints as fpn
from flowstate.checkpoint.commit import CommitLog
from flowstate.checkpoint.ids import CheckpointId
from flowstate.errors import FlowstateError

T = TypeVar("T")

WriterIdentity = NewType("WriterIdentity", str)
"""``run/sink/subtask``: the writer that pre-committed a batch. With the checkpoint id and the index
of a record in its batch, it names the record uniquely across every run of every job."""

Batch = tuple[WriterIdentity, tuple[bytes, ...]]
"""The committable of a publishing committer: who pre-committed it, and the encoded records."""


class Delivery(enum.StrEnum):
    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"


class ConnectorError(FlowstateError):
    """A broker connector cannot do its job: unreachable server, missing stream or topic, a stream
    configuration that cannot hold the guarantee. The message is one line."""


class UnencodableRecordError(ConnectorError):
    """A sink's encoder rejected a record."""


def require(module: str, package: str, owner: str) -> None:
    """Fail when the connector is declared, not when the job runs, if its client library is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConnectorError(f"{owner} needs the {package} package: pip install 'flowstate[brokers]'")


def read_limiter(rate: float | None, owner: str) -> Any:
    """The token bucket of ``GeneratorSource`` (at most ``rate`` records/s per reader, bursts of 0.1 s),
    or ``None`` without a rate. A throttled poll sleeps at most 0.05 s and returns fewer records."""
    if rate is None:
        return None
    if not rate > 0:
        raise ValueError(f"{owner}: rate must be > 0 records/s (or None), got {rate!r}")
    from flowstate.clock import SystemClock
    from flowstate.connectors.generator import _TokenBucket

    clock = SystemClock()
    return _TokenBucket(float(rate), clock.monotonic, clock.sleep)


def parse_delivery(value: str | Delivery, owner: str) -> Delivery:
    try:
        return Delivery(value)
    except ValueError:
        raise ValueError(f"{owner}: delivery must be 'exactly_once' or 'at_least_once', got {value!r}") from None


def json_bytes(record: Any) -> bytes:
    """The default encoder of the broker sinks: compact JSON in UTF-8 (tuples become arrays)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_record(payload: bytes) -> Any:
    """The default decoder of the broker sources."""
    return json.loads(payload)


def encode_all(encode: Callable[[Any], bytes], records: Sequence[Any], sink: str) -> list[bytes]:
    """Rule 1: every record encoded, or ``UnencodableRecordError`` naming the sink and the record."""
    out = []
    for record in records:
        try:
            payload = encode(record)
            if not isinstance(payload, (bytes, bytearray)):
                raise TypeError(f"the encoder returned {type(payload).__name__}, not bytes")
        except Exception as exc:  # noqa: BLE001 - any encoder failure is reported the same way
            shown = repr(record)
            shown = shown if len(shown) <= 200 else shown[:197] + "..."
            raise UnencodableRecordError(f"{sink}: cannot encode record {shown}: {exc}") from exc
        out.append(bytes(payload))
    return out


def new_run_id() -> str:
    """Rule 4: a fresh writer's run id (12 hex digits of a random UUID)."""
    return uuid.uuid4().hex[:12]


def message_id(identity: str, checkpoint_id: int, index: int) -> str:
    """The id of record ``index`` of the batch ``identity`` pre-committed for ``checkpoint_id``."""
    return f"{identity}/{checkpoint_id}/{index}"


class PublishingCommitter:
    """Rules 1-4 for one subtask (``owner`` names the sink in errors, ``sink`` in identities); the adapter
    supplies ``publish_batch(identity, checkpoint_id,
    payloads)`` (idempotent) and is told of failpoints through ``hit``."""

    __slots__ = ("_owner", "_encode", "_publish", "_identity", "_run", "_buffer", "_log", "failpoints")

    def __init__(
        self,
        owner: str,
        sink: str,
        subtask: int,
        encode: Callable[[Any], bytes],
        publish_batch: Callable[[WriterIdentity, int, tuple[bytes, ...]], None],
        resume_state: Any | None,
    ) -> None:
        self._owner = owner
        self._encode = encode
        self._publish = publish_batch
        self.failpoints: Any = None
        self._buffer: list[bytes] = []
        self._log: CommitLog[Batch] = CommitLog()
        if resume_state is None:
            self._run = new_run_id()
            pending: list[tuple[int, Batch]] = []
        else:
            self._run, pending = parse_publishing_state(resume_state, owner)
        self._identity = WriterIdentity(f"{self._run}/{sink}/{subtask}")
        # Rule 4: the restored checkpoint completed, so what it names is published first.
        for cid, (identity, payloads) in pending:
            self._publish(identity, cid, payloads)

    @property
    def identity(self) -> WriterIdentity:
        return self._identity

    def write_batch(self, records: list[Any]) -> None:
        self._buffer.extend(encode_all(self._encode, records, self._owner))

    def pre_commit(self, checkpoint_id: int) -> None:
        batches: tuple[Batch, ...] = ((self._identity, tuple(self._buffer)),) if self._buffer else ()
        self._log = self._log.pre_commit(CheckpointId(checkpoint_id), batches)
        self._buffer = []

    def snapshot(self) -> dict[str, Any]:
        return {"run": self._run, "pending": self._log.snapshot()}

    def commit(self, checkpoint_id: int) -> None:
        ids = [cid for cid, _ in self._log.pending if cid <= checkpoint_id]
        log, batches = self._log.complete(CheckpointId(checkpoint_id))
        for cid, (identity, payloads) in zip(ids, batches):
            self._publish(identity, cid, payloads)
        # Only now: a failed publish leaves the batches pending, to be published again.
        self._log = log

    def finish(self) -> None:
        """End of input without checkpoints: publish what was written, as the batch of the next
        checkpoint id (the run id is fresh: no checkpoint of this job exists)."""
        if self._log.pending:
            self.commit(int(self._log.pending[-1][0]))
        if self._buffer:
            self._publish(self._identity, int(self._log.last) + 1, tuple(self._buffer))
            self._buffer = []


class BrokerSinkWriter:
    """What every broker sink writer does, whichever the broker: with ``delivery="exactly_once"`` it
    is a ``PublishingCommitter`` (rules 1-4), otherwise it sends at once (the at-least-once rule).

    An adapter calls ``_init_delivery`` in its constructor, once its client is connected, and
    supplies:

    - ``_publish_batch(identity, checkpoint_id, payloads)``: publish one pre-committed batch,
      idempotently per (identity, checkpoint id) (exactly-once);
    - ``_send(payloads)``: send encoded records now (at-least-once);
    - ``_flush()``: return once the broker acknowledged everything sent (at-least-once; the default
      does nothing, for adapters whose ``_send`` waits for the acknowledgements itself);
    - ``close()``.

    Failpoints attached by the task are in ``_failpoints`` (``hit(self._failpoints, MID_COMMIT)``).
    """

    __slots__ = ("_owner", "_record_encoder", "_committer", "_failpoints")

    def _init_delivery(self, owner: str, sink: str, subtask: int, delivery: Delivery,
                       encode: Callable[[Any], bytes], resume_state: Any | None) -> None:
        """Step (1) of every adapter's constructor after connecting; with a resume state it publishes
        what that state names first (rule 4), so the adapter must be able to publish by then."""
        self._owner = owner
        self._record_encoder = encode
        self._failpoints: Any = None
        self._committer: PublishingCommitter | None = None
        if delivery is Delivery.EXACTLY_ONCE:
            self._committer = PublishingCommitter(owner, sink, subtask, encode, self._publish_batch, resume_state)

    def _publish_batch(self, identity: WriterIdentity, checkpoint_id: int, payloads: tuple[bytes, ...]) -> None:
        raise NotImplementedError

    def _send(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """At-least-once: everything sent is acknowledged (nothing to wait for by default)."""

    def attach_failpoints(self, failpoints: Any) -> None:
        self._failpoints = failpoints

    def write_batch(self, records: list[Any]) -> None:
        if self._committer is not None:
            self._committer.write_batch(records)
        else:
            self._send(encode_all(self._record_encoder, records, self._owner))

    def pre_commit(self, checkpoint_id: int) -> None:
        if self._committer is not None:
            self._committer.pre_commit(checkpoint_id)
        else:
            self._flush()  # everything before the barrier is acknowledged before the snapshot

    def snapshot(self) -> Any:
        return self._committer.snapshot() if self._committer is not None else None

    def commit(self, checkpoint_id: int) -> None:
        if self._committer is not None:
            self._committer.commit(checkpoint_id)

    def finish(self) -> None:
        if self._committer is not None:
            self._committer.finish()
        else:
            self._flush()


def parse_publishing_state(state: Any, sink: str) -> tuple[str, list[tuple[int, Batch]]]:
    try:
        run = state["run"]
        pending = [(int(cid), (WriterIdentity(str(identity)), tuple(bytes(p) for p in payloads)))
                   for cid, (identity, payloads) in state["pending"]]
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{sink}: not a snapshot of a publishing sink writer: {state!r:.200}") from error
    if not isinstance(run, str) or not run:
        raise ValueError(f"{sink}: snapshot run id must be a non-empty string, got {run!r}")
    return run, pending


def redistribute_publishing_states(states: Sequence[Any | None], parallelism: int, sink: str) -> list[Any]:
    """Rule 5."""
    if parallelism < 1:
        raise ValueError(f"{sink}: parallelism must be ≥ 1, got {parallelism}")
    parsed = [None if s is None else parse_publishing_state(s, sink) for s in states]
    runs = [p[0] for p in parsed if p is not None]
    out: list[Any] = []
    for i in range(parallelism):
        own = parsed[i] if i < len(parsed) else None
        run = own[0] if own is not None else (runs[0] if runs else new_run_id())
        pending: list[tuple[int, Batch]] = []
        for j, p in enumerate(parsed):
            if p is not None and j % parallelism == i:
                pending.extend(p[1])
        pending.sort(key=lambda entry: entry[0])
        out.append({"run": run, "pending": pending})
    return out


SplitGroups = list[tuple[str, list[Any]]]
"""What one read of a broker reader returned: the records of each split, in the order read."""


def flatten(groups: SplitGroups) -> list[Any]:
    """``poll``'s view of one read: every record, split after split."""
    if len(groups) == 1:
        return groups[0][1]
    return [record for _, records in groups for record in records]


class SplitTracker:
    """Turns each read of a broker reader into the events of ``SplitReader.poll_splits``: a split
    that became readable is announced before its records, a split that is no longer readable
    (exhausted) is finished after them. Pure: the reader says what it read and what it reads now."""

    __slots__ = ("_watched",)

    def __init__(self) -> None:
        self._watched: dict[str, None] = {}
        """Splits announced and not finished, in announcement order."""

    def events(self, groups: SplitGroups, active: Sequence[str]) -> list[tuple[str, list[Any], bool]]:
        now_active = dict.fromkeys(active)
        out: list[tuple[str, list[Any], bool]] = [(s, [], False) for s in now_active if s not in self._watched]
        ended = dict.fromkeys(s for s in self._watched if s not in now_active)
        for split, records in groups:
            if records:
                out.append((split, records, False))
                if split not in now_active:
                    ended[split] = None  # read to its end by this very read
        out.extend((split, [], True) for split in ended)
        self._watched = now_active
        return out


def hit(failpoints: Any, name: str) -> None:
    if failpoints:
        failpoints.hit(name)


MID_COMMIT = fpn.SINK_MID_COMMIT


class EventLoopThread:
    """An asyncio loop on a daemon thread, for clients that only speak asyncio (nats-py). Built in
    the process that uses it (never inherited through a fork)."""

    __slots__ = ("_loop", "_thread")

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
