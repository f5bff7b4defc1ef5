"""The kinds of a dataflow's nodes and edges, named once. Both are ``StrEnum``s: a kind compares
equal to its name (``NodeKind.SOURCE == "source"``), which is also how checkpoint metadata writes it.
"""

from __future__ import annotations

from enum import StrEnum


class NodeKind(StrEnum):
    """What a node of a dataflow does."""

    SOURCE = "source"
    MAP = "map"
    FILTER = "filter"
    FLAT_MAP = "flat_map"
    PROCESS = "process"
    KEYED_PROCESS = "keyed_process"
    REDUCE = "reduce"
    TIMESTAMPS = "timestamps"
    UNION = "union"
    WINDOW = "window"
    SELECT = "select"
    INTERVAL_JOIN = "interval_join"
    JOIN_LATEST = "join_latest"
    TO_ARROW = "to_arrow"
    MAP_BATCHES = "map_batches"
    AGGREGATE_BATCHES = "aggregate_batches"
    TO_RECORDS = "to_records"
    SINK = "sink"


KEYED_KINDS = frozenset({NodeKind.KEYED_PROCESS, NodeKind.REDUCE, NodeKind.WINDOW, NodeKind.INTERVAL_JOIN,
                         NodeKind.JOIN_LATEST, NodeKind.AGGREGATE_BATCHES})
"""Kinds whose operators keep keyed state."""
STATEFUL_KINDS = KEYED_KINDS | {NodeKind.SOURCE, NodeKind.SINK, NodeKind.TIMESTAMPS}
"""Kinds of nodes whose operators write state in every checkpoint."""


class Partitioning(StrEnum):
    """How records travel along an edge of the job graph (rule 2 of ``flowstate.graph``)."""

    FORWARD = "forward"
    """Subtask i feeds subtask i (both ends have the same parallelism)."""
    REBALANCE = "rebalance"
    """Round-robin by batch."""
    HASH = "hash"
    """By key group of the record's key."""
