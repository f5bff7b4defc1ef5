"""User functions and the context they run in.

Lifecycle contract of a ``ProcessFunction`` (and ``KeyedProcessFunction``): each parallel subtask
gets its **own copy** of the function object; ``open(ctx)`` is called once before the first record
(after state was restored), ``process(value, ctx)`` once per record, ``close()`` once at the end.
``process`` yields its output records, or returns a list of them or ``None``; a ``str``,
``bytes``, ``dict`` or ``tuple`` returned is refused, since iterating it would emit its elements as
separate records (``flowstate.operators.base``).

The copy is ``copy.deepcopy`` of the function as the job built it, so everything the function
holds before ``open`` must be copyable: create connections, clients, locks, files and threads in
``open(ctx)``. A function that cannot be copied is refused when the job is built (``copy_for_subtask``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from datetime import timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from flowstate.errors import GraphError
from flowstate.state.api import (
    KeyContext,
    ListState,
    MapState,
    ReducingState,
    ValueState,
)
from flowstate.state.backend import KeyedStateBackend
from flowstate.state.ttl import StateTtl, TtlStates, TtlTime, TtlUpdate, as_state_ttl

IN = TypeVar("IN")
OUT = TypeVar("OUT")
V = TypeVar("V")

TtlArg = StateTtl | float | str | timedelta | None
"""A state's ``ttl=``: a ``StateTtl``, or a duration (seconds, ``"30m"``, ``timedelta``)."""


class RuntimeContext:
    """What a function can see of the runtime: its subtask, and keyed state if its input is keyed.

    Every state takes ``ttl=`` (``flowstate.state.ttl``): a duration after which an entry expires,
    with ``ttl_time="processing"`` (the default) or ``"event"`` and ``ttl_update="on_create_and_write"``
    (the default) or ``"on_read_and_write"``; or a ``StateTtl``. A state asked for again must be
    asked for with the same ttl."""

    __slots__ = ("operator", "subtask_index", "parallelism", "_backend", "_keys", "_ttl")

    def __init__(self, operator: str, subtask_index: int, parallelism: int, backend: KeyedStateBackend | None,
                 ttl: TtlStates | None = None) -> None:
        self.operator = operator
        self.subtask_index = subtask_index
        self.parallelism = parallelism
        self._backend = backend
        self._keys: KeyContext = backend.keys if backend is not None else KeyContext()
        self._ttl = ttl

    @property
    def current_key(self) -> Any:
        """The key of the record being processed (keyed streams only)."""
        return self._keys.current_key

    def _state_backend(self, what: str) -> KeyedStateBackend:
        if self._backend is None:
            raise GraphError(
                f"operator {self.operator!r} asked for {what}, but its input is not keyed: "
                "call key_by(...) before process(...)"
            )
        return self._backend

    def _ttl_of(self, name: str, ttl: TtlArg, ttl_time: TtlTime | str | None,
                ttl_update: TtlUpdate | str | None) -> StateTtl | None:
        try:
            config = as_state_ttl(ttl, ttl_time, ttl_update)
        except ValueError as exc:
            raise GraphError(f"operator {self.operator!r}, state {name!r}: {exc}") from None
        if self._ttl is None:
            if config is not None:
                raise GraphError(f"operator {self.operator!r}: state {name!r} asks for a ttl, which only the "
                                 "state of a keyed process function can have")
            return None
        if config is None:
            self._ttl.plain(name)
        return config

    def value_state(self, name: str, default: Any = None, *, ttl: TtlArg = None,
                    ttl_time: TtlTime | str | None = None, ttl_update: TtlUpdate | str | None = None) -> ValueState[Any]:
        """The value state ``name`` of the current key; ``value()`` is ``default`` for a key without one.
        The type of a state's values is the function's to declare, on the attribute that keeps it:
        ``self.count: ValueState[int] = ctx.value_state("count", 0)`` (likewise for the other kinds)."""
        backend = self._state_backend(f"value state {name!r}")
        config = self._ttl_of(name, ttl, ttl_time, ttl_update)
        if config is None:
            return backend.value_state(name, default)
        return self._ttl.value_state(name, default, config)  # type: ignore[union-attr]

    def list_state(self, name: str, *, ttl: TtlArg = None, ttl_time: TtlTime | str | None = None,
                   ttl_update: TtlUpdate | str | None = None) -> ListState[Any]:
        """The list state ``name`` of the current key."""
        backend = self._state_backend(f"list state {name!r}")
        config = self._ttl_of(name, ttl, ttl_time, ttl_update)
        if config is None:
            return backend.list_state(name)
        return self._ttl.list_state(name, config)  # type: ignore[union-attr]

    def map_state(self, name: str, *, ttl: TtlArg = None, ttl_time: TtlTime | str | None = None,
                  ttl_update: TtlUpdate | str | None = None) -> MapState[Any, Any]:
        """The map state ``name`` of the current key."""
        backend = self._state_backend(f"map state {name!r}")
        config = self._ttl_of(name, ttl, ttl_time, ttl_update)
        if config is None:
            return backend.map_state(name)
        return self._ttl.map_state(name, config)  # type: ignore[union-attr]

    def reducing_state(self, name: str, reduce_fn: Callable[[V, V], V], *, ttl: TtlArg = None,
                       ttl_time: TtlTime | str | None = None,
                       ttl_update: TtlUpdate | str | None = None) -> ReducingState[V]:
        """The reducing state ``name`` of the current key: ``add(v)`` stores ``reduce_fn(old, v)``."""
        if not callable(reduce_fn):
            raise GraphError(f"operator {self.operator!r}: the reduce function of state {name!r} is not callable")
        backend = self._state_backend(f"reducing state {name!r}")
        config = self._ttl_of(name, ttl, ttl_time, ttl_update)
        if config is None:
            return backend.reducing_state(name, reduce_fn)
        return self._ttl.reducing_state(name, reduce_fn, config)  # type: ignore[union-attr]


