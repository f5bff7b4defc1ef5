"""Runtime operators of event time: timestamp assignment, windows, and the selection of late records.

``TimestampsOperator`` (``Stream.assign_timestamps``) generates watermarks with
``flowstate.time.SplitWatermarks`` after every batch and on every tick (idleness), swallows the
watermarks that come from upstream except the final one, and keeps its generator's state in the
checkpoint, so that its watermark never goes backwards across a restore.

``WindowOperator`` (``KeyedStream.window(...)``) keeps, per key, the accumulator of each open window
in the keyed state backend (map state ``WINDOWS_STATE``; count windows: value state
``COUNT_STATE``) and one event-time timer per window end (``flowstate.operators.timers``), so windows,
their contents and their timers are in every checkpoint and follow their key on a rescale.

Order of a batch (the watermark only changes between batches, so the records that arrive between
two watermarks are grouped per (key, window) first and each group touches the backend once):

Step 1: assign each record its windows; a record whose every window was cleared is late
        (``flowstate.time.windows`` rule 1).
Step 2: fold each group into a fresh accumulator. Tumbling and sliding windows keep these
        *pending* accumulators in memory until the next watermark, snapshot or end (``_flush``),
        which merges each into the stored one; a window whose end the watermark already passed
        skips the wait (it fires again at once, Step 3), so a flush never emits anything. Session
        windows keep the pending records of each key, and merge them in one go at the flush.
Step 3: register the timer of the window's end (and of its cleanup, with allowed lateness); a
        window whose end the watermark already passed fires again at once with its new contents.

On a watermark, the due timers fire in timestamp order: a timer at a window's end emits the window;
a timer at its end + allowed lateness clears it (the same timer when there is no lateness).

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
from collections.abc import Callable, Collection
from typing import Any

from flowstate.aggregates import Count
from flowstate.clock import SystemClock
from flowstate.errors import UserFunctionError
from flowstate.operators.base import Operator, OperatorEnv, Ready, _Keyed
from flowstate.operators.timers import TimerService, to_seconds
from flowstate.time.watermarks import MAX_WATERMARK, MIN_WATERMARK, SplitWatermarks, Watermark
from flowstate.time.windows import CountWindow, TimeWindow, merge_session
from flowstate.windowed import EarlyWindowResult, WindowResult

WINDOWS_STATE = "__windows__"
COUNT_STATE = "__count_windows__"
EARLY_COUNT_STATE = "__early_counts__"
_EVENT = 0
_MISSING = object()
PENDING_LIMIT = 100_000
"""Pending groups (Step 2) above which a window operator flushes without waiting for a watermark."""
SUBTASK_SPLIT = "*"
"""The split of a generator that sees its records as one stream (records carry no split id)."""


class LateRecord:
    """A late record on its way to the late stream (``late_records()``)."""

    __slots__ = ("record",)

    def __init__(self, record: Any) -> None:
        self.record = record

    def __reduce__(self) -> tuple[Any, ...]:
        return (LateRecord, (self.record,))


# ---- timestamps -----------------------------------------------------------------------------------


class TimestampsOperator(Operator):
    stateful = True
    wants_ticks = True

    def __init__(self, uid: str, name: str, env: OperatorEnv, fn: Callable[[Any], Any],
                 out_of_orderness: float, idle_timeout: float | None, interval: float = 0.0) -> None:
        super().__init__(uid, name, env)
        self.fn = fn
        self.interval = interval
        self._next_emit = -math.inf
        self.out_of_orderness = out_of_orderness
        self.idle_timeout = idle_timeout
        self.clock = env.clock or SystemClock()
        self.generator = SplitWatermarks(out_of_orderness, idle_timeout)
        self.current_split = SUBTASK_SPLIT
        """The split the records of the next batch come from, when the source reader says
        (``SourceTask`` sets it; ``SUBTASK_SPLIT`` otherwise)."""

    def open(self, resume_state: Any) -> None:
        if resume_state:
            self.generator = SplitWatermarks(self.out_of_orderness, self.idle_timeout, resume_state)

    def process_batch(self, batch: list[Any]) -> list[Any]:
        if batch:
            try:
                highest = to_seconds(max(map(self.fn, batch)))  # numbers, or aware datetimes, compare
            except Exception:  # noqa: BLE001 - found again record by record, to name the record
                highest = self._highest_slowly(batch)
            self.generator.on_records(self.current_split, highest, self.clock.monotonic())
        return batch

    def _highest_slowly(self, batch: list[Any]) -> float:
        fn = self.fn
        record = None
        highest = -math.inf
        try:
            for record in batch:
                ts = to_seconds(fn(record))
                if ts > highest:
                    highest = ts
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return highest

    def retain_splits(self, splits: Collection[str]) -> None:
        self.generator.retain(splits)

    def start_split(self, split: str) -> None:
        self.generator.add_split(split, self.clock.monotonic())

    def finish_split(self, split: str) -> None:
        self.generator.finish(split)

    def on_watermark(self, event: Watermark) -> tuple[list[Any], Watermark | None]:
        # Watermarks from upstream are replaced by this operator's own, except the final one.
        return [], event if event.timestamp == MAX_WATERMARK and not event.idle else None

    def on_tick(self, now: float) -> tuple[list[Any], Watermark | None]:
        """At most one watermark per ``interval`` (Flink's periodic watermarks): the windows
        downstream group the records between two watermarks."""
        now = self.clock.monotonic()
        if now < self._next_emit:
            return [], None
        self._next_emit = now + self.interval
        return [], self.generator.current(now)

    def snapshot(self, checkpoint_id: int) -> Ready:
        return Ready(self.generator.snapshot())


# ---- windows --------------------------------------------------------------------------------------


class _Reducer:
    """How a window folds its records: ``first(record)``, ``add(acc, record)``, ``merge(a, b)``,
    ``emit(key, window, acc) -> records``. Accumulators are values: ``add`` may change only an
    accumulator created in the same batch, ``merge`` changes neither argument."""

    def __init__(self, kind: str, fn: Any) -> None:
        self.kind = kind
        if kind == "aggregate":
            create, add, merge, result = fn.create, fn.add, fn.merge, fn.result
            self.first = lambda record: add(create(), record)
            self.add = add
            self.merge = merge
            self.emit = lambda key, window, acc: [WindowResult(key, window, result(acc))]
            self.emit_early = lambda key, window, acc: [EarlyWindowResult(key, window, result(acc))]
        elif kind == "reduce":
            self.first = lambda record: record
            self.add = fn
            self.merge = fn
            self.emit = lambda key, window, acc: [WindowResult(key, window, acc)]
            self.emit_early = lambda key, window, acc: [EarlyWindowResult(key, window, acc)]
        elif kind == "process":
            self.first = lambda record: [record]
            self.add = _append
            self.merge = _concat
            self.emit = lambda key, window, acc: list(fn(key, window, acc) or ())
            self.emit_early = lambda key, window, acc: list(fn(key, window, list(acc)) or ())
        else:
            raise ValueError(f"unknown window function kind {kind!r}")


def _start(span: tuple[Any, ...]) -> Any:
    return span[0]


def _append(acc: list[Any], record: Any) -> list[Any]:
    acc.append(record)
    return acc


def _concat(a: list[Any], b: list[Any]) -> list[Any]:
    return a + b


class WindowOperator(_Keyed):
    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any], node: Any) -> None:
        super().__init__(uid, name, env, key_fn)
        extra = node.extra
        self.assigner = extra["assigner"]
        self.timestamp_fn = extra.get("timestamp_fn")
        self.lateness = float(extra.get("allowed_lateness") or 0.0)
        self.emit_late = bool(extra.get("late"))
        self.reducer = _Reducer(extra["function_kind"], node.fn)
        # Counting is common enough to be folded without a call per record (Step 2).
        self.counting_records = extra["function_kind"] == "aggregate" and type(node.fn) is Count
        self.watermark = MIN_WATERMARK
        self.late_dropped = 0
        self.clock = env.clock or SystemClock()
        self._pending: dict[tuple[Any, tuple[float, float]], Any] = {}
        """Step 2: accumulators of windows not yet merged into the backend (ends above the watermark)."""
        self._pending_counts: dict[tuple[Any, float], int] = {}
        """The same for counting over tumbling windows: (key, start) -> records."""
        self._pending_sessions: dict[Any, list[tuple[float, Any]]] = {}
        """The same for session windows: key -> (timestamp, record) in arrival order."""
        self.early_count: int | None = extra.get("early_count")
        self.early_every: float | None = extra.get("early_every")
        self.wants_ticks = self.early_every is not None
        self._next_early = -math.inf
        self._touched: dict[Any, None] = {}
        """``early_every``: the keys whose windows changed since the last early firing (in order)."""

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
        local: dict[tuple[Any, tuple[float, float]], Any] = {}
        late: list[Any] = []
        assigner = self.assigner
        tumbling = not hasattr(assigner, "slide")
        size, offset = assigner.size, assigner.offset
        record = None
        if self.early_count is not None:
            self._time_batch_early_count(batch, out)
            return
        if tumbling and self.counting_records:
            self._count_tumbling(batch, out)
            return
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
                    if window[1] + lateness <= wm:
                        continue
                    placed = True
                    group = (key, (window[0], window[1]))
                    acc = local.get(group, _MISSING)
                    local[group] = first(record) if acc is _MISSING else add(acc, record)
                if not placed:
                    late.append(record)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        self._buffer(local, out)
        if late:
            self._late(late, out)

    def _buffer(self, local: dict[tuple[Any, tuple[float, float]], Any], out: list[Any]) -> None:
        """Step 2: pending until the next flush, unless the window already fired."""
        wm = self.watermark
        pending = self._pending
        merge = self.reducer.merge
        now: dict[tuple[Any, tuple[float, float]], Any] = {}
        for group, acc in local.items():
            if group[1][1] > wm:
                old = pending.get(group, _MISSING)
                pending[group] = acc if old is _MISSING else merge(old, acc)
            else:
                now[group] = acc
        if now:
            self._store(now, out)
        if len(pending) > PENDING_LIMIT:
            self._flush()

    def _flush(self) -> None:
        """Merge every pending accumulator into the backend (before a watermark, a snapshot or the
        end): none of them emits, their windows' ends being above the watermark."""
        emitted: list[Any] = []
        if self._pending_counts:
            size = self.assigner.size
            counts, self._pending_counts = self._pending_counts, {}
            self._store({(key, (start, start + size)): n for (key, start), n in counts.items()}, emitted)
        if self._pending:
            pending, self._pending = self._pending, {}
            self._store(pending, emitted)
        if self._pending_sessions:
            sessions, self._pending_sessions = self._pending_sessions, {}
            self._sweep_sessions(sessions)
        assert not emitted, "a pending window had already fired"

    def snapshot(self, checkpoint_id: int) -> Any:
        self._flush()
        return super().snapshot(checkpoint_id)

    def _count_tumbling(self, batch: list[Any], out: list[Any]) -> None:
        """``_time_batch`` for ``aggregate(count())`` over tumbling windows: the same steps, counting."""
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        size, offset = self.assigner.size, self.assigner.offset
        wm = self.watermark
        horizon = wm - self.lateness  # a window ending at or before it was cleared
        pending = self._pending_counts
        get = pending.get
        fired: dict[tuple[Any, tuple[float, float]], int] = {}
        late: list[Any] = []
        record = None
        try:
            for record in batch:
                ts = ts_fn(record)
                if type(ts) is not float:
                    ts = to_seconds(ts)
                start = ts - (ts - offset) % size
                end = start + size
                if end <= wm:
                    if end <= horizon:
                        late.append(record)
                    else:
                        group2 = (key_fn(record), (start, end))
                        fired[group2] = fired.get(group2, 0) + 1
                    continue
                group = (key_fn(record), start)
                pending[group] = get(group, 0) + 1
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        if fired:
            self._store(fired, out)
        if late:
            self._late(late, out)
        if len(pending) > PENDING_LIMIT:
            self._flush()

    def _store(self, local: dict[tuple[Any, tuple[float, float]], Any], out: list[Any]) -> None:
        """Steps 2-3; windows are stored as plain ``(start, end)`` tuples (the same on every backend)."""
        keys = self.backend.keys
        windows = self.windows
        merge = self.reducer.merge
        register = self.timers.register
        lateness = self.lateness
        wm = self.watermark
        touched = self._touched if self.early_every is not None else None
        for (key, window), acc in local.items():
            keys.current_key = key
            stored = windows.get(window, _MISSING)
            end = window[1]
            if touched is not None and end > wm:
                touched[key] = None
            if stored is not _MISSING:
                # A stored window has its timers: they are created and removed together.
                acc = merge(stored, acc)
                windows.put(window, acc)
                if end <= wm:
                    out.extend(self.reducer.emit(key, TimeWindow(*window), acc))
                continue
            windows.put(window, acc)
            if end > wm:
                register(_EVENT, end)
            else:
                out.extend(self.reducer.emit(key, TimeWindow(*window), acc))  # a late firing, within the lateness
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
        local: dict[tuple[Any, tuple[float, float]], Any] = {}
        for group, records in groups.items():
            key, window = group
            keys.current_key = key
            stored = windows.get(window, _MISSING)
            seen = counts.get(window) or 0
            done: Any = _MISSING  # the records up to the last early firing: never changed again
            acc: Any = _MISSING  # the records after it (made here: add may change it)
            for record in records:
                acc = first(record) if acc is _MISSING else add(acc, record)
                seen += 1
                if seen == every:
                    seen = 0
                    done = acc if done is _MISSING else merge(done, acc)
                    acc = _MISSING
                    if window[1] > wm:  # an open window; a closed one has its late firing in _store
                        out.extend(emit_early(key, TimeWindow(*window),
                                              done if stored is _MISSING else merge(stored, done)))
            counts.put(window, seen)
            local[group] = done if acc is _MISSING else acc if done is _MISSING else merge(done, acc)
        self._store(local, out)
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

    def _session_batch(self, batch: list[Any], out: list[Any]) -> None:
        key_fn = self.key_fn
        ts_fn = self.timestamp_fn
        gap = self.assigner.gap
        reducer = self.reducer
        lateness = self.lateness
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
        # Step 2 for sessions: a record whose own window [ts, ts + gap) ends after the watermark can
        # neither be late nor fire a window at once, whatever it merges with: it waits for the flush.
        # A key with any other record in the batch takes the batch's records at once, in order, after
        # its pending ones: the order in which a key's records meet decides what is late.
        pending = self._pending_sessions
        now: dict[Any, list[tuple[float, Any]]] = {}
        for key, items in by_key.items():
            if all(ts + gap > wm for ts, _ in items):
                waiting = pending.get(key)
                if waiting is None:
                    pending[key] = items
                else:
                    waiting.extend(items)
            else:
                waiting = pending.pop(key, None)
                if waiting:
                    self._sweep_sessions({key: waiting})
                now[key] = items
        if now:
            self._sessions(now, out)
        if len(pending) > PENDING_LIMIT:
            self._flush()

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
            spans = [(w[0], w[1], (w[0], w[1]), acc) for w, acc in windows.items()]
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
                acc: Any = _MISSING
                fresh = False  # whether acc was made here (add may change it) or is a stored one
                for stored, payload in members:
                    if stored is not None:
                        acc, fresh = (payload, False) if acc is _MISSING else (merge(acc, payload), True)
                    elif acc is _MISSING:
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
        self._flush()  # under the old watermark: pending windows are all still open
        self.watermark = wm = event.timestamp
        out: list[Any] = []
        try:
            if self.assigner.counting:
                if wm == MAX_WATERMARK:
                    self._flush_counts(out)
                return out, event
            self._fire(wm, out)
        except UserFunctionError:
            raise
        except Exception as exc:
            raise UserFunctionError(self.name, "<window firing>", exc) from exc
        return out, event

    def _fire(self, wm: float, out: list[Any]) -> None:
        timers = self.timers
        windows = self.windows
        lateness = self.lateness
        emit = self.reducer.emit
        while (got := timers.pop(_EVENT, wm)) is not None:
            key, t = got
            for w, acc in list(windows.items()):
                window = TimeWindow(*w)
                if window.end == t:
                    out.extend(emit(key, window, acc))
                if window.end + lateness == t:
                    windows.remove(w)
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


class SelectOperator(Operator):
    """After a window operator: its results (``late=False``) or its late records (``late=True``)."""

    def __init__(self, uid: str, name: str, env: OperatorEnv, late: bool) -> None:
        super().__init__(uid, name, env)
        self.late = late

    def process_batch(self, batch: list[Any]) -> list[Any]:
        if self.late:
            return [r.record for r in batch if type(r) is LateRecord]
        return [r for r in batch if type(r) is not LateRecord]
