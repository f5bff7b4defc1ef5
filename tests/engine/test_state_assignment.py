"""State assignment on restore (``flowstate.task.assignment``), on hand-made snapshots: which
task gets which state at a new parallelism, and the refusals, each naming the operator and the state."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import replace
from typing import Any

import pytest

import flowstate as fs
from flowstate.checkpoint.ids import CheckpointId, TaskId, task_id
from flowstate.graph import build_job_graph
from flowstate.kinds import NodeKind
from flowstate.state.backend import RestoredState
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.memory import HeapKeyedStateBackend, heap_snapshot_entries
from flowstate.storage.base import CheckpointMetadata, JobRecord, OperatorRecord, TaskState
from flowstate.storage.state_file import KeyedSnapshot, TaskStateFile
from flowstate.task.assignment import assign_states, describe_graph

MAXP = 128


class Count(fs.KeyedProcessFunction):
    def process(self, word, ctx):
        yield word


class Opaque:
    """A source whose reader positions are not keyed by split: it cannot be rescaled."""

    name = "opaque"
    replayable = True

    def splits(self) -> list[str]:
        return ["a", "b"]

    def build_reader(self, splits, resume_state):
        raise NotImplementedError


class Plain:
    """A sink whose writers have state but no way to redistribute it."""

    name = "plain"
    transactional = False

    def build_writer(self, subtask, parallelism, resume_state):
        raise NotImplementedError


def flow(parallelism: int, *, source: Any = None, sink: Any = None, count_uid: str = "count",
         map_instead: bool = False, sink_uid: str = "out") -> fs.Dataflow:
    f = fs.Dataflow("job", parallelism=parallelism)
    stream = f.source(source or fs.GeneratorSource(str, 100, splits=4), uid="src")
    words = stream.key_by(lambda w: w)
    out = words.map(str.upper, uid=count_uid) if map_instead else words.process(Count(), uid=count_uid)
    out.sink(sink or fs.FileSink("/nonexistent/out"), uid=sink_uid)
    return f


def keyed(parallelism: int, subtask: int, keys: dict[str, int]) -> KeyedSnapshot:
    """A keyed operator's part of a task state file, as a task stores it."""
    owned = key_group_range(MAXP, parallelism, subtask)
    backend = HeapKeyedStateBackend(MAXP, owned)
    count = backend.value_state("count")
    for k, v in keys.items():
        if key_group_of(k, MAXP) in owned:
            backend.keys.current_key = k
            count.update(v)
    return KeyedSnapshot(backend.snapshot().materialize().data)


def restored_entries(parallelism: int, subtask: int, parts: list[KeyedSnapshot]) -> dict[str, int]:
    backend = HeapKeyedStateBackend(MAXP, key_group_range(MAXP, parallelism, subtask))
    backend.restore([RestoredState(dict(p.data)) for p in parts])
    return heap_snapshot_entries(backend.snapshot().materialize().data, "count")


def snapshot(old: fs.Dataflow, states: dict[TaskId, TaskStateFile], *, extra: bool = True) -> CheckpointMetadata:
    graph = build_job_graph(old)
    tasks = tuple(
        TaskState(task_id(v.name, i), v.name, i, None) for v in graph.vertices for i in range(v.parallelism)
    )
    return CheckpointMetadata(
        CheckpointId(7), "job", "exactly_once", False, 0.0, 1.0, MAXP,
        {v.name: v.parallelism for v in graph.vertices}, tasks, describe_graph(graph) if extra else None,
    )


def old_states(parallelism: int, keys: dict[str, int], *, sink_state: Any = None) -> dict[TaskId, TaskStateFile]:
    states: dict[TaskId, TaskStateFile] = {}
    for i in range(parallelism):
        splits = [f"gen-{k}" for k in range(4)][i::parallelism]
        states[task_id("src", i)] = TaskStateFile(source={s: 100 + int(s[-1]) for s in splits})
        states[task_id("count", i)] = TaskStateFile({
            "count": keyed(parallelism, i, keys),
            "out": sink_state if sink_state is not None else {"seq": i, "pending": []},
        })
    return states


KEYS = {f"word-{n}": n for n in range(40)}


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 3), (4, 1), (3, 3)])
def test_every_key_and_every_split_position_lands_in_exactly_one_new_subtask(before, after):
    md = snapshot(flow(before), old_states(before, KEYS))
    graph = build_job_graph(flow(after))

    assigned = assign_states(graph, md, old_states(before, KEYS)).states

    restored: dict[str, int] = {}
    for i in range(after):
        table = restored_entries(after, i, assigned[task_id("count", i)].operators["count"])
        assert not set(table) & set(restored), "a key restored twice"
        restored.update(table)
    assert restored == KEYS
    positions = [assigned[task_id("src", i)].source for i in range(after)]
    assert positions == [{f"gen-{k}": 100 + k for k in range(4)[i::after]} for i in range(after)]


