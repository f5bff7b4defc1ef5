"""From the user's dataflow to the job graph the runtime executes.

Rules:

1. Every node gets a parallelism: its own, else the job's default.
2. An edge is ``hash`` when it carries a key function (records routed by key group), else
   ``forward`` when both ends have the same parallelism (subtask i feeds subtask i), else
   ``rebalance`` (round-robin by batch).
3. **Chaining**: a node joins its input's chain (and so runs in the same task, with no channel and no
   serialisation between them) when it has exactly one input, that input is a ``forward`` edge, and
   the input node has no other consumer. A source always starts a chain; a union never joins one.
4. Each chain is a ``JobVertex`` named after the uid of its first node; subtask ``i`` of a vertex is
   the task ``"<vertex>#<i>"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowstate.dataflow import Dataflow, Node
from flowstate.errors import GraphError
from flowstate.kinds import NodeKind, Partitioning


@dataclass(frozen=True, slots=True)
class JobEdge:
    source: str
    """Name of the upstream vertex."""
    partition: Partitioning
    key_fn: Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class JobVertex:
    name: str
    chain: tuple[Node, ...]
    parallelism: int
    inputs: tuple[JobEdge, ...]

    @property
    def is_source(self) -> bool:
        return self.chain[0].kind is NodeKind.SOURCE

    def describe(self) -> str:
        return " -> ".join(f"{n.kind}({n.name})" for n in self.chain)


@dataclass(frozen=True, slots=True)
class JobGraph:
    name: str
    max_parallelism: int
    vertices: tuple[JobVertex, ...]
    """In topological order."""

    def vertex(self, name: str) -> JobVertex:
        for v in self.vertices:
            if v.name == name:
                return v
        raise KeyError(name)

    def consumers(self, name: str) -> list[tuple[JobVertex, int]]:
        """(vertex, input index) pairs that read vertex ``name``."""
        return [(v, i) for v in self.vertices for i, e in enumerate(v.inputs) if e.source == name]

    def describe(self) -> str:
        lines = []
        for v in self.vertices:
            ins = ", ".join(f"{e.source} [{e.partition}]" for e in v.inputs)
            lines.append(f"{v.name} x{v.parallelism}: {v.describe()}" + (f"  <- {ins}" if ins else ""))
        return "\n".join(lines)


def build_job_graph(flow: Dataflow, default_parallelism: int | None = None) -> JobGraph:
    if not flow.nodes:
        raise GraphError(f"dataflow {flow.name!r} is empty: add a source")
    if not flow.sinks():
        raise GraphError(f"dataflow {flow.name!r} has no sink: every job must write its results somewhere")
    default = default_parallelism or flow.parallelism
    if default > flow.max_parallelism:
        raise GraphError(
            f"dataflow {flow.name!r}: parallelism {default} is above max_parallelism {flow.max_parallelism}"
        )

    def par(node: Node) -> int:
        return node.parallelism or default

    consumers: dict[int, list[Node]] = {n.index: [] for n in flow.nodes}
    for node in flow.nodes:
        for edge in node.inputs:
            consumers[edge.source.index].append(node)

    def partition(node: Node, src: Node, key_fn: Any) -> Partitioning:
        if key_fn is not None:
            return Partitioning.HASH
        return Partitioning.FORWARD if par(src) == par(node) else Partitioning.REBALANCE

    chain_of: dict[int, list[Node]] = {}
    heads: list[list[Node]] = []
    for node in flow.nodes:
        if node.kind not in (NodeKind.SOURCE, NodeKind.UNION) and len(node.inputs) == 1:
            edge = node.inputs[0]
            if partition(node, edge.source, edge.key_fn) is Partitioning.FORWARD and len(consumers[edge.source.index]) == 1:
                chain = chain_of[edge.source.index]
                chain.append(node)
                chain_of[node.index] = chain
                continue
        chain = [node]
        heads.append(chain)
        chain_of[node.index] = chain

    vertices = []
    for chain in heads:
        head = chain[0]
        inputs = tuple(
            JobEdge(chain_of[e.source.index][0].uid, partition(head, e.source, e.key_fn), e.key_fn)
            for e in head.inputs
        )
        vertices.append(JobVertex(head.uid, tuple(chain), par(head), inputs))
    return JobGraph(flow.name, flow.max_parallelism, tuple(vertices))
