"""The window operator (``KeyedStream.window(...)``).

``WindowOperator`` keeps, per key, the accumulator of each open window in the keyed state backend
(map state ``WINDOWS_STATE``; count windows: value state ``COUNT_STATE``) and one event-time timer
per window end (``flowstate.operators.timers``), so windows, their contents and their timers are in
every checkpoint and follow their key on a rescale. Session windows: ``flowstate.operators.
session_windows``; what a window emits and how it folds records: ``flowstate.operators.
window_functions``; timestamps, watermarks and late records: ``flowstate.operators.timestamps``.

Order of a batch (the watermark only changes between batches, so the records that arrive between
two watermarks are grouped per (key, window) first and each group touches the backend once):

Step 1: assign each record its windows; a record whose every window was cleared is late
        (``flowstate.time.windows`` rule 1). A batch whose timestamps all fall in the same windows
        (the smallest and the largest timestamp are assigned the same ones) is assigned once.
Step 2: fold each group into a fresh accumulator. Tumbling and sliding windows keep these
        *pending* accumulators in memory, per window and key (counting: one ``Counter`` per window,
        updated with the batch's keys in one call), until the watermark closes their window, a
        snapshot, or ``PENDING_LIMIT`` (``_flush``), which merges each into the stored one; a window
        whose end the watermark already passed skips the wait (it fires again at once, Step 3).
        Session windows keep the pending records of each key (``session_windows``).
Step 3: register the timer of the window's end (and of its cleanup, with allowed lateness) when the
        window is first stored; a window whose end the watermark already passed fires again at once
        with its new contents.

On a watermark (Step 4, ``on_watermark``), first the pending windows it closes are settled under the
old watermark. With no allowed lateness and no ``early_every`` they fire straight from memory: a
(key, window) with a stored part (a timer at its end: a stored window and its timers are created and
removed together) takes it out of the backend with its timer and merges it first; each window fires
after the timers due up to its end, its keys in the order they first came since the last flush.
Otherwise they are merged into their stored parts. Then the due timers fire in timestamp order: a
timer at a window's end emits the window; a timer at its end + allowed lateness clears it (the same
timer when there is no lateness). A snapshot flushes every pending accumulator first, so the checkpoint holds
every window as its records up to the barrier made it.

Early results (``window(..., early_every=T)`` or ``early_count=N``; Flink's continuous processing
time trigger and count trigger, firing without purging): a window that is still open emits its
contents so far as an ``EarlyWindowResult`` (``process``: its function is called with the records so
far), and emits its final result as always when the watermark passes its end.

- ``early_count=N`` (tumbling and sliding windows): the records of a (key, window) are folded one by
  one in arrival order, and every N-th fires the window early; the records since the last early
  firing are counted in keyed state (``EARLY_COUNT_STATE``), so the count is in the checkpoint and
  the early results of a key do not depend on batching, restores or the parallelism.
- ``early_every=T`` (every time window kind): every T of processing time, the windows of the keys
  that received records since the last early firing fire early. Which results are early therefore
  depends on processing time: they are updates, the final result is the answer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any

from flowstate.aggregates import Count
from flowstate.clock import SystemClock
from flowstate.errors import UserFunctionError
from flowstate.operators.base import OperatorEnv, _Keyed
from flowstate.operators.session_windows import SessionWindowing
from flowstate.operators.timers import TimerService, to_seconds
from flowstate.operators.timestamps import LateRecord, SelectOperator, TimestampsOperator
from flowstate.operators.window_functions import (
    MISSING,
    PENDING_LIMIT,
    EarlyWindowResult,
    Groups,
    Reducer,
    Window,
    WindowResult,
    new_result,
)
from flowstate.time.watermarks import MAX_WATERMARK, MIN_WATERMARK, Watermark
from flowstate.time.windows import CountWindow, TimeWindow

__all__ = ["EarlyWindowResult", "LateRecord", "SelectOperator", "TimestampsOperator", "WindowOperator",
           "WindowResult"]

WINDOWS_STATE = "__windows__"
COUNT_STATE = "__count_windows__"
EARLY_COUNT_STATE = "__early_counts__"
_EVENT = 0
_NUMBERS = frozenset((float, int))


def _end(window: Window) -> float:
    return window[1]



class WindowOperator(SessionWindowing, _Keyed):
    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any], node: Any) -> None:
        super().__init__(uid, name, env, key_fn)
        extra = node.extra
        self.assigner = extra["assigner"]
        self.timestamp_fn = extra.get("timestamp_fn")
        self.lateness = float(extra.get("allowed_lateness") or 0.0)
        self.emit_late = bool(extra.get("late"))
        self.reducer = Reducer(extra["function_kind"], node.fn)
        # Counting is common enough to be folded without a call per record (Step 2).
        self.counting_records = extra["function_kind"] == "aggregate" and type(node.fn) is Count
        self.watermark = MIN_WATERMARK
        self.late_dropped = 0
        self.clock = env.clock or SystemClock()
        self._pending: Groups = {}
        """Step 2: accumulators of windows not yet merged into the backend (ends above the watermark);
        counting: a ``Counter`` per window."""
        self._pending_sessions: dict[Any, list[tuple[float, Any]]] = {}
        """The same for session windows: key -> (timestamp, record) in arrival order."""
        self._pending_earliest: dict[Any, float] = {}
        self.early_count: int | None = extra.get("early_count")
        self.early_every: float | None = extra.get("early_every")
        self.wants_ticks = self.early_every is not None
        self._next_early = -math.inf
        self._touched: dict[Any, None] = {}
        """``early_every``: the keys whose windows changed since the last early firing (in order)."""
        self._from_memory = not self.lateness and self.early_every is None
        """Step 4: whether a closed window with nothing stored fires straight from memory."""

    def open(self, resume_state: Any) -> None:
        super().open(resume_state)
        backend = self.backend
        if self.assigner.counting:
            self.counts = backend.value_state(COUNT_STATE)
        else:
            self.windows = backend.map_state(WINDOWS_STATE)
            self.timers = TimerService(backend, self.clock)
            if self.early_count is not None:
                self.early_counts = backend.map_state(EARLY_COUNT_STATE)
        self._next_early = self.clock.monotonic() + (self.early_every or 0.0)

    # ---- records ----------------------------------------------------------------------------------

    def process_batch(self, batch: list[Any]) -> list[Any]:
        self.backend.maybe_fold()
        out: list[Any] = []
        record = None
        try:
            if self.assigner.counting:
                self._count_batch(batch, out)
            elif self.assigner.merging:
                self._session_batch(batch, out)
            elif self.early_count is not None:
                self._time_batch_early_count(batch, out)
            elif self.counting_records:
                self._count_time_batch(batch, out)
            else:
                self._time_batch(batch, out)
        except UserFunctionError:
            raise
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out

    def _late(self, records: list[Any], out: list[Any]) -> None:
        if self.emit_late:
            out.extend(LateRecord(r) for r in records)
        else:
            self.late_dropped += len(records)

    def _time_batch(self, batch: list[Any], out: list[Any]) -> None:
        """Steps 1-3 for tumbling and sliding windows."""
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        reducer = self.reducer
        first, add = reducer.first, reducer.add
        lateness = self.lateness
        wm = self.watermark
        local: Groups = {}
        late: list[Any] = []
        assigner = self.assigner
        tumbling = not hasattr(assigner, "slide")
        size, offset = assigner.size, assigner.offset
        record = None
        try:
            for record in batch:
                key = key_fn(record)
                ts = ts_fn(record)
                if type(ts) is not float:
                    ts = to_seconds(ts)
                if tumbling:
                    start = ts - (ts - offset) % size
                    windows: Any = ((start, start + size),)
                else:
                    windows = assigner.assign(ts)
                placed = False
                for window in windows:
                    end = window[1]
                    if end + lateness <= wm:
                        continue
                    placed = True
                    w = (window[0], end)
                    accs = local.get(w)
                    if accs is None:
                        local[w] = {key: first(record)}
                    else:
                        acc = accs.get(key, MISSING)
                        accs[key] = first(record) if acc is MISSING else add(acc, record)
                if not placed:
                    late.append(record)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        self._buffer(local, out)
        if late:
            self._late(late, out)

    def _buffer(self, local: Groups, out: list[Any]) -> None:
        """Step 2: pending until the next flush, unless the window already fired."""
        wm = self.watermark
        pending = self._pending
        merge = self.reducer.merge
        now: list[tuple[Window, dict[Any, Any]]] = []
        for window, accs in local.items():
            if window[1] <= wm:
                now.append((window, accs))
                continue
            waiting = pending.get(window)
            if waiting is None:
                pending[window] = accs
                continue
            for key, acc in accs.items():
                old = waiting.get(key, MISSING)
                waiting[key] = acc if old is MISSING else merge(old, acc)
        if now:
            self._store(now, out)
        self._limit()

    def _limit(self) -> None:
        if sum(map(len, self._pending.values())) > PENDING_LIMIT:
            self._flush()

    def _count_time_batch(self, batch: list[Any], out: list[Any]) -> None:
        """``_time_batch`` for ``aggregate(count())`` over tumbling or sliding windows: the same steps,
        counting. A batch whose timestamps are numbers (not NaN) that all fall in the same windows is
        counted with one ``Counter.update`` per window; any other batch record by record."""
        try:
            stamps = list(map(self.timestamp_fn, batch))
            keys = list(map(self.key_fn, batch))
        except Exception:  # noqa: BLE001 - found again record by record, to name the record
            self._count_time_slowly(batch, out)
            return
        if not stamps:
            return
        assigner = self.assigner
        total = sum(stamps) if set(map(type, stamps)) <= _NUMBERS else math.nan
        windows = assigner.assign(min(stamps)) if total - total == 0.0 else None  # NaN or inf: not here
        if windows is None or windows != assigner.assign(max(stamps)):
            self._count_time_slowly(batch, out)
            return
        wm = self.watermark
        lateness = self.lateness
        pending = self._pending
        fired: list[tuple[Window, dict[Any, Any]]] = []
        placed = False
        for start, end in windows:
            if end + lateness <= wm:
                continue
            placed = True
            if end <= wm:
                fired.append(((start, end), Counter(keys)))
                continue
            counter = pending.get((start, end))
            try:
                if counter is None:
                    pending[(start, end)] = Counter(keys)
                else:
                    counter.update(keys)
            except TypeError:  # an unhashable key: named by the slow loop (the operator fails anyway)
                self._count_time_slowly(batch, out)
                return
        if fired:
            self._store(fired, out)
        if not placed:
            self._late(batch, out)
        self._limit()

    def _count_time_slowly(self, batch: list[Any], out: list[Any]) -> None:
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        assigner = self.assigner
        tumbling = not hasattr(assigner, "slide")
        size, offset = assigner.size, assigner.offset
        lateness = self.lateness
        wm = self.watermark
        pending = self._pending
        fired: Groups = {}
        late: list[Any] = []
        record = None
        try:
            for record in batch:
                key = key_fn(record)
                ts = ts_fn(record)
                if type(ts) is not float:
                    ts = to_seconds(ts)
                if tumbling:
                    start = ts - (ts - offset) % size
                    windows: Any = ((start, start + size),)
                else:
                    windows = assigner.assign(ts)
                placed = False
                for window in windows:
                    end = window[1]
                    if end + lateness <= wm:
                        continue
                    placed = True
                    target = pending if end > wm else fired
                    w = (window[0], end)
                    counter = target.get(w)
                    if counter is None:
                        target[w] = Counter((key,))
                    else:
                        counter[key] = counter.get(key, 0) + 1
                if not placed:
                    late.append(record)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        if fired:
            self._store(fired.items(), out)
        if late:
            self._late(late, out)
        self._limit()

    def _flush(self) -> None:
        """Merge every pending accumulator into the backend (before a snapshot, an early firing, at
        ``PENDING_LIMIT``): none of them emits, their windows' ends being above the watermark."""
        emitted: list[Any] = []
        if self._pending:
            pending, self._pending = self._pending, {}
            self._store(pending.items(), emitted)
        if self._pending_sessions:
            sessions, self._pending_sessions = self._pending_sessions, {}
            self._pending_earliest = {}
            self._sweep_sessions(sessions)
        assert not emitted, "a pending window had already fired"

    def snapshot(self, checkpoint_id: int) -> Any:
        self._flush()
        return super().snapshot(checkpoint_id)

    def _store(self, groups: Iterable[tuple[Window, dict[Any, Any]]], out: list[Any]) -> None:
        """Steps 2-3; windows are stored as plain ``(start, end)`` tuples (the same on every backend)."""
        keys = self.backend.keys
        windows = self.windows
        get, put = windows.get, windows.put
        merge = self.reducer.merge
        emit = self.reducer.emit
        register = self.timers.register
        lateness = self.lateness
        wm = self.watermark
        touched = self._touched if self.early_every is not None else None
        for window, accs in groups:
            end = window[1]
            closed = end <= wm
            for key, acc in accs.items():
                keys.current_key = key
                stored = get(window, MISSING)
                if touched is not None and not closed:
                    touched[key] = None
                if stored is not MISSING:
                    # A stored window has its timers: they are created and removed together.
                    acc = merge(stored, acc)
                    put(window, acc)
                    if closed:
                        out.extend(emit(key, TimeWindow(*window), acc))
                    continue
                put(window, acc)
                if not closed:
                    register(_EVENT, end)
                else:
                    out.extend(emit(key, TimeWindow(*window), acc))  # a late firing, within the lateness
                if lateness:
                    register(_EVENT, end + lateness)

    def _time_batch_early_count(self, batch: list[Any], out: list[Any]) -> None:
        """Steps 1-3 with ``early_count``: the records of each (key, window) of the batch are folded
        one by one, in arrival order, so that every N-th record of the window (counted across
        batches in ``EARLY_COUNT_STATE``) fires it early with exactly the records up to it."""
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        assigner = self.assigner
        lateness = self.lateness
        wm = self.watermark
        groups: dict[tuple[Any, tuple[float, float]], list[Any]] = {}
        late: list[Any] = []
        record = None
        try:
            for record in batch:
                key = key_fn(record)
                ts = ts_fn(record)
                if type(ts) is not float:
                    ts = to_seconds(ts)
                placed = False
                for window in assigner.assign(ts):
                    if window[1] + lateness <= wm:
                        continue
                    placed = True
                    group = (key, (window[0], window[1]))
                    records = groups.get(group)
                    if records is None:
                        groups[group] = [record]
                    else:
                        records.append(record)
                if not placed:
                    late.append(record)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        reducer = self.reducer
        first, add, merge, emit_early = reducer.first, reducer.add, reducer.merge, reducer.emit_early
        every = self.early_count
        assert every is not None
        keys = self.backend.keys
        windows = self.windows
        counts = self.early_counts
        local: Groups = {}
        for group, records in groups.items():
            key, window = group
            keys.current_key = key
            stored = windows.get(window, MISSING)
            seen = counts.get(window) or 0
            done: Any = MISSING  # the records up to the last early firing: never changed again
            acc: Any = MISSING  # the records after it (made here: add may change it)
            for record in records:
                acc = first(record) if acc is MISSING else add(acc, record)
                seen += 1
                if seen == every:
                    seen = 0
                    done = acc if done is MISSING else merge(done, acc)
                    acc = MISSING
                    if window[1] > wm:  # an open window; a closed one has its late firing in _store
                        out.extend(emit_early(key, TimeWindow(*window),
                                              done if stored is MISSING else merge(stored, done)))
            counts.put(window, seen)
            accs = local.get(window)
            if accs is None:
                accs = local[window] = {}
            accs[key] = done if acc is MISSING else acc if done is MISSING else merge(done, acc)
        self._store(local.items(), out)
        if late:
            self._late(late, out)

    def on_tick(self, now: float) -> tuple[list[Any], Watermark | None]:
        """``early_every``: the windows of every key touched since the last early firing fire early
        (the pending ones merged first), at most once per ``early_every`` of processing time."""
        every = self.early_every
        if every is None or now < self._next_early:
            return [], None
        self._next_early = now + every
        self._flush()
        if not self._touched:
            return [], None
        touched, self._touched = self._touched, {}
        keys = self.backend.keys
        windows = self.windows
        emit_early = self.reducer.emit_early
        wm = self.watermark
        out: list[Any] = []
        try:
            for key in touched:
                keys.current_key = key
                for w, acc in sorted(windows.items()):
                    if w[1] > wm:
                        out.extend(emit_early(key, TimeWindow(*w), acc))
        except Exception as exc:
            raise UserFunctionError(self.name, "<early firing>", exc) from exc
        return out, None

    def _count_batch(self, batch: list[Any], out: list[Any]) -> None:
        key_fn = self.key_fn
        by_key: dict[Any, list[Any]] = {}
        record = None
        try:
            for record in batch:
                key = key_fn(record)
                items = by_key.get(key)
                if items is None:
                    by_key[key] = [record]
                else:
                    items.append(record)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        n = self.assigner.n
        reducer = self.reducer
        keys = self.backend.keys
        counts = self.counts
        for key, records in by_key.items():
            keys.current_key = key
            number, count, stored = counts.value() or (0, 0, None)
            acc = stored
            fresh = False  # whether acc was created in this batch (and may be changed by add)
            for record in records:
                if count == 0:
                    acc, fresh = reducer.first(record), True
                elif fresh:
                    acc = reducer.add(acc, record)
                else:
                    acc, fresh = reducer.merge(acc, reducer.first(record)), True
                count += 1
                if count == n:
                    out.extend(reducer.emit(key, CountWindow(number * n, number * n + n), acc))
                    number, count, acc = number + 1, 0, None
            counts.update((number, count, acc))

    # ---- time -------------------------------------------------------------------------------------

    def on_watermark(self, event: Watermark) -> tuple[list[Any], Watermark | None]:
        if event.idle or event.timestamp <= self.watermark:
            return [], event
        wm = event.timestamp
        if self._pending_sessions:
            self._settle_sessions(wm)  # under the old watermark: pending sessions are all still open
        from_memory = self._settle(wm) if self._pending else []
        self.watermark = wm
        out: list[Any] = []
        try:
            if self.assigner.counting:
                if wm == MAX_WATERMARK:
                    self._flush_counts(out)
                return out, event
            for window, accs in from_memory:
                self._fire(window[1], out)  # the stored windows first, up to this end (Step 4)
                self._emit_from_memory(window, accs, out)
            self._fire(wm, out)
        except UserFunctionError:
            raise
        except Exception as exc:
            raise UserFunctionError(self.name, "<window firing>", exc) from exc
        return out, event

    def _settle(self, wm: float) -> list[tuple[Window, dict[Any, Any]]]:
        """Step 4, under the old watermark: the pending windows that ``wm`` closes leave memory, and
        are returned (by end) to fire from memory; a (key, window) with a stored part (a timer at its
        end) takes it out of the backend, with its timer, first. When windows may not fire from
        memory (allowed lateness, ``early_every``), they are merged into the backend instead."""
        pending = self._pending
        closing = sorted((w for w in pending if w[1] <= wm), key=_end)
        if not closing:
            return []
        if not self._from_memory:
            self._store([(w, pending.pop(w)) for w in closing], [])
            return []
        timers = self.timers
        has_timer = timers.has
        keys = self.backend.keys
        windows = self.windows
        merge = self.reducer.merge
        from_memory: list[tuple[Window, dict[Any, Any]]] = []
        for window in closing:
            accs = pending.pop(window)
            end = window[1]
            for key in [key for key in accs if has_timer(_EVENT, key, end)]:
                keys.current_key = key
                accs[key] = merge(windows.get(window), accs[key])
                windows.remove(window)
                timers.delete(_EVENT, end)
            from_memory.append((window, accs))
        return from_memory

    def _emit_from_memory(self, window: Window, accs: dict[Any, Any], out: list[Any]) -> None:
        time_window = TimeWindow(*window)
        if self.counting_records:  # a WindowResult per key, built without a call in Python
            out.extend(map(new_result, zip(accs, repeat(time_window), accs.values())))
            return
        emit = self.reducer.emit
        for key, acc in accs.items():
            out.extend(emit(key, time_window, acc))

    def _fire(self, wm: float, out: list[Any]) -> None:
        timers = self.timers
        windows = self.windows
        lateness = self.lateness
        emit = self.reducer.emit
        pop, remove = timers.pop, windows.remove
        while (got := pop(_EVENT, wm)) is not None:
            key, t = got
            for w, acc in list(windows.items()):  # a copy: windows are removed on the way
                end = w[1]
                if end == t:
                    out.extend(emit(key, TimeWindow(*w), acc))
                if end + lateness == t:
                    remove(w)
                    if self.early_count is not None:
                        self.early_counts.remove(w)

    def _flush_counts(self, out: list[Any]) -> None:
        """The last, incomplete count window of every key fires at the end of the input."""
        keys = self.backend.keys
        counts = self.counts
        n = self.assigner.n
        for key in sorted(self.backend.state_keys(COUNT_STATE), key=repr):
            keys.current_key = key
            number, count, acc = counts.value()
            if count:
                out.extend(self.reducer.emit(key, CountWindow(number * n, number * n + count), acc))
            counts.clear()
