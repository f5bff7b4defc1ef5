"""Every Nexmark query end to end, committed output equal to the plain batch computation of the same
events (``batch.py``); at parallelism 2 for the stateful ones; and a crash in the middle of open
windows and auctions, restored from a checkpoint."""

from __future__ import annotations

from collections import Counter

import pytest

import flowstate as fs
from flowstate.nexmark import NexmarkConfig, NexmarkGenerator, NexmarkSource, build

from .batch import BATCH, committed

# 100 events per second of event time: 4,000 events span 40 s, four 10 s windows and a few dozen
# auctions (each open for up to ~6.7 s) closing throughout the run.
CONFIG = NexmarkConfig(rate=100, in_flight_auctions=20)
N = 4000


@pytest.fixture(scope="module")
def expected() -> dict[str, Counter]:
    events = NexmarkGenerator(CONFIG).events(0, N)
    return {query: fn(events) for query, fn in BATCH.items()}


def differences(actual: Counter, expected: Counter) -> str:
    missing, extra = expected - actual, actual - expected
    return (f"{sum(missing.values())} missing (e.g. {sorted(missing, key=repr)[:3]}), "
            f"{sum(extra.values())} unexpected (e.g. {sorted(extra, key=repr)[:3]})")


def test_the_events_give_every_query_something_to_find(expected):
    for query, rows in expected.items():
        assert sum(rows.values()) >= 3, query
    # q5 and q7 see several windows; q4 and q6 several updates per key.
    assert len({r[0] for r in expected["q7"]}) == 4
    assert len({r[0] for r in expected["q5"]}) >= 20
    assert max(Counter(r[0] for r in expected["q6"]).values()) > 10


@pytest.mark.parametrize("query", sorted(BATCH))
def test_a_query_commits_what_the_batch_computation_gives(query, expected, tmp_path):
    out = tmp_path / "out"
    result = fs.run(
        build(query, NexmarkSource(CONFIG, N, splits=2), fs.FileSink(out)),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
        execution=fs.ExecutionOptions(executor="threads", batch_size=256),
    )
    assert result.records == N
    actual = committed(out)
    assert actual == expected[query], differences(actual, expected[query])


@pytest.mark.parametrize("query", ["q3", "q4", "q5", "q6", "q7", "q8"])
def test_at_parallelism_2_the_output_is_the_same(query, expected, tmp_path):
    out = tmp_path / "out"
    fs.run(
        build(query, NexmarkSource(CONFIG, N, splits=3), fs.FileSink(out), parallelism=2),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
        execution=fs.ExecutionOptions(executor="threads", batch_size=128),
    )
    actual = committed(out)
    assert actual == expected[query], differences(actual, expected[query])


@pytest.mark.parametrize("query", ["q4", "q7"])
def test_a_crash_restores_open_windows_auctions_and_timers_from_a_checkpoint(query, expected, tmp_path):
    out = tmp_path / "out"
    # 2 sinks commit per checkpoint: the 5th commit is the third checkpoint's, after two were committed.
    failpoints = fs.Failpoints({"sink.before_commit": "raise@5"})
    result = fs.run(
        build(query, NexmarkSource(CONFIG, N, splits=2, throttle=2500.0), fs.FileSink(out), parallelism=2),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="40ms"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor="threads", batch_size=32),
        failpoints=failpoints,
    )
    assert failpoints.fired("sink.before_commit") == 1
    assert result.restarts >= 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < N, "the last attempt read the whole input: it did not resume from a checkpoint"
    actual = committed(out)
    assert actual == expected[query], differences(actual, expected[query])


def test_an_unknown_query_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown Nexmark query 'q9'"):
        build("q9", NexmarkSource(CONFIG, 10), fs.FileSink(tmp_path))
