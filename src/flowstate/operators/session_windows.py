"""The session windows of a window operator (``flowstate.time.windows`` rule 4), in keyed state.

Rules:

1. A key's session windows are entries ``(start, end) -> accumulator`` of the operator's map state,
   each with an event-time timer at its end (and at its end + allowed lateness): merging two windows
   removes both with their timers and stores the merged one with its own.
2. A record whose own window ``[ts, ts + gap)`` ends after the watermark can neither be late nor
   fire a window at once, whatever it merges with: it waits in memory (pending, per key, in arrival
   order) until a snapshot, the end, or a watermark that may close its session: one that reaches
   the end of the window of the key's earliest pending record, or the end of a stored window of
   the key (a timer of the key is due). Each sweep merges a key's pending records into its stored
   windows in one go; sessions are unions of overlapping windows, so when a sweep happens changes
   no session, only how often the key's windows are read and rewritten.
3. A key with any other record in the batch takes the batch's records at once, in order, after its
   pending ones: the order in which a key's records meet decides what is late.
"""

from __future__ import annotations

from typing import Any

from flowstate.errors import UserFunctionError
from flowstate.operators.timers import to_seconds
from flowstate.operators.window_functions import MISSING, PENDING_LIMIT
from flowstate.time.windows import TimeWindow, merge_session

_EVENT = 0


def _start(span: tuple[Any, ...]) -> Any:
    return span[0]


