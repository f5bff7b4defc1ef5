"""The interval join against a batch computation of the same pairs, at parallelism 1 and 2, and after
a crash (its buffered records are keyed state)."""

from __future__ import annotations

from collections import Counter

import pytest

import flowstate as fs

from .windowjobs import committed

ORDERS, PAYMENTS = 600, 900


def order(i: int) -> tuple[str, float]:
    return (f"o{i % 150}", 1000.0 + i * 2.0)


def payment(i: int) -> tuple[str, float, int]:
    return (f"o{(i * 7) % 150}", 990.0 + i * 1.5 + (i % 4), i)


def batch_pairs() -> Counter:
    pairs: Counter = Counter()
    for o in map(order, range(ORDERS)):
        for p in map(payment, range(PAYMENTS)):
            if o[0] == p[0] and o[1] - 60 <= p[1] <= o[1] + 300:
                pairs[(o[0], o[1], p[2])] += 1
    return pairs


def job(out, parallelism: int, rate: float | None = None) -> fs.Dataflow:
    flow = fs.Dataflow("join", parallelism=parallelism)
    orders = (flow.source(fs.GeneratorSource(order, ORDERS, splits=2, rate=rate, name="orders"), uid="orders")
                  .assign_timestamps(lambda o: o[1], max_out_of_orderness=5, uid="order-time")
                  .key_by(lambda o: o[0]))
    payments = (flow.source(fs.GeneratorSource(payment, PAYMENTS, splits=2, rate=rate, name="payments"), uid="payments")
                    .assign_timestamps(lambda p: p[1], max_out_of_orderness=5, uid="payment-time")
                    .key_by(lambda p: p[0]))
    (orders.interval_join(payments, lower="-1m", upper="5m", fn=lambda o, p: (o[0], o[1], p[2]), uid="join")
           .sink(fs.FileSink(out), uid="out"))
    return flow


@pytest.mark.parametrize("parallelism", [1, 2])
def test_the_interval_join_emits_every_pair_within_the_bounds_once(parallelism, tmp_path):
    fs.run(
        job(tmp_path / "out", parallelism),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    got = committed(tmp_path / "out")
    expected = batch_pairs()
    assert sum(expected.values()) > 500
    assert got == expected


def test_buffered_join_records_are_restored_after_a_crash(tmp_path):
    failpoints = fs.Failpoints({"sink.before_commit": "raise@5"})
    result = fs.run(
        job(tmp_path / "out", 2, rate=1500.0),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="30ms"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=failpoints,
    )
    assert failpoints.fired("sink.before_commit") == 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < ORDERS + PAYMENTS
    assert committed(tmp_path / "out") == batch_pairs()


def test_an_interval_join_needs_two_keyed_streams_with_event_time():
    flow = fs.Dataflow("join")
    timed = flow.source(fs.GeneratorSource(order, 3)).assign_timestamps(lambda o: o[1]).key_by(lambda o: o[0])
    untimed = flow.source(fs.GeneratorSource(order, 3)).key_by(lambda o: o[0])
    with pytest.raises(fs.GraphError, match="event time"):
        timed.interval_join(untimed, lower=0, upper=1)
    with pytest.raises(fs.GraphError, match="above upper"):
        timed.interval_join(timed, lower="5m", upper="1m")


def test_buffered_records_are_cleared_once_the_watermark_passes_their_last_possible_match():
    from flowstate.failpoints import Failpoints
    from flowstate.operators.base import OperatorEnv
    from flowstate.operators.joins import LEFT_STATE, RIGHT_STATE, IntervalJoinOperator
    from flowstate.time.watermarks import Watermark

    flow = fs.Dataflow("join")
    a = flow.source(fs.GeneratorSource(order, 1)).assign_timestamps(lambda o: o[1]).key_by(lambda o: o[0])
    b = flow.source(fs.GeneratorSource(payment, 1)).assign_timestamps(lambda p: p[1]).key_by(lambda p: p[0])
    a.interval_join(b, lower=-10, upper=20)
    node = next(n for n in flow.nodes if n.kind == "interval_join")
    op = IntervalJoinOperator("j", "j", OperatorEnv(0, 1, 16, True, Failpoints()), lambda t: t[1][0], node)
    op.open(None)
    assert op.process_batch([(0, ("k", 100.0)), (1, ("k", 95.0, 1))]) == [(("k", 100.0), ("k", 95.0, 1))]
    left = list(op.backend.state_keys(LEFT_STATE)), list(op.backend.state_keys(RIGHT_STATE))
    assert left == (["k"], ["k"])
    op.on_watermark(Watermark(105.0))  # the right record (95) can still meet a left one up to 105
    assert list(op.backend.state_keys(RIGHT_STATE)) == ["k"]
    op.on_watermark(Watermark(105.5))
    assert list(op.backend.state_keys(RIGHT_STATE)) == [] and list(op.backend.state_keys(LEFT_STATE)) == ["k"]
    assert op.process_batch([(1, ("k", 120.0, 2))]) == [(("k", 100.0), ("k", 120.0, 2))]  # 100 + 20: inclusive
    op.on_watermark(Watermark(121.0))  # the left record (100) is done; the right one (120) waits for 130
    assert list(op.backend.state_keys(LEFT_STATE)) == [] and list(op.backend.state_keys(RIGHT_STATE)) == ["k"]
    op.on_watermark(Watermark(130.5))
    assert list(op.backend.state_keys(RIGHT_STATE)) == []
    assert op.process_batch([(0, ("k", 110.0))]) == [] and op.late_dropped == 1  # behind the watermark
    op.close()


# ---- join_latest ------------------------------------------------------------------------------------


def price(i: int) -> tuple[str, float, int]:
    """Price updates: product p{i % 5} gets a new price every 5 s, from t = 3."""
    return (f"p{i % 5}", 3.0 + 5.0 * (i // 5) + (i % 5) * 0.1, 100 + i)


def sale(i: int) -> tuple[str, float, int]:
    return (f"p{(i * 3) % 5}", 0.5 * i, i)


def batch_enrichment(sales: int, prices: int) -> Counter:
    out: Counter = Counter()
    table = [price(i) for i in range(prices)]
    for s in map(sale, range(sales)):
        rows = [p for p in table if p[0] == s[0] and p[1] <= s[1]]
        row = max(rows, key=lambda p: p[1])[2] if rows else None
        out[(s[2], row)] += 1
    return out


@pytest.mark.parametrize("parallelism", [1, 2])
def test_join_latest_enriches_each_record_with_the_row_as_of_its_timestamp(parallelism, tmp_path):
    sales_n, prices_n = 400, 200
    flow = fs.Dataflow("enrich", parallelism=parallelism)
    sales = (flow.source(fs.GeneratorSource(sale, sales_n, splits=2, name="sales"))
                 .assign_timestamps(lambda s: s[1], max_out_of_orderness=1)
                 .key_by(lambda s: s[0]))
    prices = (flow.source(fs.GeneratorSource(price, prices_n, splits=2, name="prices"))
                  .assign_timestamps(lambda p: p[1], max_out_of_orderness=1)
                  .key_by(lambda p: p[0]))
    (sales.join_latest(prices, lambda s, p: (s[2], None if p is None else p[2]))
          .sink(fs.FileSink(tmp_path / "out")))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    expected = batch_enrichment(sales_n, prices_n)
    assert sum(1 for _, row in expected if row is None) > 0  # some sales precede the first price
    assert committed(tmp_path / "out") == expected
