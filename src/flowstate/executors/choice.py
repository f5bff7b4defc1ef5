"""Which executor runs a job, with how many workers, and a new executor for each attempt."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from flowstate.clock import Clock
from flowstate.config import JobConfig
from flowstate.connectors.print_sink import BatchCallbackSink, CallbackSink
from flowstate.errors import ConfigError
from flowstate.executors.base import Executor
from flowstate.executors.threads import ThreadExecutor
from flowstate.graph import JobGraph
from flowstate.task.factory import TaskSite, build_tasks

if TYPE_CHECKING:
    from flowstate.executors.forkserver import ForkServerHandle


def choose_executor(config: JobConfig, graph: JobGraph) -> tuple[str, int]:
    """The executor of a job and its number of workers.

    Rules: ``config.executor`` when set, else ``processes`` when some vertex runs more than one
    subtask (or ``config.workers`` is set) and ``threads`` otherwise. ``processes`` defaults to one
    worker per core, ``ray`` to one per subtask of the widest vertex; neither uses more workers than
    the widest vertex has subtasks. ``threads`` has no workers (0).

    A sink that calls a function of this process (``CallbackSink``, ``BatchCallbackSink``, or a
    callable given to ``sink``) must run in this process: in a worker it would call a copy of the
    function, and what it collects would never reach the caller. Such a job runs on ``threads``
    unless ``processes`` or ``ray`` (or ``workers``) was asked for, which is refused."""
    widest = max(v.parallelism for v in graph.vertices)
    callbacks = [n.name for v in graph.vertices for n in v.chain
                 if n.kind == "sink" and isinstance(n.fn, (CallbackSink, BatchCallbackSink))]
    asked = config.executor or ("processes" if config.workers is not None else None)
    if callbacks and asked in ("processes", "ray"):
        raise ConfigError(
            f"sink {callbacks[0]!r} calls a function of this process, but the {asked} executor would call a copy "
            "of it in a worker process, so this process would never see a record; run with executor threads, "
            "or write to a FileSink"
        )
    name = config.executor or ("processes" if (widest > 1 and not callbacks) or config.workers is not None
                               else "threads")
    if name == "threads":
        if config.workers is not None:
            raise ConfigError(
                f"workers={config.workers} needs the processes or ray executor; the threads executor runs "
                "every task in this process"
            )
        return name, 0
    if name == "processes" and os.name != "posix":
        raise ConfigError("the processes executor needs a POSIX system (Linux, macOS); use executor threads")
    default = (os.cpu_count() or 1) if name == "processes" else widest
    return name, min(config.workers or default, widest)


def new_executor(name: str, workers: int, graph: JobGraph, clock: Clock, *, site: TaskSite,
                 hold: tuple[int, ...] = (), forkserver: ForkServerHandle | None = None) -> Executor:
    """A new executor for one attempt. ``site``: the storage client, clock and savepoint routes that
    tasks built in this process share with the coordinator's shell (``threads``); ``hold``:
    descriptors every worker process keeps open (the checkpoint directory's lock); ``forkserver``:
    the run's fork server (``processes``)."""
    if name == "processes":
        from flowstate.executors.processes import ProcessExecutor

        return ProcessExecutor(graph, workers, clock, hold=hold, forkserver=forkserver)
    if name == "ray":
        from flowstate.executors.ray_cluster import RayExecutor

        return RayExecutor(graph, workers, clock)
    return ThreadExecutor(lambda plan, reports, pool: build_tasks(plan, reports, pool, site), clock)
