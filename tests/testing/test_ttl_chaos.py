"""The state ttl workload under SIGKILL: per-key counters in event-time ttl state, killed at random
moments and at failpoints on real processes, heap at parallelism 3 and RocksDB at parallelism 1;
what they commit equals a batch computation of the same expiry rule (a counter starts again after
its key expired), every mode's restores used a checkpoint (id ≥ 1) from which a completed run read
only the rest of the input, and over a key space that keeps growing the live entries reported by
``flowstate_operator_state_entries_live`` stay within the bound the rule allows, across a restore.

Between the two short campaigns every exactly-once mode is covered; ``make chaos`` runs the
workload in each of them, at every failpoint, many more times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import flowstate as fs
from flowstate import failpoints as fpn
from flowstate.checkpoint.coordinator import CheckpointConfig
from flowstate.config import FixedDelayRestart, JobConfig, Mode
from flowstate.runner.job import JobRunner
from flowstate.testing import ChaosReport
from flowstate.testing.chaos import RANDOM
from flowstate.testing.oracles import ttl

from .campaigns import short_campaign

pytestmark = pytest.mark.slow

CAMPAIGNS = {
    "heap-p3": ("heap", 3, ("exactly_once",), (fpn.SINK_BEFORE_COMMIT, fpn.TASK_BEFORE_FORWARD)),
    "rocksdb-p1": ("rocksdb", 1, ("unaligned", "stop_the_world"), (fpn.RECOVERY_STATE_LOADED,)),
}
RATE = 3000.0


@pytest.fixture(scope="module", params=sorted(CAMPAIGNS))
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    backend, parallelism, modes, failpoints = CAMPAIGNS[request.param]
    return short_campaign(tmp_path_factory, f"ttl-{request.param}", "flowstate.testing.oracles.ttl:ttl_job", backend=backend,
                          parallelism=parallelism, modes=modes, failpoints=failpoints, rate=RATE, seed=31,
                          oracle=ttl.oracle())


def test_the_input_makes_counters_expire_and_start_again_over_ever_new_keys():
    rows = ttl.expected_rows()
    assert sum(1 for row in rows if row[3] == 1) == ttl.keys_written() * 2  # each key expires once, mid-life
    assert max(row[3] for row in rows) == ttl.PHASE // ttl.KEYS_PER_PHASE and max(row[4] for row in rows) > 10
    assert ttl.keys_written() * ttl.STATES >= 10 * ttl.LIVE_BOUND


def test_ttl_counters_are_exactly_once_after_sigkill_and_restore_from_a_checkpoint(report):
    assert report.ok, report.table()
    for scenario in report.scenarios:
        assert scenario.lost == scenario.duplicated == scenario.unexpected == 0, report.table()
    for mode in report.modes:
        scenarios = [s for s in report.scenarios if s.mode == mode]
        assert report.scenario(mode, RANDOM).kills >= 1, report.table()
        assert sum(s.kills for s in scenarios if s.where != RANDOM) >= 1, report.table()
        assert any(c >= 1 for s in scenarios for c in s.restored_from), f"{mode} never restored\n{report.table()}"
        assert sum(s.resumed for s in scenarios) >= 1, f"{mode}: no completed run resumed\n{report.table()}"


# ---- bounded state, as the metrics report it -----------------------------------------------------------


def live_entries(runner: JobRunner) -> float:
    """The sum of ``flowstate_operator_state_entries_live`` over the counter's subtasks, as exposed."""
    assert runner.observer.metrics is not None
    return sum(sample.value
               for family in text_string_to_metric_families(runner.observer.metrics.exposition().decode())
               for sample in family.samples
               if sample.name == "flowstate_operator_state_entries_live" and sample.labels["operator"] == "ttl-counter")


@pytest.mark.parametrize(("backend", "parallelism"), [("heap", 3), ("rocksdb", 1)])
def test_live_entries_stay_bounded_over_a_growing_key_space_across_a_restore(tmp_path, backend, parallelism):
    count = 4800
    failpoints = fs.Failpoints({fpn.SINK_BEFORE_COMMIT: "raise@6"})
    config = JobConfig(mode=Mode.parse("exactly_once"), checkpoint_dir=tmp_path / "chk",
                       checkpoint=CheckpointConfig(interval=0.03), restart=FixedDelayRestart(3, 0.0),
                       executor="threads", metrics_port=0, batch_size=64, state_backend=backend,
                       state_dir=tmp_path / "state")
    runner = JobRunner(ttl.ttl_job(tmp_path / "out", count=count, parallelism=parallelism, rate=2000.0), config,
                       failpoints=failpoints)
    samples: list[float] = []
    completed = runner.observer.completed

    def sample_then_complete(md):  # noqa: ANN001, ANN202 - the observer's hook, wrapped
        if not md.final:
            samples.append(live_entries(runner))
        return completed(md)

    runner.observer.completed = sample_then_complete  # type: ignore[method-assign]
    result = runner.run()
    assert failpoints.fired(fpn.SINK_BEFORE_COMMIT) == 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < count, "the last attempt read the whole input: it did not resume from a checkpoint"
    assert ttl.check_output({"visits": tmp_path / "out" / "visits"}, "exactly_once", count=count) == []
    # 120 keys (240 entries) were written; at every checkpoint a few phases' keys of each split were live.
    assert ttl.keys_written(count) == 120
    assert len(samples) >= 5 and max(samples) <= ttl.LIVE_BOUND and max(samples) >= 1, samples


# ---- the checker can fail ----------------------------------------------------------------------------


def write_rows(directory: Path, rows: list[list]) -> dict[str, Path]:
    directory.mkdir(parents=True)
    (directory / "part-0.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"visits": directory}


def test_the_checker_accepts_the_batch_result_and_finds_a_lost_a_duplicated_and_a_miscounted_row(tmp_path):
    good = [list(row) for row in ttl.expected_rows(2000).elements()]
    assert ttl.check_output(write_rows(tmp_path / "good", good), "exactly_once", count=2000) == []
    assert "1 ttl rows missing" in ttl.check_output(write_rows(tmp_path / "lost", good[1:]), "unaligned", count=2000)[0]
    doubled = write_rows(tmp_path / "dup", good + good[:2])
    assert "2 ttl rows duplicated" in ttl.check_output(doubled, "stop_the_world", count=2000)[0]
    miscounted = [[*good[0][:3], good[0][3] + 1, good[0][4]], *good[1:]]  # a counter that did not expire
    assert len(ttl.check_output(write_rows(tmp_path / "bad", miscounted), "exactly_once", count=2000)) == 2
