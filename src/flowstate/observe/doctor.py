"""The checkpoint doctor: why checkpoints are slow or failing, and what to change.

Pure: facts in (the events of a checkpoint history, ``flowstate.observe.history``), findings out
(values). Nothing here reads a file or a clock; ``flowstate checkpoints doctor DIR`` reads the
history and prints what ``diagnose`` returns.

The rules look at the recent checkpoints (the last ``WINDOW`` that are not savepoints) and at the
configuration of the newest run. Each rule returns at most one finding; a healthy history gives
none. Thresholds are absolute *and* relative, so that a fast job whose checkpoints take 5 ms is not
told that its synchronous part is half of it.

1. ``failing`` — checkpoints expire or are declined: how many, why, and who did not acknowledge.
2. ``backpressure`` — barriers spend most of a checkpoint waiting behind queued records and in
   alignment (aligned and at-least-once modes): unaligned checkpoints or an alignment timeout.
3. ``dominant-subtask`` — one subtask acknowledges last in most checkpoints, far behind the others:
   skew.
4. ``sync-part`` — the synchronous part of snapshots (which stops the task) is long.
5. ``upload`` — the asynchronous part (serialise, upload) takes most of each checkpoint: RocksDB,
   incremental checkpoints, compression, less state.
6. ``state-growth`` — the state grows checkpoint after checkpoint without levelling off.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flowstate.observe.history import CheckpointRecord, Event, RestartRecord, StartRecord

WINDOW = 20
"""Checkpoints (completed and failed) the rules look at."""
GROWTH_WINDOW = 30
"""Completed checkpoints the growth rule looks at."""


class Rule(StrEnum):
    FAILING = "failing"
    BACKPRESSURE = "backpressure"
    DOMINANT_SUBTASK = "dominant-subtask"
    SYNC_PART = "sync-part"
    UPLOAD = "upload"
    STATE_GROWTH = "state-growth"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    severity: Severity
    sentence: str
    """What the history shows, with its numbers."""
    suggestion: str
    """What to change."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What the rules read."""

    checkpoints: tuple[CheckpointRecord, ...]
    """Oldest first; savepoints excluded."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Of the newest run (``StartRecord.settings``); empty when unknown."""
    chains: Mapping[str, str] = field(default_factory=dict)
    """Vertex name → its chain (``source(…) -> map(…) -> sink(…)``)."""
    restarts: int = 0


def facts_of(events: Iterable[Event]) -> Facts:
    """The facts of a history: the checkpoints since the newest run's configuration was recorded
    (older runs may have run with other settings), else all of them."""
    events = list(events)
    starts = [i for i, e in enumerate(events) if isinstance(e, StartRecord)]
    settings: Mapping[str, Any] = {}
    chains: dict[str, str] = {}
    if starts:
        start = events[starts[-1]]
        assert isinstance(start, StartRecord)
        settings = start.settings
        chains = {str(v.get("name")): str(v.get("chain", "")) for v in start.vertices}
        # Checkpoints of earlier runs count when the newest run resumed them with the same settings.
        first = starts[-1]
        for i in reversed(starts[:-1]):
            earlier = events[i]
            assert isinstance(earlier, StartRecord)
            if earlier.settings != settings:
                break
            first = i
        events = events[first:]
    checkpoints = tuple(e for e in events if isinstance(e, CheckpointRecord) and not e.savepoint)
    restarts = sum(1 for e in events if isinstance(e, RestartRecord))
    return Facts(checkpoints, settings, chains, restarts)


def diagnose(facts: Facts) -> list[Finding]:
    """Every finding of every rule, most severe first (then in rule order)."""
    found = [f for rule in (_failing, _backpressure, _dominant_subtask, _sync_part, _upload, _state_growth)
             if (f := rule(facts)) is not None]
    return sorted(found, key=lambda f: f.severity is not Severity.CRITICAL)


# ---- the rules -------------------------------------------------------------------------------------


def _recent(facts: Facts) -> list[CheckpointRecord]:
    return list(facts.checkpoints[-WINDOW:])


def _completed(facts: Facts) -> list[CheckpointRecord]:
    return [c for c in _recent(facts) if c.completed and not c.final]


