"""The runtime operator for each kind of dataflow node: the one place that knows every operator
module (``base``: the stateless and keyed operators; ``timers``: keyed process functions with
timers; ``windows``: timestamps, windows and late-record selection; ``joins``; ``arrow``: record
batches, imported only by a job that uses them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowstate.errors import GraphError
from flowstate.operators.base import (
    FilterOperator,
    FlatMapOperator,
    KeyedProcessOperator,
    MapOperator,
    Operator,
    OperatorEnv,
    ProcessOperator,
    ReduceOperator,
    SinkOperator,
    UnionOperator,
)
from flowstate.operators.joins import IntervalJoinOperator, JoinLatestOperator
from flowstate.operators.timers import TimedKeyedProcessOperator, has_on_timer
from flowstate.operators.timestamps import SelectOperator, TimestampsOperator
from flowstate.operators.windows import WindowOperator


def build_operator(node: Any, env: OperatorEnv, key_fn: Callable[[Any], Any] | None) -> Operator:
    """The runtime operator for a (non-source) dataflow node."""
    kind = node.kind
    if kind in ("timestamps", "window", "select", "interval_join", "join_latest") or (kind == "keyed_process" and (
            node.extra.get("timestamp_fn") is not None or has_on_timer(node.fn))):
        return build_time_operator(node, env, key_fn)
    if kind == "map":
        return MapOperator(node.uid, node.name, env, node.fn)
    if kind == "filter":
        return FilterOperator(node.uid, node.name, env, node.fn)
    if kind == "flat_map":
        return FlatMapOperator(node.uid, node.name, env, node.fn)
    if kind == "union":
        return UnionOperator(node.uid, node.name, env)
    if kind == "process":
        return ProcessOperator(node.uid, node.name, env, node.fn)
    if kind == "keyed_process":
        assert key_fn is not None
        return KeyedProcessOperator(node.uid, node.name, env, key_fn, node.fn)
    if kind == "reduce":
        assert key_fn is not None
        return ReduceOperator(node.uid, node.name, env, key_fn, node.fn)
    if kind == "sink":
        return SinkOperator(node.uid, node.name, env, node.fn)
    if kind in ("to_arrow", "map_batches", "aggregate_batches", "to_records"):
        return build_arrow_operator(node, env, key_fn)
    raise ValueError(f"no runtime operator for {kind!r}")


def build_arrow_operator(node: Any, env: OperatorEnv, key_fn: Callable[[Any], Any] | None) -> Operator:
    """The vectorized path's operators (``flowstate.operators.arrow``), imported only by a job that has one."""
    from flowstate.operators import arrow

    kind = node.kind
    if kind == "to_arrow":
        return arrow.ToArrowOperator(node.uid, node.name, env, node.extra.get("schema"))
    if kind == "map_batches":
        return arrow.MapBatchesOperator(node.uid, node.name, env, node.fn)
    if kind == "to_records":
        return arrow.ToRecordsOperator(node.uid, node.name, env)
    if key_fn is None:
        raise GraphError(f"{kind} {node.name!r} needs a keyed stream: call key_by(column) first")
    return arrow.AggregateBatchesOperator(node.uid, node.name, env, key_fn, node.fn)


def build_time_operator(node: Any, env: OperatorEnv, key_fn: Callable[[Any], Any] | None) -> Operator:
    kind = node.kind
    if kind == "timestamps":
        return TimestampsOperator(node.uid, node.name, env, node.fn, node.extra["out_of_orderness"],
                                  node.extra["idle_timeout"], node.extra.get("watermark_interval", 0.0))
    if kind == "select":
        return SelectOperator(node.uid, node.name, env, node.extra["late"])
    if key_fn is None:
        raise GraphError(f"{kind} {node.name!r} needs a keyed stream: call key_by(...) first")
    if kind == "window":
        return WindowOperator(node.uid, node.name, env, key_fn, node)
    if kind == "interval_join":
        return IntervalJoinOperator(node.uid, node.name, env, key_fn, node)
    if kind == "join_latest":
        return JoinLatestOperator(node.uid, node.name, env, key_fn, node)
    return TimedKeyedProcessOperator(node.uid, node.name, env, key_fn, node.fn, node.extra.get("timestamp_fn"))
