"""``flowstate.run``: run a dataflow from Python with the settings of ``flowstate.options``."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from flowstate.checkpoint.coordinator import CheckpointConfig
from flowstate.clock import Clock
from flowstate.config import JobConfig, Mode
from flowstate.control.endpoint import JobControl
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError
from flowstate.failpoints import Failpoints
from flowstate.options import (
    FLAT_KEYWORDS,
    GROUPS,
    CheckpointOptions,
    EndpointOptions,
    ExecutionOptions,
    RecoveryOptions,
    StateOptions,
    from_flat,
    target,
)
from flowstate.runner.job import JobRunner
from flowstate.runner.result import JobResult
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
    checkpoints: CheckpointOptions | None = None,
    state: StateOptions | None = None,
    recovery: RecoveryOptions | None = None,
    execution: ExecutionOptions | None = None,
    endpoints: EndpointOptions | None = None,
    control: JobControl | None = None,
    failpoints: Failpoints | None = None,
    clock: Clock | None = None,
    **flat: Any,
) -> JobResult:
    """Run ``flow`` until its bounded input is exhausted and its output committed (or forever, for an
    unbounded source). A run with the same ``checkpoints.checkpoint_dir`` after a crash resumes from
    the latest completed checkpoint. Raises ``JobFailedError`` when the restart strategy gives up.

    The settings come in the groups of ``flowstate.options`` (each omitted group takes its
    defaults), the same fields the options of ``flowstate run`` are made from: durations as seconds,
    ``timedelta`` or strings such as ``"500ms"``, ``mode="unaligned"``, ``restart="fixed:3:0.5"``.
    ``control`` (a ``JobControl``) takes control requests from another thread of this process.
    Under the ``processes`` and ``ray`` executors user functions run in the workers: what they change
    in this process's memory is not seen here.

    Deprecated: the flat keywords of earlier releases (``checkpoint_dir=``, ``interval=``, …, each
    the name of the ``JobConfig`` attribute its field sets) still work for this release, with a
    ``DeprecationWarning``; they are applied on top of the groups given."""
    if not isinstance(flow, Dataflow):
        raise ConfigError(f"run() takes a flowstate.Dataflow, got {type(flow).__name__}")
    groups: dict[str, Any] = {"checkpoints": checkpoints, "state": state, "recovery": recovery,
                              "execution": execution, "endpoints": endpoints}
    for keyword, group in groups.items():
        if group is not None and not isinstance(group, GROUPS[keyword]):
            raise ConfigError(f"run({keyword}=...) takes a {GROUPS[keyword].__name__}, got {type(group).__name__}")
    if flat:
        warnings.warn(
            f"flat keywords of fs.run ({', '.join(sorted(flat))}) are deprecated: pass "
            + ", ".join(sorted({f"{FLAT_KEYWORDS[k][0]}={GROUPS[FLAT_KEYWORDS[k][0]].__name__}(...)"
                                for k in flat if k in FLAT_KEYWORDS})),
            DeprecationWarning, stacklevel=2)
        groups = from_flat(groups, flat)
    config = job_config(**{k: g if g is not None else GROUPS[k]() for k, g in groups.items()})
    return JobRunner(flow, config, failpoints=failpoints, clock=clock, control=control).run()


def job_config(*, checkpoints: CheckpointOptions, state: StateOptions, recovery: RecoveryOptions,
               execution: ExecutionOptions, endpoints: EndpointOptions) -> JobConfig:
    """The ``JobConfig`` the groups describe (each field sets its ``target``); a local checkpoint
    directory is checked for writing first."""
    values: dict[str, Any] = {}
    for group in (checkpoints, state, recovery, execution, endpoints):
        values.update((target(f), getattr(group, f.name)) for f in fields(group))
    try:
        values["checkpoint"] = CheckpointConfig(**{f.name: values.pop(f.name) for f in fields(CheckpointConfig)})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    location = _location(values["checkpoint_dir"])
    if isinstance(location, Path) and Mode(checkpoints.mode).checkpoints:
        check_writable(location)
    values["checkpoint_dir"] = location
    return JobConfig(**values)
