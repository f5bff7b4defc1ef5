"""The cluster executor: workers are Ray actors, the coordinator is the Ray driver (this process).

Install with ``pip install 'flowstate[ray]'``. Rules:

1. Ray places the workers: one actor per worker, each asking for one CPU. An actor runs the same
   worker loop as a worker process (``flowstate.executors.worker.serve``): it connects to the
   coordinator's control listener and to its peers **directly** over TCP, and records flow between
   workers in frames over those connections, never through actor calls or Ray's object store.
2. Each actor receives the attempt's plan packed as for a worker process (``flowstate.task.plan``
   ``pack``: lambdas and closures travel by value; classes of importable modules by reference, so
   those modules must be importable where the actors run), opens its own client of the checkpoint storage
   from the plan's spec and loads the state of its own tasks: after a failure the new actors restore
   from the restore point. A local checkpoint directory must be a file system that every node sees
   at the same path (the plan names it by its absolute path); object storage (``s3://``) is reached
   by every actor with its own ``AWS_*`` environment.
3. A worker's death is noticed when its control connection closes; Ray says how it ended (the
   actor died, or its loop returned). Failover is that of ``flowstate.executors.processes``: the
   attempt fails, every actor of it is killed, the next attempt starts new actors, all restored from
   the latest completed checkpoint.
4. Failpoints travel with the job but count hits per actor: ``@N`` counts the hits of one process.
5. The coordinator binds its control listener to this node's IP as Ray knows it
   (``ray.util.get_node_ip_address()``), and each actor its data listener to its own node's IP. A Ray
   started with ``--node-ip-address 127.0.0.1`` keeps every connection on loopback.

Ray is connected to when the first attempt starts: ``ray.init()`` unless the program did it before
(``ray.init(address=...)`` to join a cluster).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flowstate.clock import Clock
from flowstate.errors import ConfigError
from flowstate.executors.processes import WorkerLink, WorkerPool
from flowstate.executors.protocol import Address, Placement
from flowstate.task.plan import pack

if TYPE_CHECKING:
    from flowstate.graph import JobGraph
    from flowstate.task.plan import AttemptPlan

def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor 'ray' needs Ray: pip install 'flowstate[ray]' (or run with executor threads or processes)"
        ) from None
    return ray


class FlowstateWorker:
    """The body of a worker actor (made a Ray actor class by ``RayExecutor``; Ray names its process
    ``ray::FlowstateWorker``)."""

    def serve(self, job: bytes, placement: Placement, worker: int, coordinator: Address, token: str) -> int:
        from flowstate.executors.worker import serve

        ray = _ray()
        return serve(job, placement, worker, coordinator, token, ray.util.get_node_ip_address())


class RayExecutor(WorkerPool):
    """Workers as Ray actors (see the module rules)."""

    name = "ray"

    def __init__(self, graph: JobGraph, workers: int, clock: Clock | None = None) -> None:
        super().__init__(graph, workers, clock)
        self._rayapi = _ray()
        if not self._rayapi.is_initialized():
            self._rayapi.init(address=os.environ.get("RAY_ADDRESS"))
        self.host = self._rayapi.util.get_node_ip_address()
        self._actors: dict[int, Any] = {}
        self._calls: dict[int, Any] = {}

    def _spawn(self, plan: AttemptPlan, coordinator: Address, token: str) -> None:
        ray = self._rayapi
        job = pack(plan)
        actor_class = ray.remote(num_cpus=1, max_restarts=0)(FlowstateWorker)
        for link in self._links:
            actor = actor_class.remote()
            self._actors[link.index] = actor
            self._calls[link.index] = actor.serve.remote(job, self._placement, link.index, coordinator, token)
            link.started = True

    def _poll(self, link: WorkerLink) -> str | None:
        if link.ended is None and link.index in self._calls:
            ray = self._rayapi
            call = self._calls[link.index]
            ready, _ = ray.wait([call], timeout=0)
            if ready:
                try:
                    code = ray.get(call)
                except Exception as exc:  # noqa: BLE001 - whatever Ray says about the actor's end
                    link.ended = f"died ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                else:
                    link.ended = f"exited with status {code}"
        return link.ended

    def stop(self, graceful: bool) -> None:
        super().stop(graceful)
        for actor in self._actors.values():  # the loop of each returned, or it was killed already
            self._rayapi.kill(actor, no_restart=True)

    def _kill(self, link: WorkerLink) -> None:
        actor = self._actors.get(link.index)
        if actor is not None and link.ended is None:
            self._rayapi.kill(actor, no_restart=True)
