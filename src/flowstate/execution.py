"""``flowstate.run``: run a dataflow from Python with keyword settings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flowstate.checkpoint.coordinator import CheckpointConfig
from flowstate.clock import Clock
from flowstate.config import (
    FixedDelayRestart,
    JobConfig,
    Mode,
    RestartStrategy,
    parse_duration,
    parse_restart,
)
from flowstate.control.endpoint import JobControl
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError
from flowstate.failpoints import Failpoints
from flowstate.runner.job import JobResult, JobRunner
from flowstate.storage.factory import is_url


def _location(checkpoint_dir: str | Path | None) -> str | Path | None:
    """An object-store URL stays a string; anything else is a local path."""
    if checkpoint_dir is None:
        return None
    if isinstance(checkpoint_dir, str) and is_url(checkpoint_dir):
        return checkpoint_dir
    return Path(checkpoint_dir)


def check_writable(directory: Path) -> None:
    """Refuse, with a ``ConfigError`` of one line, a local checkpoint directory that this process
    cannot write: a file, a directory without write permission, one on a read-only file system.

    The directory itself is not created here (the storage creates it durably): the test creates
    and removes a file in it, or in its nearest existing ancestor when it does not exist yet."""
    existing = directory
    while not existing.exists() and not existing.is_symlink() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        why = "it is a file" if existing == directory else f"{existing} is a file, not a directory"
        raise ConfigError(f"cannot write to checkpoint directory {directory}: {why}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".flowstate-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if existing == directory else f" (creating it in {existing})"
        raise ConfigError(f"cannot write to checkpoint directory {directory}{where}: {exc.strerror or exc}") from None


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
    restart: RestartStrategy | str | None = None,
    parallelism: int | None = None,
    fresh: bool = False,
    allow_non_replayable: bool = False,
    batch_size: int = 2048,
    channel_capacity: int = 8,
    progress: bool = False,
    alignment_timeout: float | str | None = None,
    max_inflight_bytes: int = 64 * 1024 * 1024,
    state_backend: str = "heap",
    incremental: bool = True,
    compression: str = "zstd",
    state_dir: str | Path | None = None,
    from_savepoint: str | Path | None = None,
    allow_non_restored_state: bool = False,
    drop_sink_state: bool = False,
    savepoint_dir: str | Path | None = None,
    control_endpoint: bool = False,
    control_host: str = "127.0.0.1",
    control: JobControl | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    executor: str | None = None,
    workers: int | None = None,
    failpoints: Failpoints | None = None,
    clock: Clock | None = None,
) -> JobResult:
    """Run ``flow`` until its bounded input is exhausted and its output committed (or forever, for an
    unbounded source). A run with the same ``checkpoint_dir`` after a crash resumes from the latest
    completed checkpoint. Raises ``JobFailedError`` when the restart strategy gives up.

    ``from_savepoint`` restores from a savepoint (at any parallelism); ``allow_non_restored_state``
    drops state that maps to no operator of the job instead of refusing it, except a sink's, which
    also needs ``drop_sink_state`` (its pre-committed output is lost). ``control_endpoint``
    serves ``flowstate status | checkpoint | savepoint | stop`` for ``checkpoint_dir``; savepoints go
    under ``savepoint_dir`` (default ``<checkpoint_dir>/savepoints``). ``control`` (a ``JobControl``)
    takes the same requests from another thread of this process.
    String settings are read by the same code as the options of ``flowstate run``: durations such as
    ``"500ms"``, ``mode="unaligned"``, ``restart="fixed:3:0.5"`` or ``"exponential:10:0.1:10"``.
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
    location = _location(checkpoint_dir)
    if isinstance(location, Path) and Mode.parse(mode).checkpoints:
        check_writable(location)
    config = JobConfig(
        mode=Mode.parse(mode),
        checkpoint_dir=location,
        checkpoint=checkpoint,
        restart=parse_restart(restart) if restart is not None else FixedDelayRestart(3, 0.5),
        parallelism=parallelism,
        fresh=fresh,
        allow_non_replayable=allow_non_replayable,
        batch_size=batch_size,
        channel_capacity=channel_capacity,
        progress=progress,
        alignment_timeout=None if alignment_timeout is None else parse_duration(alignment_timeout, what="alignment timeout"),
        max_inflight_bytes=max_inflight_bytes,
        state_backend=state_backend,
        incremental=incremental,
        compression=compression,
        state_dir=Path(state_dir) if state_dir is not None else None,
        from_savepoint=Path(from_savepoint) if from_savepoint is not None else None,
        allow_non_restored_state=allow_non_restored_state,
        drop_sink_state=drop_sink_state,
        savepoint_dir=Path(savepoint_dir) if savepoint_dir is not None else None,
        control_endpoint=control_endpoint,
        control_host=control_host,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        executor=executor,
        workers=workers,
    )
    return JobRunner(flow, config, failpoints=failpoints, clock=clock, control=control).run()
