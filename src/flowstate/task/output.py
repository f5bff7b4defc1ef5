"""The output side of a task: partitioning batches onto the channels of downstream tasks.

A keyed (``hash``) edge routes each record by the key group of its key (``flowstate.state.keygroups``).
Hashing a key costs about 200 ns in Python, a large part of a cheap job's whole per-record cost, so
an edge remembers the subtask of each key it routed, up to ``ROUTE_CACHE_KEYS`` keys: a key seen
before costs one dictionary lookup. Keys that are equal in Python are one key under the rules of
keys (``flowstate.state.keys``), so a remembered route is the one the hash would give. Once the cache
is full, a batch whose keys are mostly new (a job with many more distinct keys than the cache holds)
turns the cache off for that edge: a lookup that misses would only add to the hash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any
from zlib import crc32

from flowstate.errors import UserFunctionError
from flowstate.state.keygroups import GOLDEN, routing_table, stable_key_bytes
from flowstate.state.keys import returns_its_argument
from flowstate.transport.ports import ChannelWriter

ROUTE_CACHE_KEYS = 1 << 16
"""Keys whose route a keyed edge remembers."""


class OutputEdge:
    """One logical edge out of a task: the target channels, one per downstream subtask it feeds."""

    def __init__(
        self,
        partition: str,
        targets: list[tuple[ChannelWriter, int]],
        key_fn: Callable[[Any], Any] | None,
        max_parallelism: int,
        cancelled: threading.Event,
    ) -> None:
        self.partition = partition
        self.targets = targets
        self.key_fn = key_fn
        self._cancelled = cancelled
        self._next = 0
        self._route = routing_table(max_parallelism, len(targets))
        self._maxp = max_parallelism
        self._routes: dict[Any, int] | None = {} if partition == "hash" else None
        """Key → index in ``targets`` of the keys routed so far (see the module docstring)."""
        self._itself = returns_its_argument(key_fn)
        """The key function is ``lambda record: record``: the loop over remembered keys does not call it."""
        self._split = getattr(key_fn, "split_batch", None)
        """A key of record batches (``flowstate.arrow.ColumnKey``) routes the rows of each item itself."""

    def emit(self, batch: list[Any]) -> None:
        targets = self.targets
        if len(targets) == 1:
            gate, ch = targets[0]
            gate.put(ch, batch, self._cancelled)
            return
        if self.partition == "hash":
            self._emit_by_key(batch)
            return
        # rebalance: whole batches round-robin
        gate, ch = targets[self._next]
        self._next = (self._next + 1) % len(targets)
        gate.put(ch, batch, self._cancelled)

    def _emit_by_key(self, batch: list[Any]) -> None:
        buckets: list[list[Any]] = [[] for _ in self.targets]
        if self._split is not None:
            try:
                buckets = self._split(batch, self._route, self._maxp, len(self.targets))
            except Exception as exc:
                from flowstate.columnar import shown

                raise UserFunctionError("key_by", shown(batch[0]), exc) from exc
        elif self._routes is None:
            self._route_by_hash(batch, buckets)
        else:
            self._route_remembered(batch, buckets, self._routes)
        for (gate, ch), bucket in zip(self.targets, buckets):
            if bucket:
                gate.put(ch, bucket, self._cancelled)

    def _route_by_hash(self, batch: list[Any], buckets: list[list[Any]]) -> None:
        key_fn = self.key_fn
        assert key_fn is not None
        route = self._route
        maxp = self._maxp
        appends = [b.append for b in buckets]
        record = None
        try:
            for record in batch:
                key = key_fn(record)
                data = key.encode("utf-8", "surrogatepass") if type(key) is str else stable_key_bytes(key)
                # key_group_of, inlined: this runs once per record on every keyed exchange.
                appends[route[((crc32(data) * GOLDEN) & 0xFFFFFFFF) * maxp >> 32]](record)
        except Exception as exc:
            raise UserFunctionError("key_by", record, exc) from exc

    def _route_remembered(self, batch: list[Any], buckets: list[list[Any]], routes: dict[Any, int]) -> None:
        appends = [b.append for b in buckets]
        key_fn = self.key_fn
        assert key_fn is not None
        try:
            # Every key of the batch remembered (the usual case once the cache is warm): a subscript
            # and nothing else per record, about 15 % cheaper than ``get`` and a test for a miss.
            if self._itself:
                for record in batch:
                    appends[routes[record]](record)
            else:
                for record in batch:
                    appends[routes[key_fn(record)]](record)
            return
        except Exception:  # noqa: BLE001 - a miss, an unhashable key or a failing key function
            pass
        # Every record before the one that stopped the loop is in a bucket (a record is appended
        # after its lookup): the careful loop goes on from there and names a failure as key_by's.
        self._route_learning(islice(batch, sum(map(len, buckets)), None), len(batch), appends, routes)

    def _route_learning(self, records: Iterable[Any], size: int, appends: list[Callable[[Any], None]],
                        routes: dict[Any, int]) -> None:
        key_fn = self.key_fn
        assert key_fn is not None
        route = self._route
        maxp = self._maxp
        remembered = routes.get
        room = ROUTE_CACHE_KEYS - len(routes)
        missed = 0
        record = None
        try:
            for record in records:
                key = key_fn(record)
                try:
                    target = remembered(key)
                except TypeError:  # unhashable: the hash below refuses it with the rules' message
                    target = None
                if target is None:
                    missed += 1
                    data = key.encode("utf-8", "surrogatepass") if type(key) is str else stable_key_bytes(key)
                    target = route[((crc32(data) * GOLDEN) & 0xFFFFFFFF) * maxp >> 32]
                    if room > 0:
                        routes[key] = target
                        room -= 1
                appends[target](record)
        except Exception as exc:
            raise UserFunctionError("key_by", record, exc) from exc
        if room <= 0 and 2 * missed > size:
            self._routes = None

    def broadcast(self, event: Any) -> None:
        for gate, ch in self.targets:
            gate.put(ch, event, self._cancelled)

    def has_room(self) -> bool:
        return all(gate.has_room(ch) for gate, ch in self.targets)

    def broadcast_priority(self, barrier: Any) -> None:
        for gate, ch in self.targets:
            gate.put_priority(ch, barrier)


class Output:
    """All edges out of a task. Batches larger than ``batch_size`` (a flat_map multiplies records)
    are cut, so that a channel's capacity bounds the records queued before a barrier."""

    def __init__(self, edges: list[OutputEdge], batch_size: int = 2048) -> None:
        self.edges = edges
        self.batch_size = batch_size

    def emit(self, batch: list[Any]) -> None:
        size = self.batch_size
        if len(batch) > size:
            for start in range(0, len(batch), size):
                self.emit(batch[start : start + size])
            return
        for edge in self.edges:
            edge.emit(batch)

    def broadcast(self, event: Any) -> None:
        for edge in self.edges:
            edge.broadcast(event)

    def has_room(self) -> bool:
        """Whether emitting now would not wait on a full channel (a hint)."""
        return all(edge.has_room() for edge in self.edges)

    def broadcast_barrier(self, barrier: Any) -> None:
        """A barrier in order behind the data, or ahead of it when it is unaligned."""
        for edge in self.edges:
            if barrier.unaligned:
                edge.broadcast_priority(barrier)
            else:
                edge.broadcast(barrier)