class ProcessFunction(Generic[IN, OUT]):
    """A function over every record (``IN``) of a stream, emitting ``OUT`` records, with a lifecycle."""

    def open(self, ctx: RuntimeContext) -> None:
        """Called once per subtask before the first record."""

    def process(self, value: IN, ctx: RuntimeContext) -> Iterable[OUT] | None:
        """The output records of one input record: yield them, or return a list of them or ``None``."""
        raise NotImplementedError(f"{type(self).__name__} must implement process(value, ctx)")

    def close(self) -> None:
        """Called once per subtask after the last record (or when the task is cancelled)."""


class TimeDomain(StrEnum):
    """Which clock fired a timer (``ctx.timer_domain`` in ``on_timer``)."""

    EVENT_TIME = "event_time"
    PROCESSING_TIME = "processing_time"


class KeyedProcessFunction(ProcessFunction[IN, OUT]):
    """A process function over a keyed stream: it may use keyed state through ``ctx``.

    On a stream with timestamps (``assign_timestamps``), ``ctx.timestamp`` is the record's
    timestamp. ``ctx.timers.register_event_time(t)`` / ``register_processing_time(t)`` (and
    ``delete_*``) set a timer for the current key; a key has at most one timer per timestamp and
    clock. ``on_timer(timestamp, ctx)`` runs when it fires, with ``ctx.key`` set,
    ``ctx.timer_domain`` saying which clock fired and keyed state available; it returns output
    records as ``process`` does. Timers are keyed state: they are in every checkpoint, restored, and
    follow their key on a rescale."""

    def on_timer(self, timestamp: float, ctx: RuntimeContext) -> Iterable[OUT] | None:
        """Called when a timer of ``ctx.key`` fires (event time: once the watermark reaches
        ``timestamp``; processing time: once the clock does)."""
        return None


def copy_for_subtask(fn: ProcessFunction[IN, OUT], operator: str) -> ProcessFunction[IN, OUT]:
    """The copy of ``fn`` that one subtask of ``operator`` owns. Raises ``GraphError`` naming the
    operator when ``fn`` cannot be copied (it holds a lock, a socket, an open file, …)."""
    try:
        return copy.deepcopy(fn)
    except Exception as exc:  # noqa: BLE001 - whatever deepcopy raises, the cause is in the message
        raise GraphError(
            f"process {operator!r}: {type(fn).__name__} cannot be copied for each subtask "
            f"({type(exc).__name__}: {exc}); create objects such as connections, clients, locks and "
            "open files in open(ctx), not in __init__"
        ) from exc
