"""The ``flowstate_chaos`` fixture: the chaos runner in a test, in a few lines.

Installed with flowstate (a ``pytest11`` entry point), so any test can ask for it::

    def test_my_job_survives_kills(flowstate_chaos):
        report = flowstate_chaos("jobs/my_job.py", kills=20, modes=["exactly_once", "unaligned"])
        assert report.kills >= 20

The call runs ``flowstate.testing.chaos`` in a temporary directory of the test and returns the
``ChaosReport``; on any difference from the run without failures it raises ``ChaosFailure`` (an
``AssertionError``) whose message is the report's table. ``pytest --chaos-kills N`` overrides
``kills`` in every call (e.g. more kills in a nightly build than on every push).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from flowstate.testing.chaos import (
    ChaosConfig,
    ChaosReport,
    parse_failpoint_selection,
    run_chaos,
)
from flowstate.testing.oracles import Oracle


class ChaosFailure(AssertionError):
    """A chaos run found a difference; ``report`` holds everything, the message shows the table."""

    def __init__(self, report: ChaosReport) -> None:
        super().__init__(report.table())
        self.report = report


class ChaosCheck:
    """``check(job, kills=..., modes=..., ...) -> ChaosReport``; raises ``ChaosFailure`` on any difference."""

    def __init__(self, base: Path, kills_override: int | None) -> None:
        self._base = base
        self._kills_override = kills_override
        self._calls = 0

    def __call__(
        self,
        job: str | os.PathLike[str],
        *,
        kills: int = 10,
        modes: Iterable[str] | str = ("exactly_once",),
        failpoints: Iterable[str] | str = "all",
        failpoint_kills: int = 2,
        seed: int = 0,
        checkpoint_interval: float | str = "100ms",
        oracles: Iterable[Oracle] = (),
        **options: Any,
    ) -> ChaosReport:
        """Run the chaos runner on ``job`` (``FILE.py``, ``FILE.py:ATTR`` or ``module:ATTR``). Further
        ``options`` are fields of ``ChaosConfig`` (``batch_size``, ``retained``, ``workers``, …)."""
        self._calls += 1
        if isinstance(modes, str):
            modes = modes.split(",")
        selection = parse_failpoint_selection(failpoints) if isinstance(failpoints, str) else tuple(failpoints)
        config = ChaosConfig(
            job=os.fspath(job), modes=tuple(modes), failpoints=selection, failpoint_kills=failpoint_kills,
            kills=self._kills_override if self._kills_override is not None else kills, seed=seed,
            checkpoint_interval=checkpoint_interval, oracles=tuple(oracles), **options,
        )
        report = run_chaos(config, self._base / f"chaos-{self._calls}")
        if not report.ok:
            raise ChaosFailure(report)
        return report


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("flowstate").addoption(
        "--chaos-kills", type=int, default=None, metavar="N",
        help="kills at random moments per mode in every flowstate_chaos call (overrides the test's value)",
    )


@pytest.fixture
def flowstate_chaos(request: pytest.FixtureRequest, tmp_path: Path) -> ChaosCheck:
    """A callable that runs the chaos runner on a job and fails the test on any difference."""
    return ChaosCheck(tmp_path, request.config.getoption("--chaos-kills"))
