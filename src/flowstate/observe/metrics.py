"""The Prometheus metrics of one job, aggregated in the coordinator's process.

Tasks count in their own process (``TaskCounters``); workers send their tasks' counters to the
coordinator with their progress messages, so the coordinator holds the latest counters of every
task and no multi-process directory is needed. Task metrics are read when scraped (a custom
collector); checkpoint, restart and restore metrics are updated by the coordinator's hooks as events
happen. Every metric lives in the job's own ``CollectorRegistry`` (no global state).

Counters of a task carry across restarts: when an attempt ends, what its tasks counted is added to
a base that the next attempt's counts are added to, so a counter never goes down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flowstate.observe.counters import TaskCounters
from flowstate.observe.history import CheckpointRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SIZE_BUCKETS = tuple(float(1024 * 4**k) for k in range(12))  # 1 KiB … 4 GiB

METRICS: tuple[tuple[str, str, str, str], ...] = (
    # name, type, labels, help — the README's table is generated from this list.
    ("flowstate_task_records_in_total", "counter", "task, subtask", "Records a subtask read (a source: records it polled)."),
    ("flowstate_task_records_out_total", "counter", "task, subtask", "Records a subtask emitted downstream."),
    ("flowstate_task_backpressure_seconds_total", "counter", "task, subtask",
     "Time a subtask waited for room in a full output channel."),
    ("flowstate_operator_records_out_total", "counter", "task, subtask, operator",
     "Records an operator of a subtask's chain emitted (a filter's selectivity, a flat_map's fan-out)."),
    ("flowstate_task_state_entries", "gauge", "task, subtask", "Keyed state entries of a subtask at its last snapshot."),
    ("flowstate_task_watermark_seconds", "gauge", "task, subtask",
     "Event-time watermark a subtask last passed downstream (seconds since the epoch; event-time jobs)."),
    ("flowstate_task_watermark_lag_seconds", "gauge", "task, subtask",
     "Wall-clock time minus that watermark: how far event time trails (a growing lag: the job falls behind)."),
    ("flowstate_task_state_size_bytes", "gauge", "task, subtask",
     "Bytes of a subtask's state in the last completed checkpoint."),
    ("flowstate_operator_state_entries_live", "gauge", "task, subtask, operator",
     "Live entries of an operator's states with a time-to-live, at the subtask's last snapshot."),
    ("flowstate_operator_state_entries_expired", "gauge", "task, subtask, operator",
     "Expired entries of an operator's states with a time-to-live not removed yet, at the subtask's last snapshot."),
    ("flowstate_checkpoints_total", "counter", "outcome",
     "Checkpoints by outcome: completed, expired, declined, failed."),
    ("flowstate_last_checkpoint_id", "gauge", "", "Id of the last completed checkpoint."),
    ("flowstate_last_checkpoint_duration_seconds", "gauge", "", "Trigger to completion of the last completed checkpoint."),
    ("flowstate_last_checkpoint_size_bytes", "gauge", "", "Whole state of the last completed checkpoint."),
    ("flowstate_last_checkpoint_written_bytes", "gauge", "", "Bytes uploaded for the last completed checkpoint."),
    ("flowstate_last_checkpoint_sync_seconds", "gauge", "", "Longest synchronous part among its subtasks."),
    ("flowstate_last_checkpoint_async_seconds", "gauge", "", "Longest asynchronous part among its subtasks."),
    ("flowstate_last_checkpoint_alignment_seconds", "gauge", "", "Longest alignment among its subtasks."),
    ("flowstate_last_checkpoint_inflight_bytes", "gauge", "", "In-flight bytes it persisted (unaligned)."),
    ("flowstate_checkpoint_duration_seconds", "histogram", "", "Trigger to completion, per completed checkpoint."),
    ("flowstate_checkpoint_size_bytes", "histogram", "", "Whole state, per completed checkpoint."),
    ("flowstate_checkpoint_sync_seconds", "histogram", "", "Longest synchronous part, per completed checkpoint."),
    ("flowstate_checkpoint_async_seconds", "histogram", "", "Longest asynchronous part, per completed checkpoint."),
    ("flowstate_checkpoint_alignment_seconds", "histogram", "", "Longest alignment, per completed checkpoint."),
    ("flowstate_restarts_total", "counter", "", "Restarts of the job after a failure."),
    ("flowstate_restores_total", "counter", "", "Attempts that restored from a checkpoint or savepoint."),
    ("flowstate_last_restore_duration_seconds", "gauge", "",
     "Choosing the restore point, loading the state and building the tasks, for the last attempt."),
)


def outcome(record: CheckpointRecord) -> str:
    """``completed``, ``expired``, ``declined`` (a task gave up) or ``failed`` (anything else)."""
    if record.completed:
        return "completed"
    if record.reason == "EXPIRED":
        return "expired"
    if record.declines:
        return "declined"
    return "failed"


class JobMetrics:
    """The registry of one job and the hooks that update it."""

    def __init__(self, tasks: Callable[[], Mapping[str, TaskCounters]], state_sizes: Callable[[], Mapping[str, int]],
                 operators: Mapping[str, Sequence[str]] | None = None, wall: Callable[[], float] | None = None) -> None:
        """``operators``: each vertex's chained operators, in the order of ``operators_out``;
        ``wall``: the wall clock the watermark lag is measured against (the job's clock)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if wall is None:
            from flowstate.clock import SystemClock

            wall = SystemClock().wall
        self.registry.register(_TaskCollector(tasks, state_sizes, operators or {}, wall))
        self.checkpoints = Counter("flowstate_checkpoints", "Checkpoints by outcome: completed, expired, declined, failed.",
                                   ["outcome"], registry=r)
        for name in ("completed", "expired", "declined", "failed"):
            self.checkpoints.labels(name)
        self.last_id = Gauge("flowstate_last_checkpoint_id", "Id of the last completed checkpoint.", registry=r)
        self.last = {
            key: Gauge(f"flowstate_last_checkpoint_{key}", text, registry=r) for key, text in (
                ("duration_seconds", "Trigger to completion of the last completed checkpoint."),
                ("size_bytes", "Whole state of the last completed checkpoint."),
                ("written_bytes", "Bytes uploaded for the last completed checkpoint."),
                ("sync_seconds", "Longest synchronous part among its subtasks."),
                ("async_seconds", "Longest asynchronous part among its subtasks."),
                ("alignment_seconds", "Longest alignment among its subtasks."),
                ("inflight_bytes", "In-flight bytes it persisted (unaligned)."),
            )
        }
        self.histograms = {
            key: Histogram(f"flowstate_checkpoint_{key}", text, buckets=buckets, registry=r) for key, text, buckets in (
                ("duration_seconds", "Trigger to completion, per completed checkpoint.", DURATION_BUCKETS),
                ("size_bytes", "Whole state, per completed checkpoint.", SIZE_BUCKETS),
                ("sync_seconds", "Longest synchronous part, per completed checkpoint.", DURATION_BUCKETS),
                ("async_seconds", "Longest asynchronous part, per completed checkpoint.", DURATION_BUCKETS),
                ("alignment_seconds", "Longest alignment, per completed checkpoint.", DURATION_BUCKETS),
            )
        }
        self.restarts = Counter("flowstate_restarts", "Restarts of the job after a failure.", registry=r)
        self.restores = Counter("flowstate_restores", "Attempts that restored from a checkpoint or savepoint.", registry=r)
        self.restore_seconds = Gauge(
            "flowstate_last_restore_duration_seconds",
            "Choosing the restore point, loading the state and building the tasks, for the last attempt.", registry=r)

    def checkpoint(self, record: CheckpointRecord) -> None:
        if record.savepoint:
            return
        self.checkpoints.labels(outcome(record)).inc()
        if not record.completed:
            return
        self.last_id.set(record.checkpoint_id)
        values = {
            "duration_seconds": record.duration, "size_bytes": record.size, "written_bytes": record.bytes_written,
            "sync_seconds": record.max_sync, "async_seconds": record.max_async,
            "alignment_seconds": record.max_alignment, "inflight_bytes": record.channel_bytes,
        }
        for key, gauge in self.last.items():
            gauge.set(values[key])
        for key, histogram in self.histograms.items():
            histogram.observe(values[key])

    def restarted(self) -> None:
        self.restarts.inc()

    def restored(self, checkpoint_id: int | None, seconds: float) -> None:
        if checkpoint_id is not None:
            self.restores.inc()
        self.restore_seconds.set(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _TaskCollector:
    """Task metrics, read when scraped."""

    def __init__(self, tasks: Callable[[], Mapping[str, TaskCounters]], state_sizes: Callable[[], Mapping[str, int]],
                 operators: Mapping[str, Sequence[str]], wall: Callable[[], float]) -> None:
        self._tasks = tasks
        self._state_sizes = state_sizes
        self._operators = operators
        self._wall = wall

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        labels = ["task", "subtask"]
        records_in = CounterMetricFamily("flowstate_task_records_in", "Records a subtask read (a source: records it polled).",
                                         labels=labels)
        records_out = CounterMetricFamily("flowstate_task_records_out", "Records a subtask emitted downstream.", labels=labels)
        backpressure = CounterMetricFamily("flowstate_task_backpressure_seconds",
                                           "Time a subtask waited for room in a full output channel.", labels=labels)
        entries = GaugeMetricFamily("flowstate_task_state_entries", "Keyed state entries of a subtask at its last snapshot.",
                                    labels=labels)
        operators_out = CounterMetricFamily(
            "flowstate_operator_records_out",
            "Records an operator of a subtask's chain emitted (a filter's selectivity, a flat_map's fan-out).",
            labels=["task", "subtask", "operator"])
        sizes = GaugeMetricFamily("flowstate_task_state_size_bytes",
                                  "Bytes of a subtask's state in the last completed checkpoint.", labels=labels)
        watermarks = GaugeMetricFamily(
            "flowstate_task_watermark_seconds",
            "Event-time watermark a subtask last passed downstream (seconds since the epoch; event-time jobs).",
            labels=labels)
        lags = GaugeMetricFamily(
            "flowstate_task_watermark_lag_seconds",
            "Wall-clock time minus that watermark: how far event time trails (a growing lag: the job falls behind).",
            labels=labels)
        now = self._wall()
        ttl_labels = ["task", "subtask", "operator"]
        ttl_live = GaugeMetricFamily(
            "flowstate_operator_state_entries_live",
            "Live entries of an operator's states with a time-to-live, at the subtask's last snapshot.",
            labels=ttl_labels)
        ttl_expired = GaugeMetricFamily(
            "flowstate_operator_state_entries_expired",
            "Expired entries of an operator's states with a time-to-live not removed yet, at the subtask's last snapshot.",
            labels=ttl_labels)
        state_sizes = self._state_sizes()
        for task, c in sorted(self._tasks().items()):
            vertex, _, index = task.rpartition("#")
            values = [vertex, index]
            records_in.add_metric(values, c.records_in)
            records_out.add_metric(values, c.records_out)
            backpressure.add_metric(values, c.backpressure_seconds)
            entries.add_metric(values, c.state_entries)
            sizes.add_metric(values, state_sizes.get(task, 0))
            if c.watermark is not None:
                watermarks.add_metric(values, c.watermark)
                lags.add_metric(values, now - c.watermark)
            for name, count in zip(self._operators.get(vertex, ()), c.operators_out):
                operators_out.add_metric([vertex, index, name], count)
            for name, ttl in zip(self._operators.get(vertex, ()), c.operators_ttl):
                if ttl is not None:
                    ttl_live.add_metric([vertex, index, name], ttl[0])
                    ttl_expired.add_metric([vertex, index, name], ttl[1])
        return [records_in, records_out, backpressure, operators_out, entries, sizes, watermarks, lags, ttl_live,
                ttl_expired]
