"""State assignment on restore (Flink's ``StateAssignmentOperation``): from the task states of a
completed checkpoint or savepoint to the resume state of every task of the job as it is now, at any
parallelism.

State is filed by operator **uid** (``uid=``, or the generated ``<index>-<kind>``), so it follows
its operator whatever chain, vertex or parallelism that operator has now. A source's read positions
are filed under its uid too (the name of the vertex it heads). Rules:

1. **Keyed state** (keyed process, reduce): new subtask *i* receives every old snapshot whose
   key-group range overlaps its own range; its backend keeps the keys of the groups it owns.
2. **Source positions**: the positions of every old reader are merged split by split; new subtask
   *i* receives those of the splits it reads now, ``splits()[i::p]`` or, for a source that assigns its
   splits itself, those it owns (``flowstate.connectors.base.assigned_splits``); a split no reader
   had starts at its beginning. A source whose positions name anything but its current splits keeps them only at
   its old parallelism: at another one it is refused, since they cannot be reassigned.
3. **Sink writers**: at the old parallelism each writer gets its own state; otherwise the sink's
   ``redistribute_state(states, parallelism)`` decides (``FileSink`` re-commits every pending file
   once and carries its sequence numbers forward). A sink without it is refused when any writer has
   state.
4. **Any other operator state** is restored at the old parallelism only; at another one it is
   refused (there is no rule to split it).
5. **Channel state** (the in-flight records of an unaligned checkpoint): at an unchanged layout (the
   vertex and every vertex feeding it kept their parallelism) each task gets its own. Otherwise the
   records are replayed by the task that would receive them now: by key group behind a keyed input,
   else old subtask *j*'s records go to new subtask ``j % p``; within one old channel their order is
   kept. Refused when the vertex is gone or its inputs changed: channel state is never dropped.
6. State held for a uid that the job no longer has, or whose operator cannot take it now (a keyed
   operator's uid given to a map, a sink's to a source), is refused with a message naming the
   operator and the state, unless ``allow_non_restored_state``: then it is dropped, with a warning.
   A sink's state names output its checkpoint pre-committed and the sources will not replay: it is
   dropped only with ``drop_sink_state`` as well, and refused otherwise. Operators new to the job
   start empty.
7. **Watermarks**: a timestamp assigner's generator and a task's combined input watermark are kept
   at the same parallelism; after a rescale every new subtask starts from the lowest of the old
   ones, so no record that was on time becomes late. (Keyed operators' timers and windows are keyed
   state: rule 1.)

Everything here is a function of the loaded states, the metadata and the job graph: no I/O.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowstate.checkpoint.ids import TaskId, task_id
from flowstate.connectors.base import assigned_splits
from flowstate.errors import ConfigError
from flowstate.graph import JobGraph, JobVertex
from flowstate.kinds import KEYED_KINDS, STATEFUL_KINDS, NodeKind
from flowstate.state.keygroups import (
    key_group_of,
    key_group_range,
    routing_table,
    subtask_for_key_group,
)
from flowstate.state.memory import FORMAT as HEAP_FORMAT
from flowstate.state.memory import FORMATS as HEAP_FORMATS
from flowstate.storage.base import CheckpointMetadata, JobRecord, OperatorRecord
from flowstate.storage.state_file import KeyedSnapshot, TaskStateFile


def describe_graph(graph: JobGraph) -> JobRecord:
    """What the metadata records of the job that wrote it, so that a restore into a changed job can
    name operators that are gone and check the inputs behind channel state."""
    operators = {
        node.uid: OperatorRecord(node.name, node.kind, v.name)
        for v in graph.vertices for node in v.chain if node.kind in STATEFUL_KINDS
    }
    inputs = {v.name: tuple(e.source for e in v.inputs) for v in graph.vertices}
    return JobRecord(operators, inputs)


@dataclass
class _OldState:
    """Everything one uid holds in the restored snapshot."""

    uid: str
    vertex: str
    parallelism: int
    parts: dict[int, Any] = field(default_factory=dict)
    """Old subtask → the state that subtask's operator snapshotted."""


