"""The settings of ``fs.run`` and ``flowstate run``, declared once, in five typed groups.

    fs.run(flow,
           checkpoints=fs.CheckpointOptions(checkpoint_dir="chk", interval="500ms"),
           state=fs.StateOptions(backend="rocksdb"),
           recovery=fs.RecoveryOptions(restart="fixed:3:0.5"),
           execution=fs.ExecutionOptions(parallelism=4),
           endpoints=fs.EndpointOptions(metrics_port=9249))

Rules:

1. Each field is one setting. Its metadata (made by ``option``) carries the help text and the flag
   of its ``flowstate run`` option; the command line is built from these fields and nothing else,
   so a new field is a new option (a test holds the two in step).
2. A duration field takes seconds (``int``/``float``), a ``timedelta`` or a string such as
   ``"500ms"``, ``"30s"``, ``"1h30m"``; after construction it holds float seconds. The same reader
   (``flowstate.config.parse_duration``) serves every duration of every command.
3. Strings are read as on the command line: ``mode="unaligned"``, ``restart="fixed:3:0.5"``; paths
   may be strings. A value that cannot be read raises ``ConfigError`` naming it.
4. A field's ``target`` (default: its name) is the ``JobConfig`` attribute it sets; ``to_job_fields``
   turns the groups into ``JobConfig`` keywords without a hand-written mapping. The old flat
   keywords of ``fs.run`` are these target names (``FLAT_KEYWORDS``).

The groups are called *Options* because ``CheckpointConfig`` (the coordinator's, in seconds) and
``JobConfig`` already name the resolved values the runtime reads; an Options group is what a user
writes, in any accepted form.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from flowstate.config import (
    COMPRESSIONS,
    EXECUTORS,
    STATE_BACKENDS,
    FixedDelayRestart,
    Mode,
    RestartStrategy,
    parse_duration,
    parse_restart,
)
from flowstate.errors import ConfigError

Duration = float | int | str | timedelta
"""Seconds, a ``timedelta`` or a string such as ``"500ms"`` (rule 2)."""


def option(default: Any = MISSING, *, help: str, flag: str | None = None, target: str | None = None,
           metavar: str | None = None, cli_default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    """A field of an Options group (rule 1).

    ``flag`` is the ``flowstate run`` option (default ``--`` and the field name with dashes). For a
    ``bool`` field the flag, when given, sets the opposite of ``cli_default`` (``--quiet`` turns
    progress off); ``cli_default`` is the command line's default when it differs from ``fs.run``'s
    (``None`` there meaning: decided by the command from the other options)."""
    metadata = {"help": help, "flag": flag, "target": target, "metavar": metavar, "cli_default": cli_default}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _seconds(group: object, name: str, what: str, *, optional: bool = False) -> None:
    """Rule 2 for ``group.name``, in place (the groups are frozen)."""
    value = getattr(group, name)
    if value is None and optional:
        return
    object.__setattr__(group, name, parse_duration(value, what=what))


def _path(group: object, name: str) -> None:
    value = getattr(group, name)
    if value is not None and not isinstance(value, Path):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a path or a string, not {type(value).__name__}")
        object.__setattr__(group, name, Path(value))


def _choice(value: str | None, choices: tuple[str, ...], what: str) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


def _count(group: object, name: str, minimum: int, *, optional: bool = False) -> None:
    value = getattr(group, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


@dataclass(frozen=True)
class CheckpointOptions:
    """When checkpoints are taken, how, and where they go."""

    mode: Mode | str = option(Mode.EXACTLY_ONCE, help=f"one of {', '.join(m.value for m in Mode)}")
    checkpoint_dir: str | Path | None = option(
        None, help="where checkpoints are written: a directory or an object-store URL such as s3://bucket/prefix "
        "(required unless --mode none)", metavar="DIR")
    interval: Duration | None = option(1.0, help="checkpoint interval, e.g. 0.5, 500ms, 1s", cli_default="1s")
    timeout: Duration = option(600.0, help="checkpoint timeout: a checkpoint not completed within it fails",
                               cli_default="10m")
    min_pause: Duration = option(0.0, help="minimum pause between checkpoints")
    max_concurrent: int = option(1, help="checkpoints in flight at once")
    tolerable_failures: int = option(0, help="failed checkpoints in a row before the job fails")
    retained: int = option(1, help="completed checkpoints kept")
    alignment_timeout: Duration | None = option(
        None, help="exactly_once: switch a checkpoint to unaligned when its alignment lasts longer (e.g. 200ms)")
    max_inflight_bytes: int = option(64 * 1024 * 1024,
                                     help="unaligned: decline a checkpoint whose in-flight data per task exceeds this")
    savepoint_dir: str | Path | None = option(None, help="where savepoints are written (default: CHECKPOINT_DIR/savepoints)",
                                              metavar="DIR")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        _seconds(self, "interval", "checkpoint interval", optional=True)
        _seconds(self, "timeout", "checkpoint timeout")
        _seconds(self, "min_pause", "minimum pause")
        _seconds(self, "alignment_timeout", "alignment timeout", optional=True)
        _path(self, "savepoint_dir")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, Path)):
            raise ConfigError(f"checkpoint_dir must be a path or a URL, not {type(self.checkpoint_dir).__name__}")


@dataclass(frozen=True)
class StateOptions:
    """Where keyed state lives and how its files are written."""

    backend: str = option("heap", help=f"keyed state: {' or '.join(STATE_BACKENDS)}", flag="--state-backend",
                          target="state_backend")
    incremental: bool = option(True, help="rocksdb: every checkpoint uploads all files (default: incremental)",
                               flag="--full-checkpoints")
    heap_incremental: bool = option(
        False, help="heap: incremental snapshots (a base and deltas of the keys changed since the last checkpoint; "
        "each write records its key): worth it when few keys change between checkpoints")
    compression: str = option("zstd", help=f"state file codec: {' or '.join(COMPRESSIONS)}")
    directory: str | Path | None = option(None, help="working directory of rocksdb and of incremental heap snapshots "
                                          "(default: a temporary directory)",
                                          flag="--state-dir", target="state_dir", metavar="DIR")

    def __post_init__(self) -> None:
        _choice(self.backend, STATE_BACKENDS, "state backend")
        _choice(self.compression, COMPRESSIONS, "compression")
        _path(self, "directory")


@dataclass(frozen=True)
class RecoveryOptions:
    """What a run starts from, and what it does after a failure."""

    restart: RestartStrategy | str | None = option(
        default_factory=lambda: FixedDelayRestart(3, 0.5), cli_default="fixed:3:0.5",
        help="none, fixed:ATTEMPTS:DELAY or exponential:ATTEMPTS:INITIAL:MAX")
    fresh: bool = option(False, help="discard existing checkpoints and start from scratch")
    from_savepoint: str | Path | None = option(
        None, metavar="PATH", help="restore from this savepoint (at any parallelism); running the same command "
        "again after a crash resumes from the run's own newest checkpoint")
    allow_non_restored_state: bool = option(
        False, help="drop state of the restored snapshot that maps to no operator of the job (by uid) "
        "instead of refusing to start")
    drop_sink_state: bool = option(
        False, help="with --allow-non-restored-state: drop a sink's state too, losing the output it "
        "pre-committed (refused otherwise)")
    allow_non_replayable: bool = option(
        False, help="run an exactly-once job with a source that cannot replay (at-most-once for that source)")

    def __post_init__(self) -> None:
        restart = FixedDelayRestart(3, 0.5) if self.restart is None else parse_restart(self.restart)
        object.__setattr__(self, "restart", restart)
        _path(self, "from_savepoint")


@dataclass(frozen=True)
class ExecutionOptions:
    """Where and how wide the tasks run."""

    parallelism: int | None = option(None, help="default parallelism of the job's operators")
    executor: str | None = option(
        None, help="where tasks run: threads of this process, worker processes, or Ray actors "
        "(default: processes when an operator has parallelism > 1, else threads)")
    workers: int | None = option(None, help="worker processes (default: one per core, at most the parallelism)")
    batch_size: int = option(2048, help="records per batch")
    channel_capacity: int = option(8, help="batches a channel holds before its producer waits (back-pressure)")
    progress: bool = option(False, cli_default=True, flag="--quiet", help="no progress lines")

    def __post_init__(self) -> None:
        _choice(self.executor, EXECUTORS, "executor")
        _count(self, "parallelism", 1, optional=True)
        _count(self, "workers", 1, optional=True)
        _count(self, "batch_size", 1)
        _count(self, "channel_capacity", 1)


@dataclass(frozen=True)
class EndpointOptions:
    """What the job serves while it runs: control (``flowstate status | checkpoint | savepoint | stop``)
    and metrics with the dashboard."""

    control: bool = option(False, flag="--no-control", target="control_endpoint", cli_default=None,
                           help="serve no control endpoint (flowstate status/checkpoint/savepoint/stop)")
    control_host: str = option("127.0.0.1", help="address of the control endpoint (loopback only by default)")
    metrics_port: int | None = option(
        None, metavar="PORT", help="serve Prometheus metrics (/metrics) and the dashboard (/) on this port (0: any free one)")
    metrics_host: str = option("127.0.0.1", help="address of the metrics and dashboard server (loopback only by default)")


GROUPS: dict[str, type] = {
    "checkpoints": CheckpointOptions,
    "state": StateOptions,
    "recovery": RecoveryOptions,
    "execution": ExecutionOptions,
    "endpoints": EndpointOptions,
}
"""The keyword of ``fs.run`` for each group."""


def target(f: Any) -> str:
    """The ``JobConfig`` attribute (and old flat keyword of ``fs.run``) that field ``f`` sets."""
    return f.metadata["target"] or f.name


FLAT_KEYWORDS: dict[str, tuple[str, str]] = {
    target(f): (keyword, f.name) for keyword, group in GROUPS.items() for f in fields(group)
}
"""Old flat keyword of ``fs.run`` → (group keyword, field name)."""


def from_flat(groups: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """``groups`` (keyword → group or ``None``) with the old flat keywords in ``flat`` applied on top."""
    unknown = sorted(set(flat) - set(FLAT_KEYWORDS))
    if unknown:
        raise TypeError(f"run() got unexpected keyword argument(s): {', '.join(unknown)}")
    values: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        keyword, field_name = FLAT_KEYWORDS[name]
        values.setdefault(keyword, {})[field_name] = value
    result = dict(groups)
    for keyword, changes in values.items():
        base = groups.get(keyword)
        current = {f.name: getattr(base, f.name) for f in fields(base)} if base is not None else {}
        result[keyword] = GROUPS[keyword](**{**current, **changes})
    return result
