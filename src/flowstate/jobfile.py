"""Loading what a command names: a job (``FILE.py``, ``FILE.py:ATTR``, ``package.module:ATTR``) or an
oracle. Whatever the loaded code raises is a mistake in it: a ``ConfigError`` (exit 2) naming the
file and, where it can, the line."""

from __future__ import annotations

import importlib
import runpy
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, FlowstateError

T = TypeVar("T")


def load_dataflow(spec: str) -> Dataflow:
    """The Dataflow named by ``FILE.py``, ``FILE.py:ATTR`` or ``package.module:ATTR``.

    ATTR may name a Dataflow or a function without arguments that returns one. Without ATTR, the
    file must define exactly one module-level Dataflow."""
    target, attr = spec, ""
    if ":" in spec and not Path(spec).exists():
        target, attr = spec.rsplit(":", 1)
    names = namespace(target, "job")
    if attr:
        if attr not in names:
            raise ConfigError(f"{target} has no attribute {attr!r}")
        obj = names[attr]
        if callable(obj) and not isinstance(obj, Dataflow):
            obj = job_code(f"{target}:{attr}()", obj, str(Path(target)) if target.endswith(".py") else None)
        if not isinstance(obj, Dataflow):
            raise ConfigError(f"{target}:{attr} is a {type(obj).__name__}, not a flowstate.Dataflow")
        return obj
    flows = {k: v for k, v in names.items() if isinstance(v, Dataflow)}
    if len(flows) == 1:
        return next(iter(flows.values()))
    if not flows:
        raise ConfigError(f"{target} defines no module-level flowstate.Dataflow; name one with {target}:ATTR")
    raise ConfigError(f"{target} defines several Dataflows ({', '.join(sorted(flows))}); choose one with {target}:ATTR")


def namespace(target: str, what: str) -> dict[str, Any]:
    """The globals of ``FILE.py`` (run as a script, its directory put on ``sys.path``) or of an
    importable module; ``what`` names it in errors ("job", "oracle")."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{what} file {target} does not exist")
        sys.path.insert(0, str(path.resolve().parent))
        return job_code(f"{what} file {target}", lambda: runpy.run_path(str(path), run_name=f"__flowstate_{what}__"),
                         str(path))
    try:
        return vars(importlib.import_module(target))
    except ImportError as exc:
        raise ConfigError(f"cannot import {what} module {target!r}: {exc}") from None


def job_code(what: str, call: Callable[[], T], filename: str | None = None) -> T:
    """``call()``, which runs code of the job. Whatever it raises (a syntax error, a failed import, a
    source whose files are missing, …) is a mistake in the job, so it becomes a ``ConfigError``
    (exit 2) naming ``what`` and, when the error passed through ``filename``, the line there."""
    try:
        return call()
    except FlowstateError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        where = f", line {lines[-1]}," if lines else ""
        raise ConfigError(f"{what}{where} raised {type(exc).__name__}: {exc}") from exc
