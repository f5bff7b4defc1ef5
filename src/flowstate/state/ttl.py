"""State time-to-live: keyed state whose entries expire, in event time or in processing time.

``ctx.value_state("last", ttl="1h")`` (and ``list_state``, ``map_state``, ``reducing_state``) returns
a state of the usual API whose entries expire ``ttl`` after they were written (Flink's
``StateTtlConfig``). Rules:

1. **An entry** is the value of a key (value and reducing state), one element of a key's list (list
   state) or one map entry of a key (map state). Each carries its **expiry**, stored next to it in
   the operator's keyed backend as ``(value, expiry)``: it is in every checkpoint, restored with it
   and split by key group on a rescale like any other state, on the heap and on RocksDB alike.
2. **Access time** and **now.** In processing time both are ``clock.wall()`` of the injected clock.
   In event time the access time is the timestamp of the record being processed (in ``on_timer``,
   the timer's), and *now* is the later of the operator's watermark and that timestamp: for a stream
   in timestamp order an entry's visibility is then a function of the records alone, not of where
   the watermarks fell between them. Event-time ttl needs a stream with timestamps.
3. **Update type** (``TtlUpdate``): a write sets the expiry to ``access time + ttl``
   (``ON_CREATE_AND_WRITE``, the default); ``ON_READ_AND_WRITE`` also does on every read of a live
   entry. An expiry never moves back (``expiry_after``): an out-of-order record does not shorten the
   life of an entry a later record wrote.
4. **Visibility** is Flink's ``NeverReturnExpired``: an entry whose expiry is at or before *now* is
   invisible at once (``is_expired``): reads return the default, ``None``, or leave it out; the state
   behaves as if it was never written.
5. **Cleanup.** An in-memory ``ExpiryIndex`` per state (rebuilt from the backend when the state is
   created after a restore) orders the entries by expiry. ``TtlStates.cleanup()`` removes from the
   backend every entry whose expiry is at or before the **removal time** (the watermark in event
   time, which no later record can go below; the clock in processing time). The operator calls it
   before every batch, at every watermark and before the synchronous part of every snapshot: an
   expired entry is removed at the first of these after it expired, and **no checkpoint holds an
   entry that had expired at its barrier** (Flink's cleanup in full snapshot, made exact and applied
   to incremental snapshots too). The cost is the number of entries removed, plus a dict update
   per write (a heap push only for a new entry: ``ExpiryIndex``).
6. **Counts** (``TtlStates.counts``): live entries and expired entries not yet removed, per
   operator, reported with the task's counters at each snapshot
   (``flowstate_operator_state_entries_live`` / ``_expired``). List state counts a key as one entry
   (expired when its oldest element is).
7. **What does not change**: the rules of keys and values (``flowstate.state.values``), in particular
   that a snapshot is the state at its barrier whatever the task does with the objects reads return,
   and that a change in place to a value read is stored. A state cannot gain or lose ttl across a
   restore (its stored values would not be understood): give it a new name.

The pure parts (``expiry_after``, ``refreshes``, ``is_expired``, ``ExpiryIndex``, in
``flowstate.state.ttl_rules`` with the configuration and the clocks) take times as parameters and
never read a clock. The state objects are in ``flowstate.state.ttl_states``; this module holds
``TtlStates``, through which an operator creates, cleans up and counts them, and names them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowstate.state.api import ListState, MapState, ReducingState, ValueState
from flowstate.state.backend import KeyedStateBackend, StateError
from flowstate.state.ttl_rules import (
    Access,
    EventTtlClock,
    ExpiryIndex,
    ProcessingTtlClock,
    StateTtl,
    TtlClock,
    TtlTime,
    TtlUpdate,
    as_state_ttl,
    expiry_after,
    is_expired,
    refreshes,
)
from flowstate.state.ttl_states import (
    TtlListState,
    TtlMapState,
    TtlReducingState,
    TtlValueState,
    _Combine,
)

__all__ = [
    "Access", "AnyTtlState", "EventTtlClock", "ExpiryIndex", "ProcessingTtlClock", "StateTtl", "TtlClock",
    "TtlListState", "TtlMapState", "TtlReducingState", "TtlStates", "TtlTime", "TtlUpdate", "TtlValueState",
    "as_state_ttl", "expiry_after", "is_expired", "refreshes",
]

AnyTtlState = TtlValueState | TtlListState | TtlMapState | TtlReducingState


class TtlStates:
    """The ttl states of one keyed operator subtask: created through it, cleaned up and counted
    together (rules 5 and 6). ``clocks`` gives the clock of each ``TtlTime`` the operator supports
    (``None``: it has no such time, and a state asking for it is refused with ``why``)."""

    def __init__(self, backend: KeyedStateBackend, operator: str, processing: TtlClock,
                 event: TtlClock | None, no_event_time: str = "") -> None:
        self._backend = backend
        self._operator = operator
        self._clocks: dict[TtlTime, TtlClock | None] = {TtlTime.PROCESSING: processing, TtlTime.EVENT: event}
        self._no_event_time = no_event_time
        self._states: dict[str, AnyTtlState] = {}
        self._plain: set[str] = set()

    def plain(self, name: str) -> None:
        """Records that ``name`` is used without ttl (refused later with ttl, rule 7)."""
        if name in self._states:
            raise StateError(f"state {name!r} has a ttl; ask for it with the same ttl every time")
        self._plain.add(name)

    def _existing(self, name: str, kind: str, config: StateTtl) -> AnyTtlState | None:
        if name in self._plain:
            raise StateError(f"state {name!r} is used without a ttl; ask for it with the same ttl every time")
        state = self._states.get(name)
        if state is None:
            return None
        if state.kind != kind:
            raise StateError(f"state {name!r} is {state.kind} state; it cannot also be {kind} state")
        if state.config != config:
            raise StateError(f"state {name!r} was created with {state.config}; ask for it with the same ttl every time")
        return state

    def _clock(self, name: str, config: StateTtl) -> TtlClock:
        clock = self._clocks[config.time]
        if clock is None:
            raise StateError(f"operator {self._operator!r}: state {name!r} has an event-time ttl, "
                             f"but {self._no_event_time}")
        return clock

    def _add(self, name: str, state: AnyTtlState) -> AnyTtlState:
        state._rebuild(self._backend)
        self._states[name] = state
        return state

    def value_state(self, name: str, default: Any, config: StateTtl) -> ValueState[Any]:
        state = self._existing(name, "value", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.value_state(name, None)
        return self._add(name, TtlValueState(name, config, inner, self._backend.keys, self._clock(name, config),
                                             default))  # type: ignore[return-value]

    def list_state(self, name: str, config: StateTtl) -> ListState[Any]:
        state = self._existing(name, "list", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.list_state(name)
        return self._add(name, TtlListState(name, config, inner, self._backend.keys,
                                            self._clock(name, config)))  # type: ignore[return-value]

    def map_state(self, name: str, config: StateTtl) -> MapState[Any, Any]:
        state = self._existing(name, "map", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.map_state(name)
        return self._add(name, TtlMapState(name, config, inner, self._backend.keys,
                                           self._clock(name, config)))  # type: ignore[return-value]

    def reducing_state(self, name: str, reduce_fn: Callable[[Any, Any], Any], config: StateTtl) -> ReducingState[Any]:
        state = self._existing(name, "reducing", config)
        if state is not None:
            return state  # type: ignore[return-value]
        inner = self._backend.reducing_state(name, _Combine(reduce_fn))
        return self._add(name, TtlReducingState(name, config, inner, self._backend.keys,
                                                self._clock(name, config)))  # type: ignore[return-value]

    def cleanup(self) -> int:
        """Rule 5 for every ttl state; the number of entries removed. Cheap when nothing is due."""
        removed = 0
        for state in self._states.values():
            removed += state.cleanup()
        return removed

    def counts(self) -> tuple[int, int]:
        """Rule 6: ``(live, expired not yet removed)`` over every ttl state."""
        live = expired = 0
        for state in self._states.values():
            a, b = state.counts()
            live += a
            expired += b
        return live, expired

    def __bool__(self) -> bool:
        return bool(self._states)
