"""Tools to prove a job's exactly-once guarantee on your own machine and in your own CI.

- ``flowstate.testing.chaos``: the chaos runner behind ``flowstate chaos JOB.py``: kills a job at
  random moments and at every failpoint, restarts it, and compares its committed output with a run
  without failures.
- ``flowstate.testing.pytest_plugin``: the ``flowstate_chaos`` fixture (installed with flowstate).
- ``flowstate.testing.oracles``: workloads with checkers that share no code with the engine.
- ``flowstate.testing.conformance``: the checks every source and sink connector must pass against
  its real server (recovery symmetry at every cut, re-commit idempotence, crashes at sink failpoints).
- ``flowstate.testing.time``: ``TimedSource`` (records with explicit timestamps and watermarks) and
  ``ManualClock``, to drive late data, idleness and timers deterministically.
"""

from flowstate.testing.chaos import (
    ChaosConfig,
    ChaosReport,
    Progress,
    ScenarioResult,
    run_chaos,
)
from flowstate.testing.oracles import Oracle
from flowstate.testing.time import ManualClock, TimedSource

__all__ = ["ChaosConfig", "ChaosReport", "ManualClock", "Oracle", "Progress", "ScenarioResult", "TimedSource", "run_chaos"]
