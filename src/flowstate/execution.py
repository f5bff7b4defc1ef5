"""``flowstate.run``: run a dataflow from Python with keyword settings."""

from __future__ import annotations

from pathlib import Path

from flowstate.checkpoint.coordinator import CheckpointConfig
from flowstate.clock import Clock
from flowstate.config import FixedDelayRestart, JobConfig, Mode, RestartStrategy, parse_duration
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError
from flowstate.failpoints import Failpoints
from flowstate.runtime.job import JobResult, JobRunner


def run(
    flow: Dataflow,
    *,
    mode: Mode | str = Mode.EXACTLY_ONCE,
    checkpoint_dir: str | Path | None = None,
    interval: float | str | None = 1.0,
    timeout: float | str = 600.0,
    min_pause: float | str = 0.0,
    max_concurrent: int = 1,
    tolerable_failures: int = 0,
    retained: int = 1,
    restart: RestartStrategy | None = None,
    parallelism: int | None = None,
    fresh: bool = False,
    allow_non_replayable: bool = False,
    batch_size: int = 2048,
    channel_capacity: int = 8,
    progress: bool = False,
    alignment_timeout: float | str | None = None,
    max_inflight_bytes: int = 64 * 1024 * 1024,
    executor: str | None = None,
    workers: int | None = None,
    failpoints: Failpoints | None = None,
    clock: Clock | None = None,
) -> JobResult:
    """Run ``flow`` until its bounded input is exhausted and its output committed (or forever, for an
    unbounded source). A run with the same ``checkpoint_dir`` after a crash resumes from the latest
    completed checkpoint. Raises ``JobFailedError`` when the restart strategy gives up.

    ``executor`` is ``threads``, ``processes`` or ``ray`` (default: ``processes`` when an operator
    runs more than one subtask); ``workers`` the number of worker processes. Under ``processes`` and
    ``ray`` user functions run in the workers: what they change in this process's memory is not seen
    here."""
    if not isinstance(flow, Dataflow):
        raise ConfigError(f"run() takes a flowstate.Dataflow, got {type(flow).__name__}")
    try:
        checkpoint = CheckpointConfig(
            interval=None if interval is None else parse_duration(interval, what="checkpoint interval"),
            timeout=parse_duration(timeout, what="checkpoint timeout"),
            min_pause=parse_duration(min_pause, what="minimum pause"),
            max_concurrent=max_concurrent,
            tolerable_failures=tolerable_failures,
            retained=retained,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    config = JobConfig(
        mode=Mode.parse(mode),
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        checkpoint=checkpoint,
        restart=restart if restart is not None else FixedDelayRestart(3, 0.5),
        parallelism=parallelism,
        fresh=fresh,
        allow_non_replayable=allow_non_replayable,
        batch_size=batch_size,
        channel_capacity=channel_capacity,
        progress=progress,
        alignment_timeout=None if alignment_timeout is None else parse_duration(alignment_timeout, what="alignment timeout"),
        max_inflight_bytes=max_inflight_bytes,
        executor=executor,
        workers=workers,
    )
    return JobRunner(flow, config, failpoints=failpoints, clock=clock).run()
