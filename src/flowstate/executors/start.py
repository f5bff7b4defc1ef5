"""How a worker process starts: the one value it receives (``WorkerStart``) and the body it runs
(``worker_main``), the same for a fresh interpreter (``python -m flowstate.executors.start``) and a
fork of the run's fork server (``flowstate.executors.forkserver``). The rules are those of
``flowstate.executors.processes`` (rules 1 and 2).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NoReturn

from flowstate.executors.protocol import Address, Placement
from flowstate.failpoints import SharedCounts


@dataclass(frozen=True, slots=True)
class WorkerStart:
    """Everything a worker process receives from the coordinator, as one value pickled into its
    standard input: the packed plan, where it stands, and how to behave as the coordinator's
    process does."""

    job: bytes
    """The attempt's plan (``flowstate.task.plan.pack``), the same bytes for every worker."""
    placement: Placement
    worker: int
    coordinator: Address
    token: str
    host: str
    parent: int
    """The coordinator's pid (rule 2)."""
    path: tuple[str, ...]
    """The coordinator's ``sys.path``: modules of the job import from the same places."""
    counts: SharedCounts | None
    """The failpoints' shared counts, whose descriptor the worker received."""
    log_level: int
    log_format: str | None
    """``text`` or ``json`` when the coordinator's ``flowstate`` logger has handlers (the command
    line's ``--log-format``), else ``None``."""


def worker_main(descriptors: Mapping[int, int] | None = None) -> NoReturn:
    """The body of a worker process, ``python -m flowstate.executors.start`` or a fork of the fork
    server: read the ``WorkerStart``, serve, exit. ``descriptors``: the number each descriptor that
    the start names (by its number in the coordinator) has in this process, when they differ (the
    fork server received them)."""
    code = 1
    try:
        # Rule 2: the coordinator decides about Ctrl-C and SIGTERM (systemd sends SIGTERM to a
        # service's every process), stops the job and ends the workers.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        start: WorkerStart = pickle.load(sys.stdin.buffer)
        die_with_parent(start.parent)
        if descriptors and start.counts is not None:
            start = replace(start, counts=replace(start.counts, fd=descriptors[start.counts.fd]))
        with open(os.devnull, "rb") as devnull:  # the start is read; the job's code gets no input
            os.dup2(devnull.fileno(), 0)
        sys.path[:] = [p for p in start.path if p not in sys.path] + sys.path
        if start.log_format is not None:
            from flowstate.observe.logs import setup

            setup(logging.getLevelName(start.log_level).lower(), start.log_format)
        logging.getLogger("flowstate").setLevel(start.log_level)
        from flowstate.executors.worker import serve

        code = serve(start.job, start.placement, start.worker, start.coordinator, start.token, start.host,
                     counts=start.counts)
    except BaseException:  # noqa: BLE001 - the process ends here whatever happened
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # No interpreter shutdown: it would wait for threads of the job that may never end.
        os._exit(code)


def die_with_parent(parent: int) -> None:
    """Rule 2: SIGKILL this process when its parent exits (Linux; elsewhere the closed control
    connection does it, a little later). The parent may have died before the request was made."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


if __name__ == "__main__":  # a worker process started as a fresh interpreter
    worker_main()
