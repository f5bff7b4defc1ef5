"""Redis Streams: a replayable source read from stored entry ids, and a sink whose records and
last-committed marker are written by one atomic Lua script (client: redis-py with hiredis,
``pip install 'flowstate[brokers]'``).

**RedisStreamSource** rules:

1. One split per stream key, the split id being the key.
2. A split's position is ``{"after": ID, "end": E}``: the next entry to read is the first with an id
   greater than ID (``"0-0"`` at the start); E is ``None`` (unbounded) or, with ``bounded=True``,
   the id of the stream's last entry when the split was first read, kept in the checkpoint so that
   every run reads the same input.
3. Without ``group``: ``XREAD`` from the positions; nothing is acknowledged, ever.
4. With ``group``: the split is read as consumer ``flowstate:{key}`` of that group (created at ``0``
   if missing): first the consumer's own pending entries after ID (``XREADGROUP … ID``: what an
   earlier attempt read but no completed checkpoint covered), then new entries (``>``). An entry is
   acknowledged (``XACK``) only when a checkpoint whose position covers it completed
   (``AcknowledgingReader``). The positions in the checkpoint, not the group, say where to resume.
5. Records are ``decoder(fields)``; the default decodes the field ``data`` as JSON (what
   ``RedisStreamSink`` writes), or gives the fields as a ``str → str`` dict when there is no ``data``.
   ``rate``: at most that many records per second per reader (a token bucket; a throttled poll
   sleeps at most 0.05 s).

**RedisStreamSink** rules (``delivery="exactly_once"``: the publishing committer of
``flowstate.connectors.broker_common``):

1. The records of checkpoint *n* are kept in the sink's pre-committed state until *n* completed.
2. One Lua script (atomic in Redis) per batch: if the marker of the writer that pre-committed it
   (hash ``{stream}:flowstate-committed``, field ``run/sink/subtask``) is below *n*, ``XADD`` every
   record (field ``data``) and set the marker to *n*; otherwise do nothing. A re-commit after a restore
   is therefore a no-op, however long after; batches are committed in checkpoint order.
3. The marker hash must not be deleted while a job could restore: deleting it turns a re-commit
   into a duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from flowstate.connectors.base import SplitEvent
from flowstate.connectors.broker_common import (
    MID_COMMIT,
    BrokerSinkWriter,
    ConnectorError,
    Delivery,
    SplitGroups,
    SplitTracker,
    WriterIdentity,
    flatten,
    hit,
    json_bytes,
    parse_delivery,
    read_limiter,
    redistribute_publishing_states,
    require,
)

_BLOCK_MS = 50
"""Milliseconds one poll waits for entries (a poll must return within about 0.1 s)."""
_START = "0-0"
MARKER_SUFFIX = ":flowstate-committed"

_COMMIT_SCRIPT = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local checkpoint = tonumber(ARGV[2])
if checkpoint <= last then return -1 end
for i = 3, #ARGV do redis.call('XADD', KEYS[1], '*', 'data', ARGV[i]) end
redis.call('HSET', KEYS[2], ARGV[1], checkpoint)
return #ARGV - 2
"""
"""Rule 2 of the sink: KEYS = stream, marker hash; ARGV = writer identity, checkpoint id, payloads.
Returns how many records it added, -1 for a batch committed before."""


def default_decoder(fields: dict[bytes, bytes]) -> Any:
    """Rule 5 of the source."""
    data = fields.get(b"data")
    if data is not None:
        return json.loads(data)
    return {k.decode(): v.decode() for k, v in fields.items()}


def _entry_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _client(url: str, owner: str) -> Any:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        raise ConnectorError(f"{owner}: cannot reach Redis at {url} ({exc})") from None
    return client


class RedisStreamSource:
    """Redis Streams read from stored entry ids (see the module rules). Replayable."""

    __slots__ = ("_streams", "_url", "_group", "_decoder", "_bounded", "_rate", "_name")

    def __init__(
        self,
        streams: Sequence[str] | str,
        url: str = "redis://127.0.0.1:6379",
        *,
        bounded: bool = False,
        rate: float | None = None,
        group: str | None = None,
        decoder: Callable[[dict[bytes, bytes]], Any] = default_decoder,
        name: str | None = None,
    ) -> None:
        require("redis", "redis", "RedisStreamSource")
        streams = [streams] if isinstance(streams, str) else list(streams)
        if not streams or len(set(streams)) != len(streams) or not all(isinstance(s, str) and s for s in streams):
            raise ValueError(f"RedisStreamSource: streams must be distinct non-empty keys, got {streams!r}")
        if not callable(decoder):
            raise TypeError(f"RedisStreamSource: decoder must be callable (fields → record), got {decoder!r}")
        self._streams = streams
        self._url = url
        self._group = group
        self._decoder = decoder
        self._bounded = bounded
        self._rate = rate
        read_limiter(rate, "RedisStreamSource")  # validates
        self._name = name or f"redis:{','.join(streams)}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return list(self._streams)

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> RedisStreamReader:
        for split in splits:
            if split not in self._streams:
                raise ValueError(f"RedisStreamSource {self._name!r}: unknown split {split!r}; splits are {self._streams}")
        if len(set(splits)) != len(splits):
            raise ValueError(f"RedisStreamSource {self._name!r}: a split is assigned twice in {list(splits)}")
        resume = resume_state or {}
        return RedisStreamReader(self, list(splits), {s: resume.get(s) for s in splits})


