"""The driver of ``test_ray_executor`` (a script, run inside the test's network namespace).

Starts Ray on loopback, runs the engine tests' word count with ``executor="ray"`` while a thread
kills one worker actor with SIGKILL once a checkpoint completed, and prints one JSON line: the
run's result, the killed pid, the network interfaces of the namespace and the addresses of the Ray
nodes, after ``RESULT``.

    python ray_wordcount.py MODE OUTPUT CHECKPOINTS RAY_TEMP_DIR
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray

import flowstate as fs

from engine.jobs import generator_source, wordcount

LINES = 6000
RATE = 1000.0


def interfaces() -> list[str]:
    """The network interfaces of this process's namespace (``/proc/self/net/dev``, unlike ``/sys``, is
    per namespace)."""
    with open("/proc/self/net/dev") as dev:
        return sorted(line.split(":")[0].strip() for line in dev.readlines()[2:])


def actor_pids() -> list[int]:
    """Processes of the worker actors (Ray titles them ``ray::FlowstateWorker...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    if file.read().startswith(b"ray::FlowstateWorker"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def kill_an_actor_after_a_checkpoint(checkpoints: Path, killed: list[int]) -> None:
    while not any((d / "_metadata").exists() for d in checkpoints.glob("chk-*")):
        time.sleep(0.02)
    time.sleep(0.3)
    victims = actor_pids()
    if victims:
        os.kill(victims[0], signal.SIGKILL)
        killed.append(victims[0])


def main() -> None:
    mode, output, checkpoints, temp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=4, _temp_dir=temp)
    killed: list[int] = []
    killer = threading.Thread(target=kill_an_actor_after_a_checkpoint, args=(checkpoints, killed), daemon=True)
    killer.start()
    flow = wordcount(output, source=generator_source(LINES, rate=RATE))
    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode=mode, checkpoint_dir=checkpoints, interval="100ms"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(5, 0.0)),
        execution=fs.ExecutionOptions(executor="ray", workers=2),
    )
    print("RESULT", json.dumps({
        "executor": result.executor, "workers": result.workers, "restored_from": result.restored_from,
        "records_read": result.records_read, "records_restored": result.records_restored,
        "records_total": result.records_total,
        "failures": result.failures, "killed": killed, "interfaces": interfaces(),
        "nodes": sorted({node["NodeManagerAddress"] for node in ray.nodes()}),
    }), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
