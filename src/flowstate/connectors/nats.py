"""NATS JetStream: a replayable source read from stored stream sequences, and a sink made exactly-once
by JetStream's message deduplication (client: nats-py, ``pip install 'flowstate[brokers]'``).

**NatsSource** rules:

1. One split per subject filter (``subjects``; ``None``: one split for the whole stream). Split id:
   ``"{stream}/{subject}"`` (``"{stream}/>"`` for the whole stream). Filters must not overlap, or a
   message is read once per filter that matches it.
2. A split's position is ``{"next": N, "end": E}``: N is the stream sequence of the **next** message
   to read (1 at the start); E is ``None`` (unbounded) or, with ``bounded=True``, the stream's last
   sequence when the split was first read, kept in the checkpoint so that every run reads the same
   input. A bounded split is exhausted once every message ≤ E matching its filter was read.
3. A reader reads each split through an ephemeral pull consumer starting at N with ``AckPolicy.NONE``:
   it acknowledges nothing, ever, and the stream keeps its messages under the stream's own retention.
   A restore rebuilds the consumers at the positions of the checkpoint.
4. Records are ``decoder(payload)`` (default: JSON).
5. ``rate``: at most that many records per second per reader (a token bucket; a throttled poll
   sleeps at most 0.05 s).

**NatsSink** rules (``delivery="exactly_once"``: the publishing committer of
``flowstate.connectors.broker_common``):

1. Records of checkpoint *n* are kept in the sink's pre-committed state and published only once *n*
   completed, each with the header ``Nats-Msg-Id: {run}/{sink}/{subtask}/{n}/{index}``.
2. A re-publish after a restore (the checkpoint completed, the publishing may or may not have
   happened) sends the same ids: JetStream drops them as duplicates **within the stream's duplicate
   window**. The window must therefore outlast the longest time from a checkpoint's completion to
   the end of the restore that re-publishes it; the sink refuses a stream whose window is shorter
   than ``min_duplicate_window`` (default 10 minutes, the default checkpoint timeout; pass the
   job's ``--timeout`` if it is longer).
3. A publish is confirmed by its JetStream ack; commit returns only when every record of the batch is
   acknowledged (or a duplicate), so a completed commit is durable in the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from flowstate.config import parse_duration
from flowstate.connectors.base import SplitEvent
from flowstate.connectors.broker_common import (
    MID_COMMIT,
    BrokerSinkWriter,
    ConnectorError,
    Delivery,
    EventLoopThread,
    SplitGroups,
    SplitTracker,
    WriterIdentity,
    flatten,
    hit,
    json_bytes,
    json_record,
    message_id,
    parse_delivery,
    read_limiter,
    redistribute_publishing_states,
    require,
)

_FETCH_TIMEOUT = 0.05
"""Seconds one poll waits for messages (a poll must return within about 0.1 s)."""
_CONNECT_ATTEMPTS = 10
_RECONNECT_WAIT = 0.5
_PUBLISH_CHUNK = 512
"""Publishes in flight at once."""
_REQUEST_TIMEOUT = 10.0


def _servers(servers: str | Sequence[str]) -> list[str]:
    return [servers] if isinstance(servers, str) else list(servers)


async def _ignore_error(_: Exception) -> None:
    """nats-py logs connection errors itself unless given a callback; the caller reports them."""


async def _connect(servers: list[str], owner: str) -> Any:
    import nats
    from nats.errors import NoServersError

    try:
        return await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=_CONNECT_ATTEMPTS,
                                  reconnect_time_wait=_RECONNECT_WAIT, error_cb=_ignore_error)
    except (NoServersError, OSError) as exc:
        raise ConnectorError(f"{owner}: cannot reach NATS at {', '.join(servers)} ({exc})") from None


class NatsSource:
    """A JetStream stream read from stored stream sequences (see the module rules). Replayable."""

    __slots__ = ("_stream", "_subjects", "_servers", "_decoder", "_bounded", "_rate", "_name")

    def __init__(
        self,
        stream: str,
        subjects: Sequence[str] | str | None = None,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        bounded: bool = False,
        rate: float | None = None,
        decoder: Callable[[bytes], Any] = json_record,
        name: str | None = None,
    ) -> None:
        require("nats", "nats-py", "NatsSource")
        if not stream or any(c in stream for c in " .*>"):
            raise ValueError(f"NatsSource: stream must be a JetStream stream name, got {stream!r}")
        subjects = [subjects] if isinstance(subjects, str) else (None if subjects is None else list(subjects))
        if subjects is not None and (not subjects or len(set(subjects)) != len(subjects)):
            raise ValueError(f"NatsSource: subjects must be distinct and non-empty, got {subjects!r}")
        if not callable(decoder):
            raise TypeError(f"NatsSource: decoder must be callable (bytes → record), got {decoder!r}")
        self._stream = stream
        self._subjects = subjects
        self._servers = _servers(servers)
        self._decoder = decoder
        self._bounded = bounded
        self._rate = rate
        read_limiter(rate, "NatsSource")  # validates
        self._name = name or f"nats:{stream}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return [f"{self._stream}/{s}" for s in (self._subjects or [">"])]

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> NatsReader:
        known = self.splits()
        for split in splits:
            if split not in known:
                raise ValueError(f"NatsSource {self._name!r}: unknown split {split!r}; splits are {known}")
        if len(set(splits)) != len(splits):
            raise ValueError(f"NatsSource {self._name!r}: a split is assigned twice in {list(splits)}")
        resume = resume_state or {}
        positions = {s: _parse_position(resume.get(s), s, self._name) for s in splits}
        return NatsReader(self, list(splits), positions)


def _parse_position(position: Any, split: str, owner: str) -> tuple[int, int | None] | None:
    if position is None:
        return None
    try:
        nxt, end = position["next"], position["end"]
    except (TypeError, KeyError):
        raise ValueError(f"NatsSource {owner!r}: position of {split!r} must be {{'next', 'end'}}, "
                         f"got {position!r}") from None
    if isinstance(nxt, bool) or not isinstance(nxt, int) or nxt < 1 or (end is not None and not isinstance(end, int)):
        raise ValueError(f"NatsSource {owner!r}: bad position {position!r} of {split!r}")
    return nxt, end


class _Split:
    __slots__ = ("split", "subject", "next", "end", "sub", "exhausted")

    def __init__(self, split: str, subject: str | None, nxt: int, end: int | None) -> None:
        self.split = split
        self.subject = subject
        self.next = nxt
        self.end = end
        self.sub: Any = None
        self.exhausted = end is not None and nxt > end


class NatsReader:
    """Reads the splits of one subtask. All state is ``next`` and ``end`` per split."""

    __slots__ = ("_limiter", "_source", "_loop", "_nc", "_js", "_splits", "_turn", "_tracker")

    def __init__(self, source: NatsSource, splits: list[str], positions: dict[str, tuple[int, int | None] | None]) -> None:
        self._source = source
        self._limiter = read_limiter(source._rate, source.name)
        self._splits: list[_Split] = []
        self._turn = 0
        self._tracker = SplitTracker()
        self._loop = EventLoopThread(f"nats-source:{source.name}")
        try:
            self._nc = self._loop.run(_connect(source._servers, f"NatsSource {source.name!r}"))
            self._js = self._nc.jetstream(timeout=_REQUEST_TIMEOUT)
            self._loop.run(self._open(splits, positions))
        except BaseException:
            self.close()
            raise

    async def _open(self, splits: list[str], positions: dict[str, tuple[int, int | None] | None]) -> None:
        from nats.js.errors import NotFoundError

        source = self._source
        try:
            info = await self._js.stream_info(source._stream)
        except NotFoundError:
            raise ConnectorError(f"NatsSource {source.name!r}: stream {source._stream!r} does not exist on "
                                 f"{', '.join(source._servers)}") from None
        for split in splits:
            subject = split.split("/", 1)[1]
            position = positions[split]
            if position is None:
                position = (1, info.state.last_seq if source._bounded else None)
            state = _Split(split, None if subject == ">" else subject, *position)
            if not state.exhausted:
                await self._subscribe(state)
            self._splits.append(state)

    async def _subscribe(self, state: _Split) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=state.next,
                                ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True,
                                filter_subject=state.subject)
        state.sub = await self._js.pull_subscribe(state.subject or ">", durable=None, stream=self._source._stream,
                                                  config=config)
        if state.end is not None and (await state.sub.consumer_info()).num_pending == 0:
            state.exhausted = True  # nothing matching at or after next up to the stream's end (≥ E)

    def poll(self, max_records: int) -> list[Any] | None:
        groups = self._read_groups(max_records)
        return None if groups is None else flatten(groups)

    def poll_splits(self, max_records: int) -> list[SplitEvent] | None:
        groups = self._read_groups(max_records)
        return None if groups is None else self._tracker.events(
            groups, [s.split for s in self._splits if not s.exhausted])

    def _read_groups(self, max_records: int) -> SplitGroups | None:
        active = [s for s in self._splits if not s.exhausted]
        if not active:
            return None
        if max_records <= 0:
            return []
        if self._limiter is not None:
            max_records = self._limiter.take(max_records)
            if max_records == 0:
                return []
        # Round-robin over the splits, one fetch per poll: each poll returns within the fetch timeout.
        state = active[self._turn % len(active)]
        self._turn += 1
        messages = self._loop.run(self._fetch(state, max_records))
        decode = self._source._decoder
        records = []
        nxt = state.next
        for message in messages:
            meta = message.metadata
            seq = meta.sequence.stream
            if seq < nxt:
                continue  # a redelivery of something already read: never read twice
            if state.end is not None and seq > state.end:
                state.exhausted = True
                break
            records.append(decode(message.data))
            nxt = seq + 1
            if state.end is not None and (meta.num_pending == 0 or seq == state.end):
                state.exhausted = True
                break
        # Assigned after every record decoded: a failing decoder leaves the position where it was.
        state.next = nxt
        return [(state.split, records)]

    async def _fetch(self, state: _Split, max_records: int) -> list[Any]:
        from nats.errors import TimeoutError as NatsTimeout

        try:
            return await state.sub.fetch(max_records, timeout=_FETCH_TIMEOUT)
        except (TimeoutError, NatsTimeout):
            return []

    def snapshot(self) -> dict[str, Any]:
        return {s.split: {"next": s.next, "end": s.end} for s in self._splits}

    def close(self) -> None:
        nc = getattr(self, "_nc", None)
        if nc is not None:
            try:
                self._loop.run(nc.close(), timeout=5)
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self._loop.close()


class NatsSink:
    """JetStream publishes, exactly-once through message deduplication (see the module rules)."""

    __slots__ = ("_subject", "_servers", "_encoder", "_delivery", "_min_window", "_name")

    def __init__(
        self,
        subject: str,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        delivery: str | Delivery = Delivery.EXACTLY_ONCE,
        encoder: Callable[[Any], bytes] = json_bytes,
        min_duplicate_window: float | str = "10m",
        name: str | None = None,
    ) -> None:
        require("nats", "nats-py", "NatsSink")
        if not subject or any(c in subject for c in " *>"):
            raise ValueError(f"NatsSink: subject must be a literal subject, got {subject!r}")
        if not callable(encoder):
            raise TypeError(f"NatsSink: encoder must be callable (record → bytes), got {encoder!r}")
        self._subject = subject
        self._servers = _servers(servers)
        self._encoder = encoder
        self._delivery = parse_delivery(delivery, "NatsSink")
        self._min_window = parse_duration(min_duplicate_window, what="min_duplicate_window")
        self._name = name or f"nats-sink:{subject}"
        if "/" in self._name:
            raise ValueError(f"NatsSink: name must not contain '/', got {self._name!r}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def transactional(self) -> bool:
        return self._delivery is Delivery.EXACTLY_ONCE

    def redistribute_state(self, states: Sequence[Any | None], parallelism: int) -> list[Any]:
        if self._delivery is Delivery.AT_LEAST_ONCE:
            return [None] * parallelism
        return redistribute_publishing_states(states, parallelism, f"NatsSink {self._name!r}")

    def committed_records(self) -> list[bytes]:
        """The payloads of every message on the sink's subject in the stream that captures it, in
        stream order, read back from the server: what a reader of the subject sees. The chaos runner
        compares them."""
        loop = EventLoopThread(f"nats-sink-read:{self._name}")
        try:
            return loop.run(self._read_back(), timeout=120)
        finally:
            loop.close()

    async def _read_back(self) -> list[bytes]:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        owner = f"NatsSink {self._name!r}"
        nc = await _connect(self._servers, owner)
        try:
            js = nc.jetstream(timeout=_REQUEST_TIMEOUT)
            try:
                stream = await js.find_stream_name_by_subject(self._subject)
            except NotFoundError:
                raise ConnectorError(f"{owner}: no JetStream stream captures subject {self._subject!r} on "
                                     f"{', '.join(self._servers)}") from None
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                    filter_subject=self._subject, inactive_threshold=30.0)
            subscription = await js.pull_subscribe(self._subject, stream=stream, config=config)
            payloads: list[bytes] = []
            try:
                while (await subscription.consumer_info()).num_pending:
                    try:
                        messages = await subscription.fetch(1024, timeout=1.0)
                    except TimeoutError:
                        continue
                    payloads += [m.data for m in messages]
            finally:
                await subscription.unsubscribe()
            return payloads
        finally:
            await nc.close()

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> NatsSinkWriter:
        if not 0 <= subtask < parallelism:
            raise ValueError(f"NatsSink {self._name!r}: subtask {subtask} outside 0..{parallelism - 1}")
        return NatsSinkWriter(self, subtask, resume_state)


class NatsSinkWriter(BrokerSinkWriter):
    """One subtask's publisher: a ``PublishingCommitter`` (exactly-once) or direct publishes."""

    __slots__ = ("_sink", "_loop", "_nc", "_js")

    def __init__(self, sink: NatsSink, subtask: int, resume_state: Any | None) -> None:
        self._sink = sink
        owner = f"NatsSink {sink.name!r}"
        self._loop = EventLoopThread(f"nats-sink:{sink.name}:{subtask}")
        try:
            self._nc = self._loop.run(_connect(sink._servers, owner))
            self._js = self._nc.jetstream(timeout=_REQUEST_TIMEOUT)
            self._owner = owner
            self._loop.run(self._check_stream())
            self._init_delivery(owner, sink.name, subtask, sink._delivery, sink._encoder, resume_state)
        except BaseException:
            self.close()
            raise

    async def _check_stream(self) -> None:
        from nats.js.errors import NotFoundError

        sink = self._sink
        try:
            stream = await self._js.find_stream_name_by_subject(sink._subject)
        except NotFoundError:
            raise ConnectorError(f"{self._owner}: no JetStream stream captures subject {sink._subject!r} on "
                                 f"{', '.join(sink._servers)}") from None
        if sink._delivery is Delivery.EXACTLY_ONCE:
            window = (await self._js.stream_info(stream)).config.duplicate_window or 0.0
            if window < sink._min_window:
                raise ConnectorError(
                    f"{self._owner}: stream {stream!r} keeps message ids for {window:g} s, shorter than "
                    f"min_duplicate_window {sink._min_window:g} s; raise its duplicate_window (or use "
                    "delivery='at_least_once')")

    def _publish_batch(self, identity: WriterIdentity, checkpoint_id: int, payloads: tuple[bytes, ...]) -> None:
        messages: list[tuple[bytes, dict[str, str] | None]] = [
            (p, {"Nats-Msg-Id": message_id(identity, checkpoint_id, k)}) for k, p in enumerate(payloads)]
        half = (len(messages) + 1) // 2
        self._send_messages(messages[:half])
        hit(self._failpoints, MID_COMMIT)  # half of the batch is in the stream: a restore re-sends all of it
        self._send_messages(messages[half:])

    def _send_messages(self, messages: list[tuple[bytes, dict[str, str] | None]]) -> None:
        for start in range(0, len(messages), _PUBLISH_CHUNK):
            self._loop.run(self._publish_all(messages[start:start + _PUBLISH_CHUNK]))

    async def _publish_all(self, messages: list[tuple[bytes, dict[str, str] | None]]) -> None:
        subject = self._sink._subject
        js = self._js
        # Sent in order on one connection, so the stream stores them in order; acks are awaited together.
        await asyncio.gather(*(js.publish(subject, payload, headers=headers) for payload, headers in messages))

    def _send(self, payloads: list[bytes]) -> None:
        # at_least_once: returns only after every ack, so everything before the barrier is durable.
        self._send_messages([(p, None) for p in payloads])

    def close(self) -> None:
        nc = getattr(self, "_nc", None)
        if nc is not None:
            try:
                self._loop.run(nc.close(), timeout=5)
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self._loop.close()
