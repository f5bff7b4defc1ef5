"""The joins workload under SIGKILL: ``interval_join``, ``window_join`` and ``join_latest`` killed at
random moments and at failpoints, on real processes, heap at parallelism 1 and RocksDB at
parallelism 3; what they commit equals a batch computation of the same joins, and every mode's
restores used a checkpoint (id ≥ 1) from which a completed run read only the rest of the input.

Each short campaign runs two modes: between them, every exactly-once mode is covered, and
``at_least_once`` once (nothing lost; a replayed record pairs again, and may meet state that moved
past it, so duplicated and unexpected rows are counted, not failures).
``make chaos`` runs the same workload in every mode, at every failpoint, many more times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowstate import failpoints as fpn
from flowstate.testing import ChaosReport
from flowstate.testing.chaos import RANDOM
from flowstate.testing.oracles import EXACTLY_ONCE_MODES, joins

from .campaigns import short_campaign

pytestmark = pytest.mark.slow

CAMPAIGNS = {
    "heap-p1": ("heap", 1, ("exactly_once", "at_least_once"), (fpn.SINK_BEFORE_COMMIT, fpn.TASK_BEFORE_FORWARD)),
    "rocksdb-p3": ("rocksdb", 3, ("unaligned", "stop_the_world"), (fpn.COORDINATOR_AFTER_METADATA,)),
}
RATE = 1500.0


@pytest.fixture(scope="module", params=sorted(CAMPAIGNS))
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    backend, parallelism, modes, failpoints = CAMPAIGNS[request.param]
    return short_campaign(tmp_path_factory, f"joins-{request.param}", "flowstate.testing.oracles.joins:joins_job", backend=backend,
                          parallelism=parallelism, modes=modes, failpoints=failpoints, rate=RATE, seed=21,
                          oracle=joins.oracle())


def test_the_input_pairs_on_and_across_both_bounds_and_has_stragglers_behind_every_watermark():
    orders = [joins.order(i) for i in range(joins.ORDERS)]
    times = {o[0]: o[2] for o in orders}
    delays = [p[2] - times[p[0]] for p in map(joins.payment, range(joins.PAYMENTS)) if p[0] in times]
    assert joins.LOWER in delays and joins.UPPER in delays  # exactly on each bound: paired
    assert min(delays) < joins.LOWER and max(delays) > joins.UPPER  # beyond them: not paired
    stragglers = [o for o in orders if o[1] == joins.LATE_CUSTOMER]
    assert len(stragglers) > 50
    rows = joins.expected_rows()
    kinds = {kind: sum(n for row, n in rows.items() if row[0] == kind) for kind in ("i", "w", "l")}
    assert kinds["i"] > 2000 and kinds["w"] > 5000 and kinds["l"] == joins.ORDERS
    assert ("l", stragglers[0][0], 0) in rows  # a straggler gets c-late's one tier, late or not
    assert sum(1 for row in rows if row[0] == "l" and row[2] is None) > 0  # a customer without a tier yet


def test_the_joins_commit_every_pair_once_after_sigkill_and_restore_from_a_checkpoint(report):
    assert report.ok, report.table()
    for scenario in report.scenarios:
        assert scenario.lost == 0, report.table()
        if scenario.mode in EXACTLY_ONCE_MODES:
            assert scenario.duplicated == scenario.unexpected == 0, report.table()
    for mode in report.modes:
        scenarios = [s for s in report.scenarios if s.mode == mode]
        assert report.scenario(mode, RANDOM).kills >= 1, report.table()
        assert sum(s.kills for s in scenarios if s.where != RANDOM) >= 1, report.table()
        assert any(c >= 1 for s in scenarios for c in s.restored_from), f"{mode} never restored\n{report.table()}"
        assert sum(s.resumed for s in scenarios) >= 1, f"{mode}: no completed run resumed\n{report.table()}"


# ---- the checker can fail ----------------------------------------------------------------------------


def committed_copy(tmp_path: Path, rows_by_sink: dict[str, list[list]]) -> dict[str, Path]:
    directories = {}
    for uid, rows in rows_by_sink.items():
        directories[uid] = tmp_path / uid
        directories[uid].mkdir(parents=True)
        (directories[uid] / "part-0.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directories


def expected_by_sink() -> dict[str, list[list]]:
    names = {"i": "interval", "w": "window", "l": "latest"}
    by_sink: dict[str, list[list]] = {uid: [] for uid in joins.SINKS}
    for row in joins.expected_rows().elements():
        by_sink[names[row[0]]].append(list(row))
    return by_sink


def test_the_checker_accepts_the_batch_result_and_finds_a_lost_a_duplicated_and_a_wrong_row(tmp_path):
    good = expected_by_sink()
    assert joins.check_output(committed_copy(tmp_path / "good", good), "exactly_once") == []

    lost = {**good, "interval": good["interval"][1:]}
    assert "1 join rows missing" in joins.check_output(committed_copy(tmp_path / "lost", lost), "exactly_once")[0]

    doubled = {**good, "window": good["window"] + good["window"][:3]}
    assert joins.check_output(committed_copy(tmp_path / "alo", doubled), "at_least_once") == []
    assert "3 join rows duplicated" in joins.check_output(committed_copy(tmp_path / "dup", doubled), "unaligned")[0]

    wrong = {**good, "latest": [[kind, order, None if tier is not None else 0] for kind, order, tier in good["latest"][:1]]
             + good["latest"][1:]}
    problems = joins.check_output(committed_copy(tmp_path / "wrong", wrong), "exactly_once")
    assert len(problems) == 2 and "missing" in problems[0] and "unexpected" in problems[1]
    # at_least_once: the row that is missing is the one problem (a replayed order may get another tier).
    assert joins.check_output(committed_copy(tmp_path / "wrong-alo", wrong), "at_least_once") == problems[:1]
