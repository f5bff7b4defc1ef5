"""Job configuration: the snapshot mode, checkpoint settings, restart strategies, durations."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from flowstate.checkpoint.coordinator import CheckpointConfig
from flowstate.errors import ConfigError


class Mode(Enum):
    """How (and whether) a job takes checkpoints. The value is the name used on the command line."""

    EXACTLY_ONCE = "exactly_once"
    """Aligned barriers (Chandy-Lamport as in Flink): exactly-once state and, with 2PC sinks, output."""
    AT_LEAST_ONCE = "at_least_once"
    """Barriers are counted, never block: after a failure some records are processed twice."""
    UNALIGNED = "unaligned"
    """Barriers overtake in-flight data, which is persisted with the checkpoint: exactly-once, and
    checkpoints complete even under back-pressure."""
    STOP_THE_WORLD = "stop_the_world"
    """Sources pause, in-flight data drains, every task snapshots, sources resume: exactly-once, slow."""
    NONE = "none"
    """No checkpoints: after a failure the job starts again from scratch (at-most-once output)."""

    @property
    def exactly_once(self) -> bool:
        return self in (Mode.EXACTLY_ONCE, Mode.UNALIGNED, Mode.STOP_THE_WORLD)

    @property
    def checkpoints(self) -> bool:
        return self is not Mode.NONE

    @classmethod
    def parse(cls, value: Mode | str) -> Mode:
        if isinstance(value, Mode):
            return value
        normal = str(value).strip().lower().replace("-", "_")
        for mode in cls:
            if mode.value == normal:
                return mode
        raise ConfigError(f"unknown mode {value!r}: choose one of {', '.join(m.value for m in cls)}")


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds from ``0.5``, a ``timedelta``, ``"500ms"``, ``"1s"``, ``"2m"`` (or ``"2min"``),
    ``"1h30m"``: the one reader of every duration that ``fs.run`` and the command line take
    (``flowstate.time.duration`` rules 1-2). Refusals are ``ConfigError``s naming ``what``."""
    from flowstate.time.duration import parse_duration as seconds_of

    if value is None or isinstance(value, bool):
        raise ConfigError(f"cannot read {what} {value!r}: {_FORMS}")
    try:
        seconds = seconds_of(value.replace("min", "m") if isinstance(value, str) else value, what,
                             allow_negative=True)
    except ValueError:
        raise ConfigError(f"cannot read {what} {value!r}: {_FORMS}") from None
    if seconds < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    return seconds


_FORMS = "use seconds, a timedelta or a unit, e.g. 0.5, 500ms, 1s, 2m, 1h30m"


# ---- restart strategies (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoRestart:
    """Fail the job on the first failure."""

    def delay(self, failures: int) -> float | None:
        return None


@dataclass(frozen=True, slots=True)
class FixedDelayRestart:
    """Restart up to ``attempts`` times, waiting ``delay`` seconds before each."""

    attempts: int = 3
    delay_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.delay_seconds < 0:
            raise ConfigError("fixed-delay restart needs attempts ≥ 0 and delay ≥ 0")

    def delay(self, failures: int) -> float | None:
        """Seconds to wait before restart number ``failures`` (1-based), or None to give up."""
        return self.delay_seconds if failures <= self.attempts else None


@dataclass(frozen=True, slots=True)
class ExponentialBackoffRestart:
    """Restart up to ``attempts`` times, waiting ``initial``, ``initial*multiplier``, … up to ``maximum``."""

    attempts: int = 10
    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.initial < 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ConfigError("exponential backoff needs attempts ≥ 0, 0 ≤ initial ≤ maximum, multiplier ≥ 1")

    def delay(self, failures: int) -> float | None:
        if failures > self.attempts:
            return None
        return min(self.maximum, self.initial * self.multiplier ** (failures - 1))


RestartStrategy = NoRestart | FixedDelayRestart | ExponentialBackoffRestart


def parse_restart(value: RestartStrategy | str) -> RestartStrategy:
    """A restart strategy, or one written as ``none``, ``fixed:ATTEMPTS:DELAY`` or
    ``exponential:ATTEMPTS:INITIAL:MAX`` (how ``--restart`` and ``fs.run(restart=...)`` take it)."""
    if isinstance(value, (NoRestart, FixedDelayRestart, ExponentialBackoffRestart)):
        return value
    if not isinstance(value, str):
        raise ConfigError(
            f"restart must be a restart strategy or a string such as 'fixed:3:0.5', not {type(value).__name__}"
        )
    text = value
    parts = text.split(":")
    try:
        if parts[0] == "none" and len(parts) == 1:
            return NoRestart()
        if parts[0] == "fixed" and len(parts) in (1, 2, 3):
            attempts = int(parts[1]) if len(parts) > 1 else 3
            delay = parse_duration(parts[2], what="restart delay") if len(parts) > 2 else 0.5
            return FixedDelayRestart(attempts, delay)
        if parts[0] == "exponential" and len(parts) in (1, 2, 3, 4):
            attempts = int(parts[1]) if len(parts) > 1 else 10
            initial = parse_duration(parts[2], what="initial backoff") if len(parts) > 2 else 0.1
            maximum = parse_duration(parts[3], what="maximum backoff") if len(parts) > 3 else 10.0
            return ExponentialBackoffRestart(attempts, initial, maximum)
    except ValueError:
        pass
    raise ConfigError(
        f"cannot read restart strategy {text!r}: use none, fixed:ATTEMPTS:DELAY or exponential:ATTEMPTS:INITIAL:MAX"
    )


STATE_BACKENDS = ("heap", "rocksdb")
COMPRESSIONS = ("zstd", "none")
EXECUTORS = ("threads", "processes", "ray")
"""The executors a job can run on (``JobConfig.executor``)."""


