"""Every window kind end to end: committed output equal to a plain batch computation of the same
input, in exactly-once and unaligned checkpointing, on the heap and RocksDB, at parallelism 1 and 3;
after crashes (a failpoint), and after a rescale in the middle of open session windows."""

from __future__ import annotations

from collections import Counter

import pytest

import flowstate as fs

from .windowjobs import KINDS, N, batch_windows, close, committed, floats_match, window_job

INTERVAL = "40ms"


def normalised(rows: Counter) -> Counter:
    return Counter({floats_match(r): c for r, c in rows.items()})


@pytest.fixture(scope="module")
def expected() -> dict[str, Counter]:
    return {kind: normalised(batch_windows(kind)) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
@pytest.mark.parametrize("backend", ["heap", "rocksdb"])
@pytest.mark.parametrize("parallelism", [1, 3])
def test_window_output_equals_the_batch_computation(kind, mode, backend, parallelism, tmp_path, expected):
    out = tmp_path / "out"
    # Rate-limited so that checkpoints are taken while windows are open.
    result = fs.run(
        window_job(kind, fs.FileSink(out), parallelism=parallelism, rate=8000.0 / parallelism),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", mode=mode, interval="20ms"),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "state"),
        execution=fs.ExecutionOptions(executor="threads", batch_size=64),
    )
    assert result.records == N
    assert result.checkpoints_completed >= 2  # one at least while windows were open, and the final one
    actual = normalised(committed(out))
    assert actual == expected[kind], close(actual, expected[kind])


def test_watermarks_cross_worker_processes(tmp_path, expected):
    out = tmp_path / "out"
    result = fs.run(
        window_job("session", fs.FileSink(out), parallelism=3),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL),
        execution=fs.ExecutionOptions(executor="processes", batch_size=256),
    )
    assert result.executor == "processes" and result.workers >= 2
    actual = normalised(committed(out))
    assert actual == expected["session"], close(actual, expected["session"])


CRASHES = {
    # 6 tasks snapshot per checkpoint: the 13th snapshot is in checkpoint 3, after 2 completed.
    "task.after_snapshot_before_ack": "raise@13",
    # 3 sinks commit per checkpoint: the 7th commit is checkpoint 3's, after 2 were committed.
    "sink.before_commit": "raise@7",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_a_crash_restores_windows_and_timers_from_a_checkpoint(kind, mode, tmp_path, expected):
    out = tmp_path / "out"
    point = sorted(CRASHES)[(KINDS.index(kind) + (mode == "unaligned")) % 2]
    failpoints = fs.Failpoints({point: CRASHES[point]})
    result = fs.run(
        window_job(kind, fs.FileSink(out), parallelism=3, rate=1000.0),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", mode=mode, interval="30ms"),
        state=fs.StateOptions(backend="rocksdb" if kind == "session" else "heap", directory=tmp_path / "state"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor="threads", batch_size=16),
        failpoints=failpoints,
    )
    assert failpoints.fired(point) == 1
    assert result.restarts >= 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < N, "the last attempt read the whole input: it did not resume from a checkpoint"
    actual = normalised(committed(out))
    assert actual == expected[kind], close(actual, expected[kind])


@pytest.mark.parametrize(("before", "after"), [(3, 2), (2, 4)])
def test_a_rescale_in_the_middle_of_open_sessions_gives_the_batch_result(before, after, tmp_path, expected):
    out = tmp_path / "out"
    with pytest.raises(fs.JobFailedError, match="InjectedFailure"):
        fs.run(
            window_job("session", fs.FileSink(out), parallelism=before, rate=1000.0),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="threads", batch_size=16),
            failpoints=fs.Failpoints({"coordinator.metadata_before_notify": "raise@3"}),
        )
    open_sessions = normalised(committed(out))
    result = fs.run(
        window_job("session", fs.FileSink(out), parallelism=after),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL),
        execution=fs.ExecutionOptions(executor="threads", batch_size=64),
    )
    assert result.restored_from == [3]
    assert result.records < N
    assert sum(open_sessions.values()) < sum(expected["session"].values())
    actual = normalised(committed(out))
    assert actual == expected["session"], close(actual, expected["session"])


def test_file_splits_each_have_their_watermark_and_a_finished_file_stops_holding_it(tmp_path):
    """Two files read one after the other by one reader, the second starting a little before the
    first ends: nothing is late, and once the first file is finished its watermark leaves the
    minimum, so the windows close while the second file is read (not only at the end)."""
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.txt").write_text("".join(f"k{i % 3},{i}\n" for i in range(0, 100)))
    (data / "b.txt").write_text("".join(f"k{i % 3},{i}\n" for i in range(95, 400)))
    read: list[int] = []
    fired_after: dict[float, int] = {}

    def parse(line):
        read.append(1)
        key, ts = line.split(",")
        return key, float(ts)

    def collect(result):
        fired_after.setdefault(result.window.start, len(read))
        seen.append((result.key, result.window.start, result.value))

    seen: list = []
    flow = fs.Dataflow("files")
    (flow.source(fs.FileSource(str(data / "*.txt")))
         .map(parse)
         .assign_timestamps(lambda r: r[1], max_out_of_orderness=10, watermark_interval=0)
         .key_by(lambda r: r[0])
         .window(fs.TumblingWindows(50))
         .aggregate(fs.aggregates.count())
         .sink(fs.CallbackSink(collect)))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
        execution=fs.ExecutionOptions(executor="threads", batch_size=4, channel_capacity=1),
    )
    expected = Counter()
    for i in list(range(100)) + list(range(95, 400)):
        expected[(f"k{i % 3}", float(i - i % 50))] += 1
    assert Counter({(k, s): v for k, s, v in seen}) == expected
    # Window [50, 100) closes at watermark 100, i.e. around line 115 of the second file.
    assert fired_after[50.0] < 100 + 100, fired_after