def test_at_the_same_parallelism_each_task_gets_its_own_state_back():
    states = old_states(2, KEYS)
    assigned = assign_states(build_job_graph(flow(2)), snapshot(flow(2), states), states).states

    for i in range(2):
        assert assigned[task_id("count", i)].operators["count"] == [states[task_id("count", i)].operators["count"]]
        assert assigned[task_id("count", i)].operators["out"] == states[task_id("count", i)].operators["out"]
        assert assigned[task_id("src", i)].source == states[task_id("src", i)].source


def test_keyed_state_of_a_uid_the_job_no_longer_has_is_refused_naming_operator_and_state():
    md = snapshot(flow(2), old_states(2, KEYS))

    with pytest.raises(fs.ConfigError) as refused:
        assign_states(build_job_graph(flow(2, count_uid="tally")), md, old_states(2, KEYS))
    assert "checkpoint 7 holds keyed state 'count' of operator 'Count' (uid 'count'), which the job no longer has" \
        in str(refused.value)
    assert "--allow-non-restored-state" in str(refused.value)


def test_state_dropped_when_allowed_is_reported_and_the_new_operator_starts_empty():
    md = snapshot(flow(2), old_states(2, KEYS))

    assignment = assign_states(build_job_graph(flow(3, count_uid="tally")), md, old_states(2, KEYS),
                               allow_non_restored_state=True)

    assert len(assignment.dropped) == 1 and "(uid 'count')" in assignment.dropped[0]
    assert all("tally" not in state.operators and "count" not in state.operators for state in assignment.states.values())


def test_a_sinks_state_is_not_dropped_by_allow_non_restored_state_alone():
    pending = {"seq": 1, "pending": [(7, ".part-0-0.1a2b3c4d5e6f.pending")]}
    states = old_states(2, KEYS, sink_state=pending)
    md = snapshot(flow(2), states)
    renamed = build_job_graph(flow(2, sink_uid="output"))

    with pytest.raises(fs.ConfigError) as refused:
        assign_states(renamed, md, states, allow_non_restored_state=True)
    message = str(refused.value)
    assert "holds the sink writers' state (pending commits) of operator" in message and "(uid 'out')" in message
    assert "loses the output its checkpoint pre-committed" in message and "--drop-sink-state" in message

    assignment = assign_states(renamed, md, states, allow_non_restored_state=True, drop_sink_state=True)
    assert len(assignment.dropped) == 1 and "(uid 'out')" in assignment.dropped[0]
    assert all("out" not in state.operators and "output" not in state.operators for state in assignment.states.values())


def test_keyed_state_given_to_an_operator_that_cannot_take_it_is_refused():
    md = snapshot(flow(2), old_states(2, KEYS))

    with pytest.raises(fs.ConfigError, match=r"keyed state 'count' of operator 'Count' \(uid 'count'\), which is now a "
                                             r"map operator that cannot take it"):
        assign_states(build_job_graph(flow(2, map_instead=True)), md, old_states(2, KEYS))


def test_a_source_whose_positions_are_not_per_split_is_restored_only_at_its_old_parallelism():
    states = {task_id("src", i): TaskStateFile(source={"offset": 10 * i}) for i in range(2)}
    for i in range(2):
        states[task_id("count", i)] = TaskStateFile({"out": {"seq": 0, "pending": []}})
    md = snapshot(flow(2, source=Opaque()), states)

    same = assign_states(build_job_graph(flow(2, source=Opaque())), md, states).states
    assert same[task_id("src", 1)].source == {"offset": 10}
    with pytest.raises(fs.ConfigError, match=r"source 'opaque' \(uid 'src'\) ran with parallelism 2 and now has 3, but "
                                             r"its read positions cannot be reassigned split by split"):
        assign_states(build_job_graph(flow(3, source=Opaque())), md, states)


def test_a_sink_that_cannot_redistribute_its_state_is_restored_only_at_its_old_parallelism():
    states = old_states(2, KEYS, sink_state={"anything": 1})
    md = snapshot(flow(2, sink=Plain()), states)

    assert assign_states(build_job_graph(flow(2, sink=Plain())), md, states).states[task_id("count", 0)].operators["out"] == {
        "anything": 1}
    with pytest.raises(fs.ConfigError, match=r"sink operator 'plain' \(uid 'out'\) ran with parallelism 2 and now has "
                                             r"1, but Plain cannot redistribute its writers' state"):
        assign_states(build_job_graph(flow(1, sink=Plain())), md, states)