def _failing(facts: Facts) -> Finding | None:
    recent = _recent(facts)
    failed = [c for c in recent if not c.completed]
    if not failed or len(failed) < max(1, len(recent) // 10):
        return None
    reasons = Counter(c.reason or "UNKNOWN" for c in failed)
    parts = []
    for reason, count in reasons.most_common():
        examples = [c for c in failed if (c.reason or "UNKNOWN") == reason]
        parts.append(f"{count} {_REASON_WORDS.get(reason, reason.lower().replace('_', ' '))}"
                     + _failure_detail(reason, examples, facts))
    severity = Severity.CRITICAL if len(failed) * 2 >= len(recent) else Severity.WARNING
    sentence = f"{len(failed)} of the last {len(recent)} checkpoints failed: " + "; ".join(parts) + "."
    return Finding(Rule.FAILING, severity, sentence, _failure_suggestion(reasons.most_common(1)[0][0], facts))


_REASON_WORDS = {
    "EXPIRED": "expired",
    "IN_FLIGHT_LIMIT": "declined for too much in-flight data",
    "SNAPSHOT_FAILURE": "declined because a snapshot failed",
    "SUBSUMED_BY_NEWER_BARRIER": "declined because a newer barrier overtook them",
    "STORAGE_FAILURE": "failed writing their metadata",
    "TASK_FAILURE": "failed with a task",
    "JOB_RESTARTING": "ended by a restart",
}


def _failure_detail(reason: str, examples: Sequence[CheckpointRecord], facts: Facts) -> str:
    if reason == "EXPIRED":
        timeout = facts.settings.get("timeout")
        missing = Counter(t for c in examples for t in c.missing)
        text = f" (after the {_seconds(timeout)} timeout)" if timeout else ""
        if missing:
            names = ", ".join(f"{t} ({n}×)" for t, n in missing.most_common(3))
            text += f", still waiting for {names}"
        return text
    declines = Counter((d.task, d.detail) for c in examples for d in c.declines if d.reason == reason)
    if declines:
        (task, detail), _ = declines.most_common(1)[0]
        return f", by {task}" + (f": {detail}" if detail else "")
    return ""


def _failure_suggestion(reason: str, facts: Facts) -> str:
    mode = facts.settings.get("mode")
    if reason == "EXPIRED":
        timeout = facts.settings.get("timeout")
        if mode in ("exactly_once", "at_least_once") and not facts.settings.get("alignment_timeout"):
            return ("Barriers that wait behind back-pressure make checkpoints expire: run with --mode unaligned "
                    "(barriers overtake queued records) or --alignment-timeout 200ms, or remove the bottleneck; "
                    f"otherwise raise --timeout (now {_seconds(timeout)}).")
        return f"Raise --timeout (now {_seconds(timeout)}) or make the slowest subtask faster."
    if reason == "IN_FLIGHT_LIMIT":
        limit = facts.settings.get("max_inflight_bytes")
        return (f"Raise --max-inflight-bytes (now {_size(limit) if limit else 'the default 64 MiB'}), or reduce the "
                "back-pressure that fills the channels; with --mode exactly_once --alignment-timeout only "
                "checkpoints whose alignment times out persist in-flight data.")
    if reason == "SNAPSHOT_FAILURE":
        return "A task could not write its state: check the checkpoint storage (space, permissions) and the error above."
    if reason == "SUBSUMED_BY_NEWER_BARRIER":
        return "Keep --max-concurrent at 1 or lengthen --interval so that a checkpoint can align before the next one starts."
    return "See the job's log for the failures; checkpoints that fail in a row beyond --tolerable-failures fail the job."


def _backpressure(facts: Facts) -> Finding | None:
    mode = facts.settings.get("mode")
    if mode not in (None, "exactly_once", "at_least_once"):
        return None  # unaligned barriers overtake queued records; stop-the-world has nothing queued
    done = _completed(facts)
    if len(done) < 3:
        return None
    rows = []
    for c in done:
        slowest = _slowest(c)
        if slowest is None or c.duration <= 0:
            continue
        waited = slowest.barrier_seconds if slowest.barrier_seconds is not None else slowest.alignment_seconds
        rows.append((c, slowest, waited))
    if len(rows) < 3:
        return None
    heavy = [r for r in rows if r[2] >= 0.5 * r[0].duration and r[2] >= 0.2]
    if len(heavy) * 2 < len(rows):
        return None
    durations = statistics.median(r[0].duration for r in heavy)
    waited = statistics.median(r[2] for r in heavy)
    aligned = statistics.median(r[1].alignment_seconds for r in heavy)
    sentence = (f"Barriers wait behind back-pressure: in {len(heavy)} of {len(rows)} checkpoints most of the time went "
                f"to the barrier reaching and aligning at the slowest subtask, a median {_seconds(waited)} of "
                f"{_seconds(durations)} ({waited / durations:.0%}; alignment itself {_seconds(aligned)}).")
    if mode == "exactly_once" and facts.settings.get("alignment_timeout"):
        suggestion = (f"Lower --alignment-timeout (now {_seconds(facts.settings['alignment_timeout'])}) or run with "
                      "--mode unaligned, so that barriers overtake the queued records.")
    elif mode == "at_least_once":
        suggestion = "Run with --mode unaligned: its barriers overtake the queued records instead of waiting behind them."
    else:
        suggestion = ("Run with --mode unaligned (barriers overtake queued records; the checkpoint persists them) or "
                      "--alignment-timeout 200ms (only slow alignments switch to unaligned); or remove the bottleneck, "
                      "which lies downstream of the most back-pressured task (flowstate_task_backpressure_seconds_total).")
    severity = Severity.CRITICAL if durations >= float(facts.settings.get("interval") or 1e9) else Severity.WARNING
    return Finding(Rule.BACKPRESSURE, severity, sentence, suggestion)


def _dominant_subtask(facts: Facts) -> Finding | None:
    done = [c for c in _completed(facts) if len(c.subtasks) >= 2]
    if len(done) < 3:
        return None
    last = Counter(s.task for c in done if (s := _slowest(c)) is not None
                   and any(p.task != s.task and _vertex(p.task) == _vertex(s.task) for p in c.subtasks))
    if not last:
        return None
    task, count = last.most_common(1)[0]
    if count < 0.6 * len(done):
        return None
    mine = [t for c in done for s in c.subtasks if s.task == task if (t := _total(s)) is not None]
    # Its peers are the other subtasks of its vertex: another vertex may do much more per record.
    others = [t for c in done for s in c.subtasks if s.task != task and _vertex(s.task) == _vertex(task)
              if (t := _total(s)) is not None]
    if not mine or not others:
        return None
    own, rest = statistics.median(mine), statistics.median(others)
    if own < 0.1 or own < 2 * rest:
        return None
    stats = [s for c in done for s in c.subtasks if s.task == task]
    barrier = [b for s in stats if (b := s.barrier_seconds) is not None] or [s.alignment_seconds for s in stats]
    sentence = (f"Subtask {task} is the last to acknowledge in {count} of {len(done)} checkpoints: it needs a median "
                f"{_seconds(own)} from the trigger, {own / max(rest, 1e-9):.1f}× its peers ({_seconds(rest)}); of that, "
                f"{_seconds(statistics.median(barrier))} until its barrier was aligned, "
                f"{_seconds(statistics.median(s.sync_seconds for s in stats))} synchronous, "
                f"{_seconds(statistics.median(s.async_seconds for s in stats))} asynchronous.")
    suggestion = ("One subtask holding back every checkpoint usually means skew: a hot key or an uneven split sends it "
                  "more records (or larger state) than its peers. Spread hot keys (salt the key and combine in a second "
                  f"step) or balance the splits; compare flowstate_task_records_in_total of {_vertex(task)}'s subtasks.")
    return Finding(Rule.DOMINANT_SUBTASK, Severity.WARNING, sentence, suggestion)


def _sync_part(facts: Facts) -> Finding | None:
    done = _completed(facts)
    if len(done) < 3:
        return None
    syncs = [c.max_sync for c in done]
    median_sync = statistics.median(syncs)
    median_duration = statistics.median(c.duration for c in done)
    if median_sync < 0.05 or median_sync < 0.2 * median_duration:
        return None
    slowest = Counter(max(c.subtasks, key=lambda s: s.sync_seconds).task for c in done if c.subtasks)
    task = slowest.most_common(1)[0][0] if slowest else "?"
    sentence = (f"The synchronous part of snapshots is long: a median {_seconds(median_sync)} at the slowest subtask "
                f"(most often {task}), {median_sync / max(median_duration, 1e-9):.0%} of a checkpoint's "
                f"{_seconds(median_duration)}; the task processes no record meanwhile.")
    chain = facts.chains.get(_vertex(task), "")
    if facts.settings.get("state_backend") == "rocksdb" and ("keyed_process(" in chain or "reduce(" in chain):
        suggestion = ("RocksDB flushes its write buffers to a file in the synchronous part: checkpoint more often "
                      "(shorter --interval) so that each flush is small, or write less state per record.")
    elif "sink(" in chain:
        suggestion = ("The sink of this task pre-commits in the synchronous part (closes, flushes and syncs its file): "
                      "checkpoint more often (shorter --interval) so that each pre-commit has less to flush, or put the "
                      "output files on faster storage.")
    else:
        suggestion = "An operator's snapshot does its work on the task thread: move serialisation into the asynchronous part."
    return Finding(Rule.SYNC_PART, Severity.WARNING, sentence, suggestion)


def _upload(facts: Facts) -> Finding | None:
    done = _completed(facts)
    if len(done) < 3:
        return None
    median_async = statistics.median(c.max_async for c in done)
    median_duration = statistics.median(c.duration for c in done)
    if median_async < 0.2 or median_async < 0.4 * median_duration:
        return None
    written = statistics.median(c.bytes_written for c in done)
    size = statistics.median(c.size for c in done)
    slowest = Counter(max(c.subtasks, key=lambda s: s.async_seconds).task for c in done if c.subtasks)
    task = slowest.most_common(1)[0][0] if slowest else "?"
    sentence = (f"Writing state takes most of each checkpoint: the asynchronous part lasts a median "
                f"{_seconds(median_async)} (most often at {task}), {median_async / max(median_duration, 1e-9):.0%} of "
                f"the {_seconds(median_duration)} a checkpoint takes, for {_size(written)} written per checkpoint "
                f"(state {_size(size)}).")
    hints = []
    settings = facts.settings
    if settings.get("state_backend", "heap") == "heap":
        hints.append("--state-backend rocksdb with incremental checkpoints uploads only the files that changed since "
                     "the last checkpoint instead of the whole state")
    elif settings.get("incremental") is False:
        hints.append("drop --full-checkpoints: incremental checkpoints upload only new files")
    if settings.get("compression") == "none":
        hints.append("--compression zstd writes fewer bytes")
    hints.append("keep less state: clear keys you no longer need (a time-to-live)")
    if median_duration > 0.5 * float(settings.get("interval") or 1e9):
        hints.append(f"or lengthen --interval (now {_seconds(settings.get('interval'))})")
    suggestion = "; ".join(hints)
    return Finding(Rule.UPLOAD, Severity.WARNING, sentence, suggestion[:1].upper() + suggestion[1:] + ".")


def _state_growth(facts: Facts) -> Finding | None:
    done = [c for c in facts.checkpoints if c.completed and c.size > 0][-GROWTH_WINDOW:]
    if len(done) < 6:
        return None
    sizes = [c.size for c in done]
    steps = [b - a for a, b in zip(sizes, sizes[1:])]
    larger = sum(1 for s in steps if s > 0)
    first, last = sizes[0], sizes[-1]
    if larger < 0.8 * len(steps) or last < 1.5 * first or last - first < 64 * 1024:
        return None
    # Levelling off: the second half grows much less than the first.
    half = len(sizes) // 2
    early, late = sizes[half] - sizes[0], sizes[-1] - sizes[half]
    if late < 0.3 * early:
        return None
    per_checkpoint = (last - first) / (len(sizes) - 1)
    elapsed = done[-1].trigger_time - done[0].trigger_time
    rate = f", {_size((last - first) / elapsed)}/s" if elapsed > 0 else ""
    sentence = (f"State grows without bound: from {_size(first)} at checkpoint {done[0].checkpoint_id} to {_size(last)} "
                f"at checkpoint {done[-1].checkpoint_id} ({last / first:.1f}×), larger than the one before in {larger} of "
                f"{len(steps)} checkpoints, about +{_size(per_checkpoint)} per checkpoint{rate}.")
    suggestion = ("Keys that are never cleared accumulate: clear the state of a key once it is done (state.clear()), "
                  "expire it after a time-to-live, or bound the key space. RocksDB holds state larger than memory, "
                  "not unbounded state.")
    return Finding(Rule.STATE_GROWTH, Severity.WARNING, sentence, suggestion)


# ---- helpers ---------------------------------------------------------------------------------------


def _slowest(c: CheckpointRecord) -> Any:
    timed = [s for s in c.subtasks if _total(s) is not None]
    return max(timed, key=_total) if timed else None  # type: ignore[arg-type,return-value]


def _total(s: Any) -> float | None:
    """A subtask's time in a checkpoint: to its acknowledgement, else the parts the metadata has."""
    if s.ack_seconds is not None:
        return float(s.ack_seconds)
    return float(s.alignment_seconds + s.sync_seconds + s.async_seconds)


def _vertex(task: str) -> str:
    return task.rsplit("#", 1)[0]


def _seconds(value: Any) -> str:
    if value is None:
        return "?"
    v = float(value)
    if v < 1:
        return f"{v * 1000:.0f} ms"
    return f"{v:.1f} s"


def _size(value: Any) -> str:
    v = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"


def format_findings(findings: Sequence[Finding], checkpoints: int) -> str:
    """The doctor's report, for a terminal."""
    if not findings:
        return f"No problem found in the last {min(checkpoints, WINDOW)} checkpoint(s)."
    lines = []
    for f in findings:
        lines.append(f"[{f.severity.value}] {f.rule.value}: {f.sentence}")
        lines.append(f"  → {f.suggestion}")
    return "\n".join(lines)