class SessionWindowing:
    """The session part of ``WindowOperator`` (which provides every attribute used here)."""

    _pending_sessions: dict[Any, list[tuple[float, Any]]]
    _pending_earliest: dict[Any, float]
    """The smallest timestamp among each key's pending records."""
    name: str
    key_fn: Any
    timestamp_fn: Any
    assigner: Any
    reducer: Any
    lateness: float
    watermark: float
    backend: Any
    windows: Any
    timers: Any
    early_every: float | None
    _touched: dict[Any, None]
    _flush: Any
    """Merges everything pending into keyed state (``WindowOperator._flush``)."""
    _late: Any
    """Sends records to the late stream or counts them dropped (``WindowOperator._late``)."""

    def _session_batch(self, batch: list[Any], out: list[Any]) -> None:
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        gap = self.assigner.gap
        wm = self.watermark
        by_key: dict[Any, list[tuple[float, Any]]] = {}
        record = None
        try:
            for record in batch:
                key = key_fn(record)
                ts = ts_fn(record)
                if type(ts) is not float:
                    ts = to_seconds(ts)
                items = by_key.get(key)
                if items is None:
                    by_key[key] = [(ts, record)]
                else:
                    items.append((ts, record))
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        # Rules 2 and 3: a record whose own window [ts, ts + gap) ends after the watermark can
        # neither be late nor fire a window at once, whatever it merges with: it waits for the flush.
        # A key with any other record in the batch takes the batch's records at once, in order, after
        # its pending ones: the order in which a key's records meet decides what is late.
        pending = self._pending_sessions
        earliest = self._pending_earliest
        now: dict[Any, list[tuple[float, Any]]] = {}
        for key, items in by_key.items():
            lowest = min([ts for ts, _ in items])
            if lowest + gap > wm:
                waiting = pending.get(key)
                if waiting is None:
                    pending[key] = items
                    earliest[key] = lowest
                else:
                    waiting.extend(items)
                    if lowest < earliest[key]:
                        earliest[key] = lowest
            else:
                waiting = pending.pop(key, None)
                if waiting:
                    del earliest[key]
                    self._sweep_sessions({key: waiting})
                now[key] = items
        if now:
            self._sessions(now, out)
        if len(pending) > PENDING_LIMIT:
            self._flush()

    def _settle_sessions(self, wm: float) -> None:
        """Rule 2 at a watermark ``wm``, under the old one: the pending records of a key are swept
        into its stored windows when one of them may close at ``wm`` (the key's earliest pending
        record's window ends at or before ``wm``), or when a stored window of the key closes at
        ``wm`` (it has a timer due: the records may extend it); the others keep waiting, their
        sessions ending after ``wm`` whatever they merge with."""
        pending = self._pending_sessions
        earliest = self._pending_earliest
        gap = self.assigner.gap
        due = self.timers.keys_due(_EVENT, wm)
        sweep = {key: pending[key] for key, lowest in earliest.items() if lowest + gap <= wm or key in due}
        for key in sweep:
            del pending[key]
            del earliest[key]
        if sweep:
            self._sweep_sessions(sweep)

    def _sweep_sessions(self, by_key: dict[Any, list[tuple[float, Any]]]) -> None:
        """The flush of pending session records: per key, the stored windows and a window
        ``[ts, ts + gap)`` per record are sorted by start and swept once, joining those that overlap
        or touch (``flowstate.time.windows`` rule 4). Every record here ends after the watermark,
        so none is late and no window fires."""
        gap = self.assigner.gap
        reducer = self.reducer
        first, add, merge = reducer.first, reducer.add, reducer.merge
        lateness = self.lateness
        keys = self.backend.keys
        windows = self.windows
        timers = self.timers
        for key, items in by_key.items():
            keys.current_key = key
            # (start, end, stored window or None, accumulator or record)
            spans: list[tuple[float, float, tuple[float, float] | None, Any]] = [
                (w[0], w[1], (w[0], w[1]), acc) for w, acc in windows.items()]
            spans += [(ts, ts + gap, None, record) for ts, record in items]
            spans.sort(key=_start)
            groups: list[list[Any]] = []
            for start, end, stored, payload in spans:
                if groups and start <= groups[-1][1]:
                    group = groups[-1]
                    if end > group[1]:
                        group[1] = end
                    group[2].append((stored, payload))
                else:
                    groups.append([start, end, [(stored, payload)]])
            for start, end, members in groups:
                if all(stored is not None for stored, _ in members):
                    continue  # a stored window that no record joined
                acc: Any = MISSING
                fresh = False  # whether acc was made here (add may change it) or is a stored one
                for stored, payload in members:
                    if stored is not None:
                        acc, fresh = (payload, False) if acc is MISSING else (merge(acc, payload), True)
                    elif acc is MISSING:
                        acc, fresh = first(payload), True
                    elif fresh:
                        acc = add(acc, payload)
                    else:
                        acc, fresh = merge(acc, first(payload)), True
                for stored, _ in members:
                    if stored is not None:
                        windows.remove(stored)
                        timers.delete(_EVENT, stored[1])
                        if lateness:
                            timers.delete(_EVENT, stored[1] + lateness)
                windows.put((start, end), acc)
                timers.register(_EVENT, end)
                if lateness:
                    timers.register(_EVENT, end + lateness)
                if self.early_every is not None:
                    self._touched[key] = None

    def _sessions(self, by_key: dict[Any, list[tuple[float, Any]]], out: list[Any]) -> None:
        """Merge each key's records into its session windows in state (Steps 1-3)."""
        gap = self.assigner.gap
        reducer = self.reducer
        lateness = self.lateness
        wm = self.watermark
        keys = self.backend.keys
        windows = self.windows
        timers = self.timers
        late: list[Any] = []
        for key, items in by_key.items():
            keys.current_key = key
            current: dict[TimeWindow, Any] = {TimeWindow(*w): acc for w, acc in windows.items()}
            before = set(current)
            changed: set[TimeWindow] = set()
            for ts, record in items:
                merged, absorbed = merge_session(list(current), TimeWindow(ts, ts + gap))
                if merged.end + lateness <= wm:
                    late.append(record)
                    continue
                acc = reducer.first(record)
                for window in absorbed:
                    acc = reducer.merge(current.pop(window), acc)
                    changed.discard(window)
                current[merged] = acc
                changed.add(merged)
            for window in before - set(current):
                windows.remove(tuple(window))
                timers.delete(_EVENT, window.end)
                if lateness:
                    timers.delete(_EVENT, window.end + lateness)
            for window in changed:
                acc = current[window]
                windows.put(tuple(window), acc)
                if window.end > wm:
                    timers.register(_EVENT, window.end)
                    if self.early_every is not None:
                        self._touched[key] = None
                else:
                    out.extend(reducer.emit(key, window, acc))
                if lateness:
                    timers.register(_EVENT, window.end + lateness)
        if late:
            self._late(late, out)