class _Split:
    __slots__ = ("key", "after", "end", "exhausted", "history")

    def __init__(self, key: str, after: str, end: str | None, history: bool) -> None:
        self.key = key
        self.after = after
        self.end = end
        self.exhausted = end is not None and _entry_id(after) >= _entry_id(end)
        self.history = history
        """Group mode: still reading the consumer's own pending entries (rule 4)."""


class RedisStreamReader:
    """Reads the stream keys of one subtask. State: ``after`` and ``end`` per split."""

    __slots__ = ("_limiter", "_source", "_client", "_splits", "_turn", "_read", "_to_ack", "_tracker")

    def __init__(self, source: RedisStreamSource, splits: list[str], positions: dict[str, Any]) -> None:
        self._source = source
        self._limiter = read_limiter(source._rate, source.name)
        self._client = _client(source._url, f"RedisStreamSource {source.name!r}")
        self._turn = 0
        self._tracker = SplitTracker()
        self._read: dict[str, list[bytes]] = {}
        """Group mode: ids read since the last snapshot, per key."""
        self._to_ack: list[tuple[int, dict[str, list[bytes]]]] = []
        """Group mode: ids read up to the positions of each pending checkpoint (rule 4)."""
        self._splits: list[_Split] = []
        import redis

        for key in splits:
            if self._client.type(key) != b"stream":
                raise ConnectorError(f"RedisStreamSource {source.name!r}: stream {key!r} does not exist at {source._url}")
            position = positions[key]
            if position is None:
                end = None
                if source._bounded:
                    last = self._client.xrevrange(key, count=1)
                    end = last[0][0].decode() if last else _START
                position = {"after": _START, "end": end}
            try:
                after, end = str(position["after"]), position["end"]
                _entry_id(after)
            except (TypeError, KeyError, ValueError):
                raise ValueError(f"RedisStreamSource {source.name!r}: bad position {position!r} of {key!r}") from None
            if source._group is not None:
                try:
                    self._client.xgroup_create(key, source._group, id=_START)
                except redis.exceptions.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
            self._splits.append(_Split(key, after, end, history=source._group is not None))

    def poll(self, max_records: int) -> list[Any] | None:
        groups = self._read_groups(max_records)
        return None if groups is None else flatten(groups)

    def poll_splits(self, max_records: int) -> list[SplitEvent] | None:
        groups = self._read_groups(max_records)
        return None if groups is None else self._tracker.events(
            groups, [s.key for s in self._splits if not s.exhausted])

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
        if self._source._group is None:
            reply = self._client.xread({s.key: s.after for s in active}, count=max(1, max_records // len(active)),
                                       block=_BLOCK_MS)
            by_key = {key.decode() if isinstance(key, bytes) else key: entries for key, entries in reply or []}
            # Up to count entries came from each stream: keep the max_records oldest of them all.
            merged = sorted(((_entry_id(entry[0]), k, entry) for k, state in enumerate(active)
                             for entry in by_key.get(state.key) or ()), key=lambda e: e[:2])[:max_records]
            groups: SplitGroups = []
            staged = []
            for k, state in enumerate(active):
                got = [entry for _, j, entry in merged if j == k]
                if got:
                    records: list[Any] = []
                    staged.append((state, self._take(state, got, records)))
                    groups.append((state.key, records))
            for state, (after, exhausted, _) in staged:
                state.after, state.exhausted = after, exhausted
            return groups
        state = active[self._turn % len(active)]
        self._turn += 1
        group, consumer = self._source._group, f"flowstate:{state.key}"
        start = state.after if state.history else ">"
        reply = self._client.xreadgroup(group, consumer, {state.key: start}, count=max_records,
                                        block=None if state.history else _BLOCK_MS)
        entries = reply[0][1] if reply else []
        if state.history and not entries:
            state.history = False  # the consumer's pending entries are all read again
            return []
        records = []
        after, exhausted, ids = self._take(state, entries, records)
        state.after, state.exhausted = after, exhausted
        self._read.setdefault(state.key, []).extend(ids)
        return [(state.key, records)]

    def _take(self, state: _Split, entries: list[Any], records: list[Any]) -> tuple[str, bool, list[bytes]]:
        """Decode ``entries`` of ``state`` up to its end into ``records``; the new ``after``, whether the
        split is exhausted, and the ids read. Changes no state: a failing decoder leaves the reader as it was."""
        decode = self._source._decoder
        after, exhausted = state.after, state.exhausted
        end = None if state.end is None else _entry_id(state.end)
        ids = []
        for entry_id, fields in entries:
            if end is not None and _entry_id(entry_id) > end:
                exhausted = True
                break
            records.append(decode(fields))
            after = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            ids.append(entry_id)
            if end is not None and _entry_id(entry_id) == end:
                exhausted = True
                break
        return after, exhausted, ids

    def snapshot(self) -> dict[str, Any]:
        return {s.key: {"after": s.after, "end": s.end} for s in self._splits}

    def snapshot_for(self, checkpoint_id: int) -> dict[str, Any]:
        if self._read:
            self._to_ack.append((checkpoint_id, self._read))
            self._read = {}
        return self.snapshot()

    def notify_complete(self, checkpoint_id: int) -> None:
        done = [ids for cid, ids in self._to_ack if cid <= checkpoint_id]
        if not done:
            return
        for ids in done:
            for key, entry_ids in ids.items():
                if entry_ids:
                    self._client.xack(key, self._source._group, *entry_ids)
        self._to_ack = [(cid, ids) for cid, ids in self._to_ack if cid > checkpoint_id]

    def notify_aborted(self, checkpoint_id: int) -> None:
        """Rule 3 of ``AcknowledgingReader``: kept, acknowledged with the next completed checkpoint."""

    def close(self) -> None:
        self._client.close()


class RedisStreamSink:
    """Records appended to a Redis stream, exactly-once through an atomic commit marker."""

    __slots__ = ("_stream", "_url", "_encoder", "_delivery", "_name")

    def __init__(
        self,
        stream: str,
        url: str = "redis://127.0.0.1:6379",
        *,
        delivery: str | Delivery = Delivery.EXACTLY_ONCE,
        encoder: Callable[[Any], bytes] = json_bytes,
        name: str | None = None,
    ) -> None:
        require("redis", "redis", "RedisStreamSink")
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"RedisStreamSink: stream must be a non-empty key, got {stream!r}")
        if not callable(encoder):
            raise TypeError(f"RedisStreamSink: encoder must be callable (record → bytes), got {encoder!r}")
        self._stream = stream
        self._url = url
        self._encoder = encoder
        self._delivery = parse_delivery(delivery, "RedisStreamSink")
        self._name = name or f"redis-sink:{stream}"
        if "/" in self._name:
            raise ValueError(f"RedisStreamSink: name must not contain '/', got {self._name!r}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def transactional(self) -> bool:
        return self._delivery is Delivery.EXACTLY_ONCE

    @property
    def marker_key(self) -> str:
        """The key where this sink records which checkpoints it committed."""
        return self._stream + MARKER_SUFFIX

    def redistribute_state(self, states: Sequence[Any | None], parallelism: int) -> list[Any]:
        if self._delivery is Delivery.AT_LEAST_ONCE:
            return [None] * parallelism
        return redistribute_publishing_states(states, parallelism, f"RedisStreamSink {self._name!r}")

    def committed_records(self) -> list[bytes]:
        """The payloads (field ``data``) of every entry of the stream, in stream order, read back from
        Redis (``XRANGE``): what a reader of the stream sees. The chaos runner compares them."""
        client = _client(self._url, f"RedisStreamSink {self._name!r}")
        try:
            return [fields[b"data"] for _, fields in client.xrange(self._stream) if b"data" in fields]
        finally:
            client.close()

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> RedisStreamSinkWriter:
        if not 0 <= subtask < parallelism:
            raise ValueError(f"RedisStreamSink {self._name!r}: subtask {subtask} outside 0..{parallelism - 1}")
        return RedisStreamSinkWriter(self, subtask, resume_state)


class RedisStreamSinkWriter(BrokerSinkWriter):
    __slots__ = ("_sink", "_client", "_script")

    def __init__(self, sink: RedisStreamSink, subtask: int, resume_state: Any | None) -> None:
        self._sink = sink
        owner = f"RedisStreamSink {sink.name!r}"
        self._client = _client(sink._url, owner)
        self._script = self._client.register_script(_COMMIT_SCRIPT)
        self._init_delivery(owner, sink.name, subtask, sink._delivery, sink._encoder, resume_state)

    def _publish_batch(self, identity: WriterIdentity, checkpoint_id: int, payloads: tuple[bytes, ...]) -> None:
        self._script(keys=[self._sink._stream, self._sink.marker_key], args=[identity, checkpoint_id, *payloads])
        hit(self._failpoints, MID_COMMIT)  # this batch is committed, later ones of the same commit not yet

    def _send(self, payloads: list[bytes]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd(self._sink._stream, {"data": payload})
            pipe.execute()  # returns once Redis answered every XADD

    def close(self) -> None:
        self._client.close()
