"""Workloads whose correctness can be checked without trusting the engine.

Each oracle module defines a job and a checker. The checkers read what the job left on disk (the
committed output files, the checkpoint directory) with nothing but the standard library: they share
no code with the engine's storage, state or runtime, so a bug there cannot make its own check pass.

- ``sequence``: every source split emits ``(source, seq)``; the checker counts lost, duplicated and
  out-of-order records per source, and checks every completed checkpoint as a consistent cut.
- ``bank``: transfers between keyed accounts across two shuffles; the checker loads every completed
  checkpoint and asserts that balances plus in-flight credits equal the opening total (the
  Chandy-Lamport consistent-cut invariant).
- ``windows``, ``joins``, ``ttl``: event-time jobs (session and tumbling windows; the interval join,
  the window join and ``join_latest``; per-key counters in ttl state); each checker recomputes the
  committed rows with a plain batch computation of the same input and rules.

An ``Oracle`` bundles a workload's checks for ``flowstate.testing.chaos``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstate.errors import ConfigError
from flowstate.jobfile import job_code, namespace

OutputCheck = Callable[[Mapping[str, Path], str], list[str]]
"""(committed output directory of each ``FileSink``, by operator uid; mode) → problems found."""
CheckpointCheck = Callable[[Path, str], list[str]]
"""(checkpoint directory; mode) → problems found."""


@dataclass(frozen=True, slots=True)
class Oracle:
    """Independent checks of one workload, as the chaos runner calls them.

    ``check_checkpoints`` runs after **every** run of a job, killed or not, on its checkpoint
    directory; ``check_output`` once a job has completed, on its committed output. Each returns a
    list of problems (empty: nothing wrong); a check that does not apply to a mode returns ``[]``.
    """

    name: str
    check_output: OutputCheck | None = None
    check_checkpoints: CheckpointCheck | None = None


EXACTLY_ONCE_MODES = frozenset({"exactly_once", "unaligned", "stop_the_world"})
"""Modes whose checkpoints are consistent cuts and whose ``FileSink`` output is exactly-once."""


def load_oracle(spec: str) -> Any:
    """The ``flowstate.testing.Oracle`` named by ``FILE.py:ATTR`` or ``module:ATTR`` (ATTR default
    ``oracle``), or returned by the function it names."""
    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "oracle")
    names = namespace(target, "oracle")
    if attr not in names:
        raise ConfigError(f"{target} has no attribute {attr!r}")
    obj = names[attr]
    if callable(obj) and not isinstance(obj, Oracle):
        obj = job_code(f"oracle {spec}", obj)
    if not isinstance(obj, Oracle):
        raise ConfigError(f"oracle {spec!r} is a {type(obj).__name__}, not a flowstate.testing.Oracle")
    return obj