@dataclass(frozen=True)
class JobConfig:
    """Everything ``flowstate.run`` needs besides the dataflow itself."""

    mode: Mode = Mode.EXACTLY_ONCE
    checkpoint_dir: Path | str | None = None
    """A local directory (``Path``) or an object-store URL such as ``s3://bucket/prefix`` (``str``)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    restart: RestartStrategy = field(default_factory=lambda: FixedDelayRestart(3, 0.5))
    parallelism: int | None = None
    """Overrides the dataflow's default parallelism."""
    fresh: bool = False
    """Ignore existing checkpoints and start from scratch."""
    allow_non_replayable: bool = False
    """Run an exactly-once job although a source cannot replay (its guarantee drops to at-most-once)."""
    batch_size: int = 2048
    channel_capacity: int = 8
    """Batches a channel holds before its producer waits (back-pressure)."""
    progress: bool = False
    """Print progress (records/s, checkpoints) to stderr once a second."""
    alignment_timeout: float | None = None
    """``exactly_once`` only: an alignment that lasts longer switches its checkpoint to unaligned."""
    max_inflight_bytes: int = 64 * 1024 * 1024
    """Unaligned checkpoints: a task declines a checkpoint whose in-flight data exceeds this."""
    state_backend: str = "heap"
    """Where keyed state lives: ``heap`` (Python dicts) or ``rocksdb`` (embedded, larger than memory)."""
    incremental: bool = True
    """A checkpoint uploads only the files the previous ones did not (shared files): ``rocksdb``'s
    SST files, the ``heap``'s chain of a base and deltas (``flowstate.state.heap_chain``). Off: every
    checkpoint writes the whole state."""
    heap_incremental: bool = False
    """``heap``: incremental snapshots, a chain of a base and deltas of the keys changed since the last
    checkpoint (``flowstate.state.heap_chain``); every write then records its key. Worth it when few
    keys change between two checkpoints."""
    compression: str = "zstd"
    """Codec of state files: ``zstd`` or ``none``."""
    state_dir: Path | None = None
    """Local working directory of the ``rocksdb`` backend (default: a temporary directory)."""
    from_savepoint: Path | None = None
    """Restore from this savepoint (or any directory holding one snapshot) rather than from scratch;
    once the run has checkpoints of its own, a restart resumes from the newest of them."""
    allow_non_restored_state: bool = False
    """Drop, with a warning, state of the restored snapshot that maps to no operator of the job."""
    drop_sink_state: bool = False
    """With ``allow_non_restored_state``: drop a sink's state too (the output its snapshot
    pre-committed is never published); without it such a restore is refused."""
    savepoint_dir: Path | None = None
    """Where savepoints go unless a request names another directory (default: ``savepoints/`` in
    the checkpoint directory)."""
    control_endpoint: bool = False
    """Serve the control endpoint (status, checkpoint, savepoint, stop) for ``flowstate status``…"""
    control_host: str = "127.0.0.1"
    metrics_port: int | None = None
    """Serve Prometheus metrics (``/metrics``) and the dashboard (``/``) on this port (0: any free one)."""
    metrics_host: str = "127.0.0.1"

    @property
    def savepoints(self) -> Path | None:
        """The default directory of savepoints."""
        if self.savepoint_dir is not None:
            return self.savepoint_dir
        if isinstance(self.checkpoint_dir, Path):
            return self.checkpoint_dir / "savepoints"
        return None  # no checkpoints, or object storage: a savepoint request names its directory
    executor: str | None = None
    """Where tasks run: ``threads`` (of this process), ``processes`` (worker processes started by it)
    or ``ray`` (Ray actors). ``None``: ``processes`` when an operator runs more than one subtask, else
    ``threads``."""
    workers: int | None = None
    """Worker processes (``processes``, ``ray``); default one per core for ``processes``, one per
    subtask of the widest operator for ``ray``; never more than the widest operator has subtasks."""

    def __post_init__(self) -> None:
        if self.mode.checkpoints and self.checkpoint_dir is None:
            raise ConfigError(
                f"mode {self.mode.value} takes checkpoints and needs a checkpoint directory "
                "(--checkpoint-dir DIR, or checkpoint_dir=...); use mode 'none' to run without"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.channel_capacity < 1:
            raise ConfigError(f"channel_capacity must be ≥ 1, got {self.channel_capacity}")
        if self.parallelism is not None and self.parallelism < 1:
            raise ConfigError(f"parallelism must be ≥ 1, got {self.parallelism}")
        if self.alignment_timeout is not None:
            if self.mode is not Mode.EXACTLY_ONCE:
                raise ConfigError(
                    f"an alignment timeout applies to mode exactly_once (aligned checkpoints), not {self.mode.value}"
                )
            if self.alignment_timeout < 0:
                raise ConfigError(f"alignment timeout must be ≥ 0, got {self.alignment_timeout}")
        if self.state_backend not in STATE_BACKENDS:
            raise ConfigError(
                f"unknown state backend {self.state_backend!r}: use one of {', '.join(STATE_BACKENDS)}"
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"unknown compression {self.compression!r}: use one of {', '.join(COMPRESSIONS)}")
        if self.executor is not None and self.executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ConfigError(f"workers must be an integer ≥ 1, got {self.workers!r}")
        if self.max_inflight_bytes < 1:
            raise ConfigError(f"max_inflight_bytes must be ≥ 1, got {self.max_inflight_bytes}")
        if self.control_endpoint and not (self.mode.checkpoints and self.checkpoint_dir is not None):
            raise ConfigError(
                "the control endpoint needs a job that takes checkpoints, with a checkpoint directory "
                "(its token is written there)"
            )