@dataclass(slots=True)
class _Resume:
    """A task's resume state while it is assigned."""

    operators: dict[str, Any] = field(default_factory=dict)
    source: Any = None
    channels: dict[int, list[bytes]] = field(default_factory=dict)
    watermark: float | None = None

    def done(self) -> TaskStateFile:
        return TaskStateFile(self.operators, self.source, self.channels, self.watermark)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The resume state of every task of the job, and what was dropped."""

    states: dict[TaskId, TaskStateFile]
    dropped: tuple[str, ...]
    """One sentence per state dropped under ``allow_non_restored_state``."""


def assign_states(
    graph: JobGraph, metadata: CheckpointMetadata, task_states: Mapping[TaskId, TaskStateFile], *,
    allow_non_restored_state: bool = False, drop_sink_state: bool = False, what: str | None = None,
) -> Assignment:
    """The resume state of every task of ``graph`` from ``task_states`` (the loaded state file of
    every task of ``metadata``). Raises ``ConfigError`` naming the operator and the state for what
    the rules of this module refuse. ``what`` names the snapshot in messages."""
    what = what or f"checkpoint {metadata.checkpoint_id}"
    if metadata.max_parallelism != graph.max_parallelism:
        raise ConfigError(
            f"{what} was taken with max_parallelism {metadata.max_parallelism}; the job now has "
            f"{graph.max_parallelism}. max_parallelism cannot change (it is the number of key groups)"
        )
    old_operators: Mapping[str, OperatorRecord] = metadata.graph.operators if metadata.graph is not None else {}
    old_inputs = metadata.graph.inputs if metadata.graph is not None else None
    tasks = {ts.task: ts for ts in metadata.tasks}
    uids: dict[str, _OldState] = {}
    sources: dict[str, _OldState] = {}
    channels: dict[str, dict[int, dict[int, list[bytes]]]] = {}
    watermarks: dict[str, dict[int, float]] = {}
    for tid, state in task_states.items():
        ts = tasks[tid]
        parallelism = metadata.parallelism.get(ts.vertex, 0)
        if state.channels:
            channels.setdefault(ts.vertex, {})[ts.subtask] = dict(state.channels)
        if state.watermark is not None:
            watermarks.setdefault(ts.vertex, {})[ts.subtask] = state.watermark
        if state.source is not None:
            sources.setdefault(ts.vertex, _OldState(ts.vertex, ts.vertex, parallelism)).parts[ts.subtask] = state.source
        for uid, value in state.operators.items():
            if value is None:
                continue  # an operator without state (an at-least-once sink): nothing to restore
            uids.setdefault(uid, _OldState(uid, ts.vertex, parallelism)).parts[ts.subtask] = value

    nodes = {node.uid: (v, node) for v in graph.vertices for node in v.chain}
    refusals: list[str] = []
    dropped: list[str] = []

    def operator(uid: str) -> str:
        recorded = old_operators.get(uid)
        name = recorded.name if recorded is not None else None
        return f"operator {name!r} (uid {uid!r})" if name and name != uid else f"operator {uid!r}"

    def not_restored(uid: str, state: str, why: str, *, sink: bool = False) -> None:
        sentence = f"{what} holds {state} of {operator(uid)}, {why}"
        if sink and allow_non_restored_state and not drop_sink_state:
            refusals.append(
                f"{sentence}; dropping a sink's state loses the output its checkpoint pre-committed (never "
                "published, and not replayed by the sources): pass --drop-sink-state (drop_sink_state=True) "
                "as well to drop it anyway"
            )
            return
        (dropped if allow_non_restored_state else refusals).append(sentence)

    def old_kind(old: _OldState) -> NodeKind | None:
        """``None``: not known (a metadata that does not record it, for state of a uid the job lost)."""
        recorded = old_operators.get(old.uid)
        if recorded is not None:
            return recorded.kind
        if any(isinstance(p, KeyedSnapshot) and p.data.get("format") in HEAP_FORMATS for p in old.parts.values()):
            return NodeKind.KEYED_PROCESS
        found = nodes.get(old.uid)
        return found[1].kind if found is not None else None

    # Rule 6: state whose operator is gone, or cannot take it now.
    restorable: dict[str, _OldState] = {}
    for uid, old in uids.items():
        kind = old_kind(old)
        found = nodes.get(uid)
        described = _describe_state(kind, old)
        if found is None:
            not_restored(uid, described, "which the job no longer has", sink=kind is NodeKind.SINK)
        elif not _compatible(kind, found[1].kind):
            not_restored(uid, described, f"which is now a {found[1].kind} operator that cannot take it", sink=kind is NodeKind.SINK)
        else:
            restorable[uid] = old
    source_positions: dict[str, _OldState] = {}
    for uid, old in sources.items():
        found = nodes.get(uid)
        described = _describe_state(NodeKind.SOURCE, old)
        if found is None:
            not_restored(uid, described, "which the job no longer has")
        elif found[1].kind is not NodeKind.SOURCE:
            not_restored(uid, described, f"which is now a {found[1].kind} operator that cannot take it")
        else:
            source_positions[uid] = old

    states: dict[TaskId, _Resume] = {
        task_id(v.name, i): _Resume() for v in graph.vertices for i in range(v.parallelism)
    }
    for v in graph.vertices:
        for node in v.chain:
            if node.kind is NodeKind.SOURCE and node.uid in source_positions:
                for i, positions in enumerate(_assign_positions(v, node, source_positions[node.uid], refusals)):
                    if positions is not None:
                        states[task_id(v.name, i)].source = positions
                continue
            kept = restorable.get(node.uid)
            if kept is None:
                continue
            if node.kind in KEYED_KINDS:
                parts = _assign_keyed(v, kept, graph.max_parallelism)
            elif node.kind is NodeKind.TIMESTAMPS:
                parts = _assign_generators(v, kept)
            elif node.kind is NodeKind.SINK:
                parts = _assign_sink(v, node, kept, operator(node.uid), refusals)
            else:
                parts = _assign_as_is(v, kept, operator(node.uid), refusals)
            for i, part in enumerate(parts):
                if part is not None:
                    states[task_id(v.name, i)].operators[node.uid] = part
    for vertex, marks in watermarks.items():
        _assign_watermarks(graph, metadata, vertex, marks, states)
    for vertex, in_flight in channels.items():
        _assign_channels(graph, metadata, old_inputs, vertex, in_flight, what, states, refusals)
    if refusals:
        raise ConfigError(
            "cannot restore " + what + ": " + "; ".join(refusals)
            + _advice(refusals, allow_non_restored_state)
        )
    return Assignment({tid: resume.done() for tid, resume in states.items()}, tuple(dropped))


def _advice(refusals: Sequence[str], allowed: bool) -> str:
    hints = []
    if not allowed and any("no longer has" in r or "cannot take it" in r for r in refusals):
        hints.append(
            "give the operator its old uid= again, or pass --allow-non-restored-state "
            "(allow_non_restored_state=True) to drop that state"
        )
    hints.append("or start from scratch with --fresh")
    return ". To run anyway: " + "; ".join(hints)


def _compatible(old_kind: NodeKind | None, new_kind: NodeKind) -> bool:
    if old_kind in KEYED_KINDS:
        return new_kind in KEYED_KINDS
    if old_kind is None:
        return new_kind in STATEFUL_KINDS
    return old_kind == new_kind


def _describe_state(kind: NodeKind | None, old: _OldState) -> str:
    if kind is NodeKind.SOURCE:
        splits = sorted({s for p in old.parts.values() if isinstance(p, dict) for s in p})
        shown = ", ".join(repr(s) for s in splits[:4]) + (f" and {len(splits) - 4} more" if len(splits) > 4 else "")
        return f"the read positions of {shown or 'no split'}"
    if kind in KEYED_KINDS:
        tables = sorted({t for p in old.parts.values() if isinstance(p, KeyedSnapshot) for t in p.data.get("states", {})})
        return "keyed state " + (", ".join(repr(t) for t in tables) if tables else "(no table)")
    if kind is NodeKind.SINK:
        return "the sink writers' state (pending commits)"
    return "operator state"


def _assign_keyed(v: JobVertex, old: _OldState, max_parallelism: int) -> list[Any]:
    """Rule 1: every old snapshot whose key-group range overlaps the new subtask's. A heap snapshot
    that spans several new ranges is split here, hashing each key once, into one piece per new
    subtask (each then loads its piece as it is) rather than filtered by every subtask it overlaps."""
    mine = [key_group_range(max_parallelism, v.parallelism, i) for i in range(v.parallelism)]
    out: list[list[Any]] = [[] for _ in range(v.parallelism)]
    for subtask, part in sorted(old.parts.items()):
        groups = part.data.get("key_groups") if isinstance(part, KeyedSnapshot) else None
        if groups is not None:
            owned = range(groups[0], groups[1])
        else:
            owned = key_group_range(max_parallelism, old.parallelism, subtask)
        targets = [i for i, r in enumerate(mine) if owned.start < r.stop and r.start < owned.stop]
        if len(targets) > 1 and isinstance(part, KeyedSnapshot) and part.data.get("format") == HEAP_FORMAT:
            for i, piece in _split_heap(part, max_parallelism, v.parallelism, mine, targets).items():
                out[i].append(piece)
            continue
        for i in targets:
            out[i].append(part)
    return out


def _split_heap(
    snapshot: KeyedSnapshot, max_parallelism: int, parallelism: int, ranges: list[range], targets: list[int],
) -> dict[int, KeyedSnapshot]:
    part = snapshot.data
    route = routing_table(max_parallelism, parallelism)
    pieces: dict[int, dict[str, Any]] = {
        i: {**part, "key_groups": [ranges[i].start, ranges[i].stop], "states": {}} for i in targets
    }
    for name, table in part["states"].items():
        buckets: dict[int, dict[Any, Any]] = {i: {} for i in targets}
        for chunk in table["chunks"]:
            for key, value in pickle.loads(chunk).items():
                buckets[route[key_group_of(key, max_parallelism)]][key] = value
        for i in targets:
            chunks = [pickle.dumps(buckets[i], protocol=pickle.HIGHEST_PROTOCOL)] if buckets[i] else []
            pieces[i]["states"][name] = {**table, "chunks": chunks}
    return {i: KeyedSnapshot(piece, snapshot.files) for i, piece in pieces.items()}


def _assign_positions(v: JobVertex, node: Any, old: _OldState, refusals: list[str]) -> list[Any]:
    """Rule 2."""
    source = node.fn
    splits = list(source.splits())
    known = set(splits)
    named = {s for p in old.parts.values() if isinstance(p, dict) for s in p}
    if not all(isinstance(p, dict) for p in old.parts.values()) or not named <= known:
        if old.parallelism == v.parallelism:
            return [old.parts.get(i) for i in range(v.parallelism)]
        unknown = sorted(map(str, named - known))[:4]
        refusals.append(
            f"source {node.name!r} (uid {node.uid!r}) ran with parallelism {old.parallelism} and now has "
            f"{v.parallelism}, but its read positions cannot be reassigned split by split "
            f"(they name {', '.join(map(repr, unknown)) or 'no split'}, not one of its splits {splits[:4]!r}); "
            f"run it with parallelism {old.parallelism}"
        )
        return []
    merged: dict[str, Any] = {}
    for subtask, positions in sorted(old.parts.items()):
        for split, position in positions.items():
            if split in merged and merged[split] != position:
                refusals.append(
                    f"source {node.name!r} (uid {node.uid!r}) holds two positions for split {split!r}, "
                    f"{merged[split]!r} and {position!r} (subtask {subtask}): the snapshot is inconsistent"
                )
            merged[split] = position
    return [
        {s: merged[s] for s in assigned_splits(source, splits, i, v.parallelism) if s in merged}
        for i in range(v.parallelism)
    ]


def _assign_sink(v: JobVertex, node: Any, old: _OldState, operator: str, refusals: list[str]) -> list[Any]:
    """Rule 3."""
    if old.parallelism == v.parallelism:
        return [old.parts.get(i) for i in range(v.parallelism)]
    previous = [old.parts.get(j) for j in range(old.parallelism)]
    if all(p is None for p in previous):
        return []
    redistribute = getattr(node.fn, "redistribute_state", None)
    if redistribute is None:
        refusals.append(
            f"sink {operator} ran with parallelism {old.parallelism} and now has {v.parallelism}, but "
            f"{type(node.fn).__name__} cannot redistribute its writers' state (it has no "
            f"redistribute_state); run it with parallelism {old.parallelism}"
        )
        return []
    parts = list(redistribute(previous, v.parallelism))
    if len(parts) != v.parallelism:
        raise ValueError(
            f"{type(node.fn).__name__}.redistribute_state returned {len(parts)} states for parallelism {v.parallelism}"
        )
    return parts


def _assign_as_is(v: JobVertex, old: _OldState, operator: str, refusals: list[str]) -> list[Any]:
    """Rule 4."""
    if old.parallelism == v.parallelism:
        return [old.parts.get(i) for i in range(v.parallelism)]
    refusals.append(
        f"{operator} ran with parallelism {old.parallelism} and now has {v.parallelism}, but its "
        f"non-keyed operator state cannot be redistributed; run it with parallelism {old.parallelism}, "
        "or keep that state in keyed state"
    )
    return []


def _assign_generators(v: JobVertex, old: _OldState) -> list[Any]:
    """Rule 7: watermark generators keep their state at the same parallelism; after a rescale each
    new one starts from the lowest watermark any old one had emitted (never above what a split had
    reached, so nothing that was on time becomes late), with the watermarks of the splits of its
    source that it reads now when they are known by split."""
    if old.parallelism == v.parallelism:
        return [old.parts.get(i) for i in range(v.parallelism)]
    emitted = [p["emitted"] for p in old.parts.values() if isinstance(p, dict)]
    if len(emitted) < old.parallelism:
        return [None] * v.parallelism
    by_split = {split: ts for p in old.parts.values() for split, ts in p["splits"].items()}
    splits = list(v.chain[0].fn.splits()) if v.is_source else []
    if not set(by_split) <= set(splits):
        by_split, splits = {}, []
    source = v.chain[0].fn if v.is_source else None
    return [{"splits": {sp: by_split[sp] for sp in assigned_splits(source, splits, i, v.parallelism) if sp in by_split},
             "emitted": min(emitted)} for i in range(v.parallelism)]


def _assign_watermarks(graph: JobGraph, metadata: CheckpointMetadata, vertex: str, by_subtask: dict[int, float],
                       states: dict[TaskId, _Resume]) -> None:
    """Rule 7: a task's combined input watermark, at the same parallelism; after a rescale the
    lowest of the old subtasks' (a subtask that had none counts as none at all)."""
    try:
        v = graph.vertex(vertex)
    except KeyError:
        return
    old_parallelism = metadata.parallelism.get(vertex, 0)
    if old_parallelism == v.parallelism:
        for i, value in by_subtask.items():
            if i < v.parallelism:
                states[task_id(vertex, i)].watermark = value
        return
    if len(by_subtask) < old_parallelism:
        return
    floor = min(by_subtask.values())
    for i in range(v.parallelism):
        states[task_id(vertex, i)].watermark = floor


