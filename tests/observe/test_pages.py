"""The dashboard's pages as pure functions of a view (the browser tests drive the real thing)."""

from __future__ import annotations

from flowstate.observe.counters import TaskCounters
from flowstate.observe.dashboard import fragment, page, rates, view_of
from flowstate.observe.history import CheckpointRecord, DeclineRecord, StartRecord, SubtaskStats

START = StartRecord(1000.0, "j", {"mode": "unaligned"}, (
    {"name": "src", "parallelism": 1, "chain": "source(gen)", "inputs": []},
    {"name": "count", "parallelism": 2, "chain": "keyed_process(Count) -> sink(out)", "inputs": [["src", "hash"]]},
))


def test_text_from_the_job_is_escaped() -> None:
    failed = CheckpointRecord(2, "failed", 1001.0, 0.5, reason="SNAPSHOT_FAILURE", reason_text="a task failed",
                              declines=(DeclineRecord("count#0", "SNAPSHOT_FAILURE", "<script>alert(1)</script>"),))
    html = page(view_of([START, failed], state="running", live=True))
    assert "<script>alert(1)</script>" not in html
    assert "count#0 declined: &lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_graph_has_one_box_per_vertex_and_an_edge_with_its_partitioning() -> None:
    tasks = {"src#0": TaskCounters(100, 100, 0.9), "count#0": TaskCounters(60), "count#1": TaskCounters(40)}
    before = {"src#0": TaskCounters(0, 0, 0.0), "count#0": TaskCounters(0), "count#1": TaskCounters(0)}
    html = fragment(view_of([START], state="running", live=True, tasks=rates(before, tasks, 2.0)))
    assert html.count("data-testid='vertex'") == 2
    assert ">hash</text>" in html
    assert "50 rec/s in · 100 total" in html and "back-pressure 45%" in html  # 0.9 s waited in 2 s
    assert "count ×2" in html


def test_rates_need_two_samples_and_survive_a_restart() -> None:
    after = {"a#0": TaskCounters(10, 0, 1.0)}
    assert rates({}, after, 1.0)["a#0"].records_per_second is None
    assert rates({"a#0": TaskCounters(50)}, after, 1.0)["a#0"].records_per_second is None  # counted again from 0
    assert rates({"a#0": TaskCounters(4, 0, 0.5)}, after, 2.0)["a#0"].records_per_second == 3.0


def test_charts_need_two_completed_checkpoints() -> None:
    def done(cid: int) -> CheckpointRecord:
        return CheckpointRecord(cid, "completed", 1000.0 + cid, 0.1 * cid, 1000 * cid, 1000,
                                subtasks=(SubtaskStats("src#0", 0.05, 0, 0, 0.01, 0, 10, 10),))

    assert "Not enough completed checkpoints yet" in fragment(view_of([START, done(1)], state="running", live=True))
    html = fragment(view_of([START, done(1), done(2), done(3)], state="running", live=True))
    assert html.count("<polyline") == 2 and "#1: 100 ms" in html and "#3: 2.9 KiB" in html
