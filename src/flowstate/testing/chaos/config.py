"""The chaos runner's configuration: what to run and how hard."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from flowstate import failpoints as fpn
from flowstate.config import Mode, parse_duration
from flowstate.errors import ConfigError
from flowstate.testing.oracles import Oracle

RANDOM = "random moments"
"""The ``where`` of kills at random moments."""
KILLED = -signal.SIGKILL
RESTORING = re.compile(r"restoring from checkpoint (\d+)")
FROM_SCRATCH = "no completed checkpoint to restore from"
JOB_ENV = "FLOWSTATE_CHAOS_JOB"
"""The environment variable that names each job of a chaos run, uniquely (letters, digits, ``-``,
``_``): a job whose sink writes to a server (a Redis stream, a NATS subject, a Kafka topic) names
its output after it, so that every job, and every chaos run, starts from an empty output."""

# ---- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """What to run and how hard.

    ``job`` is what ``flowstate run`` takes (``FILE.py``, ``FILE.py:ATTR``, ``module:ATTR``), resolved
    from the current directory. ``kills`` counts kills at random moments per mode;
    ``failpoint_kills`` counts kills at each reachable failpoint per mode. ``failpoints`` selects
    failpoints by name (``None``: every known one; ``()``: none).
    """

    job: str
    modes: tuple[str, ...] = ("exactly_once",)
    kills: int = 10
    failpoint_kills: int = 2
    failpoints: tuple[str, ...] | None = None
    seed: int = 0
    checkpoint_interval: float | str = "100ms"
    retained: int = 1
    batch_size: int | None = None
    """Records per batch in every run (None: the engine's default). Small batches put more barriers
    between batches, and more kills between a batch and the next."""
    run_timeout: float | str = 120.0
    max_kills_per_job: int = 3
    workers: int = 1
    oracles: tuple[Oracle, ...] = ()
    state_backend: str = "heap"
    """The keyed state backend of every run (``heap`` or ``rocksdb``)."""
    executor: str = "threads"
    """Where every run's tasks run: ``threads`` or ``processes`` (worker processes; a run is then
    started in a session of its own, and a failpoint's kill ends the run's coordinator, and with it
    every worker process)."""

    def __post_init__(self) -> None:
        if not self.modes:
            raise ConfigError("chaos: give at least one mode")
        for mode in self.modes:
            if not Mode.parse(mode).checkpoints:
                raise ConfigError("chaos: mode none takes no checkpoints, so there is no recovery to test")
        if len(set(map(Mode.parse, self.modes))) != len(self.modes):
            raise ConfigError(f"chaos: a mode is given twice in {list(self.modes)}")
        for name, value in (("kills", self.kills), ("failpoint_kills", self.failpoint_kills)):
            if value < 0:
                raise ConfigError(f"chaos: {name} must be ≥ 0, got {value}")
        for name, value in (("max_kills_per_job", self.max_kills_per_job), ("workers", self.workers),
                            ("retained", self.retained),
                            ("batch_size", 1 if self.batch_size is None else self.batch_size)):
            if value < 1:
                raise ConfigError(f"chaos: {name} must be ≥ 1, got {value}")
        unknown = sorted(set(self.failpoints or ()) - fpn.KNOWN)
        if unknown:
            raise ConfigError(f"chaos: unknown failpoints {', '.join(unknown)}; known: {', '.join(sorted(fpn.KNOWN))}")
        if self.executor not in ("threads", "processes"):
            raise ConfigError(f"chaos: unknown executor {self.executor!r}; known: threads, processes")
        if self.state_backend not in ("heap", "rocksdb"):
            raise ConfigError(f"chaos: unknown state backend {self.state_backend!r}; known: heap, rocksdb")
        parse_duration(self.checkpoint_interval, what="checkpoint interval")
        if parse_duration(self.run_timeout, what="run timeout") <= 0:
            raise ConfigError("chaos: the run timeout must be positive")

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(Mode.parse(m).value for m in self.modes)

    @property
    def selected_failpoints(self) -> list[str]:
        return sorted(fpn.KNOWN if self.failpoints is None else self.failpoints)


def parse_failpoint_selection(text: str) -> tuple[str, ...] | None:
    """``all`` → ``None`` (every known failpoint), ``none`` → ``()``, else a comma list of names."""
    text = text.strip()
    if text == "all":
        return None
    if text == "none":
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())
