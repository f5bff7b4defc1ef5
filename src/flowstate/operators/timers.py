"""Timers of keyed operators, kept in the keyed state backend.

Rules:

1. The timers of a key are one entry of the map state ``TIMERS_STATE`` of the operator's backend,
   ``(domain, timestamp) -> None``: keyed state like any other, so they are in the snapshot taken at
   the barrier, restored, and split by key group on a rescale, on the heap and on RocksDB alike.
2. An in-memory ``TimerQueue`` per clock domain indexes them; it is rebuilt from the backend when
   the operator opens after a restore (a restored timer that is already due fires at the first
   watermark or tick that reaches it: timers due during a restore fire after it).
3. A timer is removed from the backend when it fires or is deleted, before ``on_timer`` runs, so
   ``on_timer`` may register the same timer again.
4. Processing time is ``clock.wall()`` of the injected clock, never the system's own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flowstate.clock import Clock, SystemClock, wall_function
from flowstate.errors import UserFunctionError
from flowstate.functions import KeyedProcessFunction, RuntimeContext, TimeDomain
from flowstate.operators.base import OperatorEnv, _Keyed
from flowstate.state.backend import KeyedStateBackend
from flowstate.state.ttl import EventTtlClock, ProcessingTtlClock, TtlStates
from flowstate.time.timers import TimerQueue
from flowstate.time.watermarks import MIN_WATERMARK, Watermark

TIMERS_STATE = "__timers__"
"""The reserved name of the map state that holds the timers of a keyed operator (rule 1)."""

_EVENT = 0
_PROCESSING = 1
_DOMAINS = (TimeDomain.EVENT_TIME, TimeDomain.PROCESSING_TIME)


def to_seconds(value: Any) -> float:
    """A timestamp as float seconds since the epoch: numbers as they are, aware datetimes converted."""
    t = type(value)
    if t is float:
        return value
    if t is int:
        return float(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value!r} is a naive datetime: give it a time zone")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"a timestamp must be seconds (int or float) or an aware datetime, got {value!r}")


class TimerService:
    """Rules 1-3 for one keyed operator subtask."""

    def __init__(self, backend: KeyedStateBackend, clock: Clock) -> None:
        self._backend = backend
        self._keys = backend.keys
        self._store = backend.map_state(TIMERS_STATE)
        self._queues = (TimerQueue(), TimerQueue())
        self.clock = clock
        for key in list(backend.state_keys(TIMERS_STATE)):
            self._keys.current_key = key
            for domain, ts in self._store.keys():
                self._queues[domain].add(key, ts)

    def register(self, domain: int, timestamp: float) -> None:
        key = self._keys.current_key
        if self._queues[domain].add(key, timestamp):
            self._store.put((domain, timestamp), None)

    def delete(self, domain: int, timestamp: float) -> None:
        if self._queues[domain].delete(self._keys.current_key, timestamp):
            self._store.remove((domain, timestamp))

    def has(self, domain: int, key: Any, timestamp: float) -> bool:
        """Whether ``key`` has a timer at ``timestamp`` (read from the index: no state access)."""
        return (key, timestamp) in self._queues[domain]

    def keys_due(self, domain: int, upto: float) -> set[Any]:
        """The keys that have a timer of ``domain`` at or before ``upto`` (from the index)."""
        return self._queues[domain].keys_due(upto)

    def pop(self, domain: int, upto: float) -> tuple[Any, float] | None:
        """The next due timer of ``domain``, removed (rule 3), with the current key set to its key."""
        got = self._queues[domain].pop_next(upto)
        if got is None:
            return None
        key, ts = got
        self._keys.current_key = key
        self._store.remove((domain, ts))
        return got

    def next_processing_time(self) -> float | None:
        return self._queues[_PROCESSING].peek()

    def count(self) -> int:
        return len(self._queues[0]) + len(self._queues[1])


class Timers:
    """``ctx.timers``: the timers of the current key."""

    __slots__ = ("_service", "_ctx")

    def __init__(self, service: TimerService, ctx: TimerContext) -> None:
        self._service = service
        self._ctx = ctx

    def register_event_time(self, timestamp: Any) -> None:
        self._service.register(_EVENT, to_seconds(timestamp))

    def register_processing_time(self, timestamp: Any) -> None:
        self._service.register(_PROCESSING, to_seconds(timestamp))

    def delete_event_time(self, timestamp: Any) -> None:
        self._service.delete(_EVENT, to_seconds(timestamp))

    def delete_processing_time(self, timestamp: Any) -> None:
        self._service.delete(_PROCESSING, to_seconds(timestamp))

    def current_watermark(self) -> float:
        return self._ctx.watermark

    def current_processing_time(self) -> float:
        return self._service.clock.wall()


class TimerContext(RuntimeContext):
    """The context of a keyed function with timers: ``timers``, ``timestamp`` (of the record, on a
    stream with timestamps; of the timer in ``on_timer``), ``key`` and ``timer_domain`` (in
    ``on_timer`` only; ``None`` in ``process``)."""

    __slots__ = ("timers", "timestamp", "timer_domain", "watermark")
    timers: Timers
    timestamp: float | None
    timer_domain: TimeDomain | None
    watermark: float

    @property
    def key(self) -> Any:
        return self._keys.current_key


class TimedKeyedProcessOperator(_Keyed):
    """A ``KeyedProcessFunction`` with timers and timestamps (rules 1-4). Built instead of the plain
    keyed process operator when the function defines ``on_timer`` or its stream has timestamps."""

    wants_ticks = True

    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any], fn: KeyedProcessFunction,
                 timestamp_fn: Callable[[Any], Any] | None) -> None:
        super().__init__(uid, name, env, key_fn)
        self.timestamp_fn = timestamp_fn
        self.fn = copy.deepcopy(fn)
        self.ctx = TimerContext(name, env.subtask, env.parallelism, self.backend)
        self.ttl = TtlStates(self.backend, name, ProcessingTtlClock(wall_function(env.clock or SystemClock())),
                             EventTtlClock(self.ctx) if timestamp_fn is not None else None,
                             "its stream has no timestamps: call assign_timestamps(...) before key_by(...), "
                             "or give the state ttl_time='processing'")
        self.ctx._ttl = self.ttl
        self.ctx.timestamp = None
        self.ctx.timer_domain = None
        self.ctx.watermark = MIN_WATERMARK
        self.service: TimerService | None = None

    def open(self, resume_state: Any) -> None:
        super().open(resume_state)
        self.service = TimerService(self.backend, self.env.clock or SystemClock())
        self.ctx.timers = Timers(self.service, self.ctx)
        try:
            self.fn.open(self.ctx)
        except Exception as exc:
            raise UserFunctionError(self.name, "<open>", exc) from exc

    def process_batch(self, batch: list[Any]) -> list[Any]:
        self.backend.maybe_fold()
        if self.ttl:
            self.ttl.cleanup()
        process = self.fn.process
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        keys = self.backend.keys
        ctx = self.ctx
        ctx.timer_domain = None
        out: list[Any] = []
        extend = out.extend
        record = None
        try:
            for record in batch:
                keys.current_key = key_fn(record)
                if ts_fn is not None:
                    ctx.timestamp = to_seconds(ts_fn(record))
                result = process(record, ctx)
                if result is not None:
                    extend(result)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out

    def _fire(self, domain: int, upto: float) -> list[Any]:
        service = self.service
        assert service is not None
        ctx = self.ctx
        on_timer = self.fn.on_timer
        out: list[Any] = []
        ctx.timer_domain = _DOMAINS[domain]
        try:
            while (got := service.pop(domain, upto)) is not None:
                ctx.timestamp = got[1]
                result = on_timer(got[1], ctx)
                if result is not None:
                    out.extend(result)
        except Exception as exc:
            raise UserFunctionError(self.name, f"<on_timer {got!r}>", exc) from exc
        finally:
            ctx.timer_domain = None
        return out

    def on_watermark(self, event: Watermark) -> tuple[list[Any], Watermark | None]:
        if event.idle or event.timestamp <= self.ctx.watermark:
            return [], event
        self.ctx.watermark = event.timestamp
        if self.ttl:
            self.ttl.cleanup()
        return self._fire(_EVENT, event.timestamp), event

    def on_tick(self, now: float) -> tuple[list[Any], Watermark | None]:
        service = self.service
        if service is None:
            return [], None
        if self.ttl:
            self.ttl.cleanup()
        due = service.next_processing_time()
        if due is None:
            return [], None
        wall = service.clock.wall()
        if due > wall:
            return [], None
        return self._fire(_PROCESSING, wall), None

    def close(self) -> None:
        try:
            self.fn.close()
        finally:
            super().close()


def has_on_timer(fn: Any) -> bool:
    """Whether ``fn`` defines its own ``on_timer``."""
    return type(fn).on_timer is not KeyedProcessFunction.on_timer
