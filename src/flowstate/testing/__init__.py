"""Tools to prove a job's exactly-once guarantee on your own machine and in your own CI.

- ``flowstate.testing.chaos``: the chaos runner behind ``flowstate chaos JOB.py``: kills a job at
  random moments and at every failpoint, restarts it, and compares its committed output with a run
  without failures.
- ``flowstate.testing.pytest_plugin``: the ``flowstate_chaos`` fixture (installed with flowstate).
- ``flowstate.testing.oracles``: workloads with checkers that share no code with the engine.
- ``flowstate.testing.conformance``: the checks every source and sink connector must pass against
  its real server (recovery symmetry at every cut, re-commit idempotence, crashes at sink failpoints).
"""

from flowstate.testing.chaos import (
    ChaosConfig,
    ChaosReport,
    Progress,
    ScenarioResult,
    run_chaos,
)
from flowstate.testing.oracles import Oracle

__all__ = ["ChaosConfig", "ChaosReport", "Oracle", "Progress", "ScenarioResult", "run_chaos"]
