"""A short chaos campaign of one oracle workload, as the workload tests of this folder run it: the
job file written into a fresh directory, a few kills at random moments and at the given failpoints,
on real processes."""

from __future__ import annotations

from typing import Any

import pytest

from flowstate.testing.chaos import ChaosConfig, ChaosReport, run_chaos


def short_campaign(tmp_path_factory: pytest.TempPathFactory, name: str, job_function: str, *, backend: str,
                   parallelism: int, modes: tuple[str, ...], failpoints: tuple[str, ...], rate: float, seed: int,
                   oracle: Any) -> ChaosReport:
    """``job_function``: ``module:function`` of a workload's job, called as ``function('out',
    parallelism=…, rate=…)``."""
    module, function = job_function.split(":")
    root = tmp_path_factory.mktemp(name)
    job = root / "job.py"
    job.write_text(f"from {module} import {function}\n"
                   f"flow = {function}('out', parallelism={parallelism}, rate={rate})\n")
    config = ChaosConfig(str(job), modes=modes, kills=2, failpoint_kills=1, failpoints=failpoints, seed=seed,
                         checkpoint_interval="50ms", batch_size=64, workers=2, state_backend=backend,
                         oracles=(oracle,))
    return run_chaos(config, root / "runs")
