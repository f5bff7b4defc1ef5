"""Prometheus metrics of a running job, aggregated across its worker processes."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import flowstate as fs
from flowstate.observe.metrics import METRICS

from tests.observe.jobs import Running, keyed_count

RECORDS = 60_000


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, task: str) -> float:
    return sum(v for (n, labels), v in values.items() if n == name and dict(labels).get("task") == task)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


@pytest.mark.slow
def test_counters_scraped_from_a_multi_process_job_add_up_to_the_records_processed(tmp_path: Path) -> None:
    job = Running(keyed_count(RECORDS, rate=12_000), tmp_path / "chk", executor="processes", workers=2, interval=0.25)
    scraped = []
    while job.result is None and job.error is None:
        try:
            scraped.append(samples(scrape(job.url)))
        except (urllib.error.URLError, ConnectionError):
            break  # the job ended between two scrapes
        time.sleep(0.2)
    result = job.join()
    assert result.workers == 2 and len(scraped) >= 5
    # During the run: counters never go down, and no stage counts more than the one before it gave it.
    for before, after in zip(scraped, scraped[1:]):
        for key, value in before.items():
            if key[0].endswith("_total") and key in after:
                assert after[key] >= value, key
    # The middle of the scrapes taken once the workers reported (starting them takes a while).
    running = [s for s in scraped if total(s, "flowstate_task_records_in_total", "0-source") > 0]
    middle = running[len(running) // 2]
    read = total(middle, "flowstate_task_records_in_total", "0-source")
    assert 0 < read < RECORDS
    assert total(middle, "flowstate_task_records_out_total", "0-source") <= read
    # Each worker reports its own tasks every 0.5 s: a keyed subtask may count records of a source
    # whose worker has not reported them yet, but never more than that source reports soon after.
    for k, now in enumerate(scraped[:-4]):
        assert total(now, "flowstate_task_records_in_total", "1-keyed_process") <= \
            total(scraped[k + 4], "flowstate_task_records_out_total", "0-source")
    assert middle[("flowstate_checkpoints_total", (("outcome", "completed"),))] >= 1
    # At the end (the same exposition the endpoint serves): every record was read once by a source,
    # and processed once by the keyed operator, whose two subtasks in two processes add up.
    final = samples(job.runner.observer.metrics.exposition().decode())
    assert total(final, "flowstate_task_records_in_total", "0-source") == RECORDS
    assert total(final, "flowstate_task_records_out_total", "0-source") == RECORDS
    per_subtask = [final[("flowstate_task_records_in_total", (("subtask", str(i)), ("task", "1-keyed_process")))]
                   for i in range(2)]
    assert all(n > 0 for n in per_subtask) and sum(per_subtask) == RECORDS
    assert total(final, "flowstate_task_state_entries", "1-keyed_process") == 97
    # Per operator of the chain keyed_process(Count) -> sink: Count emitted one record per record.
    by_operator = {dict(labels)["operator"]: 0.0 for (n, labels), _ in final.items()
                   if n == "flowstate_operator_records_out_total"}
    for (n, labels), v in final.items():
        if n == "flowstate_operator_records_out_total":
            by_operator[dict(labels)["operator"]] += v
    assert by_operator == {"Count": RECORDS, "discard": 0}
    assert final[("flowstate_checkpoints_total", (("outcome", "completed"),))] == result.checkpoints_completed
    assert final[("flowstate_checkpoint_duration_seconds_count", ())] == result.checkpoints_completed
    assert final[("flowstate_last_checkpoint_id", ())] == result.last_checkpoint
    assert final[("flowstate_last_checkpoint_size_bytes", ())] > 0


def test_every_metric_is_in_the_documented_table_and_the_readme() -> None:
    from flowstate.observe.metrics import JobMetrics

    metrics = JobMetrics(lambda: {}, lambda: {})
    exposed = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())
               if not f.name.endswith("_created")}  # prometheus_client's creation times
    documented = {name.removesuffix("_total") if kind == "counter" else name for name, kind, _, _ in METRICS}
    task_metrics = {"flowstate_task_records_in", "flowstate_task_records_out", "flowstate_task_backpressure_seconds",
                    "flowstate_operator_records_out",
                    "flowstate_task_state_entries", "flowstate_task_state_size_bytes",
                    "flowstate_task_watermark_seconds", "flowstate_task_watermark_lag_seconds",
                    "flowstate_operator_state_entries_live", "flowstate_operator_state_entries_expired"}
    assert exposed | task_metrics == documented
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, _, _, _ in METRICS:
        assert f"`{name}`" in readme, name


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_the_server_listens_on_loopback_only_and_changes_nothing_without_the_token(tmp_path: Path) -> None:
    job = Running(keyed_count(10**9, rate=2_000), tmp_path / "chk", executor="threads", interval=10.0)
    try:
        server = job.runner.observer.server
        assert server is not None and server.host == "127.0.0.1"
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, server.port), timeout=2).close()
        request = urllib.request.Request(job.url + "api/checkpoint", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        request.add_header("Authorization", "Bearer not-the-token")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert "flowstate_checkpoints_total" in scrape(job.url)
        assert job.runner.observer.events()[-1].__class__.__name__ == "RestoreRecord"  # no checkpoint was taken
        token = job.runner.observer.server._server.token
        request = urllib.request.Request(job.url + "api/checkpoint", data=b"{}", method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    finally:
        result = job.stop()
    assert result.checkpoints_completed >= 2  # the one asked for with the token, and the stop's


def test_the_watermark_and_its_lag_are_gauges_of_each_subtask_with_event_time() -> None:
    from flowstate.observe.counters import TaskCounters
    from flowstate.observe.metrics import JobMetrics

    tasks = {"2-window#0": TaskCounters(records_in=5, watermark=1000.0), "0-source#0": TaskCounters(records_in=5)}
    values = samples(JobMetrics(lambda: tasks, lambda: {}, wall=lambda: 1030.5).exposition().decode())

    window = (("subtask", "0"), ("task", "2-window"))
    assert values[("flowstate_task_watermark_seconds", window)] == 1000.0
    assert values[("flowstate_task_watermark_lag_seconds", window)] == 30.5
    assert not any(name.startswith("flowstate_task_watermark") and dict(labels)["task"] == "0-source"
                   for name, labels in values), "a subtask without event time has no watermark"


def test_a_running_event_time_job_reports_a_watermark_that_trails_its_records(tmp_path: Path) -> None:
    start = time.time() - 3600.0  # event time one hour behind the wall clock
    flow = fs.Dataflow("timed", parallelism=1)
    (flow.source(fs.GeneratorSource(lambda i: (i % 7, start + i * 0.01), count=6_000, rate=3_000))
         .assign_timestamps(lambda r: r[1], max_out_of_orderness=1.0)
         .key_by(lambda r: r[0]).window(fs.TumblingWindows("1s")).aggregate(fs.aggregates.count())
         .sink(fs.DiscardSink()))
    job = Running(flow, tmp_path / "chk", interval=0.2)
    seen: list[tuple[float, float]] = []
    while job.result is None and job.error is None:
        try:
            values = samples(scrape(job.url))
        except (urllib.error.URLError, ConnectionError):
            break
        marks = [v for (n, _), v in values.items() if n == "flowstate_task_watermark_seconds"]
        lags = [v for (n, _), v in values.items() if n == "flowstate_task_watermark_lag_seconds"]
        if marks:
            seen.append((min(marks), max(lags)))
        time.sleep(0.2)
    job.join()
    assert len(seen) >= 2, "no watermark was scraped while the job ran"
    assert all(start - 1.0 <= mark <= start + 60.0 for mark, _ in seen)
    assert all(3500.0 < lag < 3700.0 for _, lag in seen)
    assert seen[-1][0] > seen[0][0], "the watermark did not advance"