def _assign_channels(
    graph: JobGraph, metadata: CheckpointMetadata, old_inputs: Mapping[str, Any] | None, vertex: str,
    by_subtask: dict[int, dict[int, list[bytes]]], what: str, states: dict[TaskId, _Resume],
    refusals: list[str],
) -> None:
    """Rule 5."""
    chain = f"operator chain {vertex!r}"
    try:
        v = graph.vertex(vertex)
    except KeyError:
        refusals.append(
            f"{what} holds in-flight records (channel state of an unaligned checkpoint) of {chain}, which "
            "the job no longer has; they cannot be dropped. Restore with the job's earlier topology and "
            "take a savepoint (savepoints are aligned) before changing it"
        )
        return
    inputs = [e.source for e in v.inputs]
    recorded = old_inputs.get(vertex) if old_inputs is not None else None
    if recorded is not None and list(recorded) != inputs:
        refusals.append(
            f"{what} holds in-flight records (channel state of an unaligned checkpoint) of {chain}, whose "
            f"inputs changed from {list(recorded)!r} to {inputs!r}; they cannot be dropped. Restore with "
            "the job's earlier topology and take a savepoint (savepoints are aligned) before changing it"
        )
        return
    unchanged = metadata.parallelism.get(vertex) == v.parallelism and all(
        metadata.parallelism.get(name) == graph.vertex(name).parallelism for name in inputs
    )
    if unchanged:
        for subtask, channels in by_subtask.items():
            states[task_id(vertex, subtask)].channels = channels
        return
    if recorded is None:
        refusals.append(
            f"{what} holds in-flight records (channel state of an unaligned checkpoint) of {chain} but "
            "does not record the vertex's inputs, so they cannot be replayed at another parallelism; "
            "restore at the old parallelism"
        )
        return
    p = v.parallelism
    maxp = graph.max_parallelism
    key_fn = v.inputs[0].key_fn if len(v.inputs) == 1 else None
    out: list[dict[int, list[bytes]]] = [{} for _ in range(p)]
    for subtask, channels in sorted(by_subtask.items()):
        for channel in sorted(channels):
            batches = channels[channel]
            if key_fn is None:
                target = out[subtask % p]
                target.setdefault(len(target), []).extend(batches)
                continue
            routed: list[list[bytes]] = [[] for _ in range(p)]
            split = getattr(key_fn, "split_batch", None)  # a key of record batches (flowstate.arrow.ColumnKey)
            for data in batches:
                batch = pickle.loads(data)
                if split is not None:
                    parts: list[list[Any]] = split(batch, routing_table(maxp, p), maxp, p)
                else:
                    parts = [[] for _ in range(p)]
                    for record in batch:
                        parts[subtask_for_key_group(key_group_of(key_fn(record), maxp), maxp, p)].append(record)
                for i, records in enumerate(parts):
                    if records:
                        routed[i].append(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
            for i, pickled in enumerate(routed):
                if pickled:
                    out[i][len(out[i])] = pickled
    for i, channels in enumerate(out):
        if channels:
            states[task_id(vertex, i)].channels = channels