def test_max_parallelism_cannot_change():
    md = snapshot(flow(2), old_states(2, KEYS))
    other = fs.Dataflow("job", parallelism=2, max_parallelism=64)
    other.source(fs.GeneratorSource(str, 10), uid="src").sink(fs.FileSink("/nonexistent/out"), uid="out")

    with pytest.raises(fs.ConfigError, match="max_parallelism cannot change"):
        assign_states(build_job_graph(other), md, old_states(2, KEYS))


def test_channel_state_of_a_keyed_input_is_routed_to_the_owner_of_each_record_in_channel_order():
    states = old_states(2, KEYS)
    records = [f"word-{n}" for n in range(40)]
    states[task_id("count", 0)] = replace(states[task_id("count", 0)], channels={
        0: [pickle.dumps(records[:20]), pickle.dumps(records[20:30])], 1: [pickle.dumps(records[30:])]})
    md = snapshot(flow(2), states)

    assigned = assign_states(build_job_graph(flow(3)), md, states).states

    seen: list[str] = []
    for i in range(3):
        channels = assigned[task_id("count", i)].channels
        mine = [r for ch in sorted(channels) for data in channels[ch] for r in pickle.loads(data)]
        owned = key_group_range(MAXP, 3, i)
        assert all(key_group_of(r, MAXP) in owned for r in mine)
        assert mine == [r for r in records if key_group_of(r, MAXP) in owned], "order kept"
        seen += mine
    assert sorted(seen) == sorted(records)


def test_channel_state_without_recorded_inputs_is_refused_at_another_parallelism():
    states = old_states(2, KEYS)
    states[task_id("count", 1)] = replace(states[task_id("count", 1)], channels={0: [pickle.dumps(["word-1"])]})
    md = snapshot(flow(2), states, extra=False)

    assert assign_states(build_job_graph(flow(2)), md, states).states[task_id("count", 1)].channels == {
        0: [pickle.dumps(["word-1"])]}
    with pytest.raises(fs.ConfigError, match="operator chain 'count' but does not record the vertex's inputs"):
        assign_states(build_job_graph(flow(3)), md, states)


def test_an_operator_that_snapshotted_nothing_may_leave_the_job_without_a_refusal():
    states = old_states(2, KEYS, sink_state=None)
    for i in range(2):
        states[task_id("count", i)] = TaskStateFile({"count": states[task_id("count", i)].operators["count"], "out": None})
    md = snapshot(flow(2, sink=fs.CallbackSink(print)), states)
    other = fs.Dataflow("job", parallelism=2)
    (other.source(fs.GeneratorSource(str, 100, splits=4), uid="src").key_by(lambda w: w)
          .process(Count(), uid="count").sink(fs.FileSink("/nonexistent/out"), uid="files"))

    assigned = assign_states(build_job_graph(other), md, states).states

    assert "files" not in assigned[task_id("count", 0)].operators and "count" in assigned[task_id("count", 0)].operators


class Tally(fs.ProcessFunction):
    def process(self, value, ctx):
        yield value


def test_non_keyed_operator_state_is_restored_only_at_its_old_parallelism():
    def with_process(parallelism: int) -> fs.Dataflow:
        f = fs.Dataflow("job", parallelism=parallelism)
        (f.source(fs.GeneratorSource(str, 100, splits=4), uid="src").process(Tally(), uid="tally")
          .sink(fs.CallbackSink(print), uid="out"))
        return f

    states = {task_id("src", i): TaskStateFile({"tally": {"seen": 10 + i}}) for i in range(2)}
    md = snapshot(with_process(2), states)
    assert md.graph is not None
    recorded = JobRecord({**md.graph.operators, "tally": OperatorRecord("Tally", NodeKind.PROCESS, "src")}, md.graph.inputs)
    md = dataclasses.replace(md, graph=recorded)

    same = assign_states(build_job_graph(with_process(2)), md, states).states
    assert [same[task_id("src", i)].operators["tally"] for i in range(2)] == [{"seen": 10}, {"seen": 11}]
    with pytest.raises(fs.ConfigError, match=r"operator 'Tally' \(uid 'tally'\) ran with parallelism 2 and now has 3, "
                                             r"but its non-keyed operator state cannot be redistributed"):
        assign_states(build_job_graph(with_process(3)), md, states)
