"""Dataflows that cannot run are refused with a message naming the operator (or the dataflow, or
the setting); dataflows that can run are cut into chains as ``flowstate.graph`` documents; keys map
to key groups the same way in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import pytest

import flowstate as fs
from flowstate.graph import build_job_graph
from flowstate.state.keygroups import key_group_of

from .jobs import Count


def source(flow: fs.Dataflow, **kwargs) -> fs.Stream:
    return flow.source(fs.GeneratorSource(str, 10, name="numbers"), **kwargs)


def discard(record) -> None:
    pass


# ---- mistakes seen while the graph is written ----------------------------------------------------


def test_a_keyed_process_function_without_key_by_is_refused_naming_the_operator():
    flow = fs.Dataflow("job")

    with pytest.raises(fs.GraphError, match=r"process 'tally': Count is a KeyedProcessFunction .* key_by"):
        source(flow).process(Count(), name="tally")


def test_a_parallelism_above_max_parallelism_is_refused_naming_the_operator():
    flow = fs.Dataflow("job", max_parallelism=4)

    with pytest.raises(fs.GraphError, match=r"map 'wide': parallelism 5 is above max_parallelism 4"):
        source(flow).map(str.upper, name="wide", parallelism=5)


def test_a_default_parallelism_above_max_parallelism_is_refused_naming_the_dataflow():
    with pytest.raises(fs.GraphError, match=r"dataflow 'job': parallelism 8 is above max_parallelism 4"):
        fs.Dataflow("job", parallelism=8, max_parallelism=4)

    flow = fs.Dataflow("job", max_parallelism=4)
    source(flow).sink(discard)
    with pytest.raises(fs.GraphError, match=r"dataflow 'job': parallelism 8 is above max_parallelism 4"):
        fs.run(flow, checkpoints=fs.CheckpointOptions(mode="none"), execution=fs.ExecutionOptions(parallelism=8))


@pytest.mark.parametrize("method", ["map", "filter", "flat_map", "key_by"])
def test_a_function_that_is_not_callable_is_refused_naming_the_operator_and_leaving_the_dataflow_unchanged(method):
    flow = fs.Dataflow("job")
    stream = source(flow)
    nodes = list(flow.nodes)

    with pytest.raises(fs.GraphError, match=rf"{method} 'broken': 'not a function' is not callable"):
        getattr(stream, method)("not a function", name="broken")

    assert flow.nodes == nodes


def test_a_duplicate_uid_is_refused_naming_the_operator_and_the_uid():
    flow = fs.Dataflow("job")
    stream = source(flow, uid="numbers").map(str.upper, name="upper", uid="step")

    with pytest.raises(fs.GraphError, match=r"filter 'short': uid 'step' is already used by another operator"):
        stream.filter(lambda s: len(s) < 2, name="short", uid="step")


def test_reduce_on_a_stream_that_is_not_keyed_is_refused_naming_the_operator():
    flow = fs.Dataflow("job")

    with pytest.raises(fs.GraphError, match=r"reduce 'total'.*key_by"):
        source(flow).reduce(lambda a, b: a + b, name="total")


def test_an_object_that_is_not_a_source_is_refused():
    flow = fs.Dataflow("job")

    with pytest.raises(fs.GraphError, match=r"\[1, 2, 3\] is not a source \(it has no splits\)"):
        flow.source([1, 2, 3])
    assert flow.nodes == []


# ---- mistakes seen when the job is built ---------------------------------------------------------


def test_an_empty_dataflow_is_refused_naming_it():
    with pytest.raises(fs.GraphError, match=r"dataflow 'nothing' is empty"):
        fs.run(fs.Dataflow("nothing"), checkpoints=fs.CheckpointOptions(mode="none"))


def test_a_dataflow_without_a_sink_is_refused_naming_it():
    flow = fs.Dataflow("nowhere")
    source(flow).map(str.upper)

    with pytest.raises(fs.GraphError, match=r"dataflow 'nowhere' has no sink"):
        fs.run(flow, checkpoints=fs.CheckpointOptions(mode="none"))


def test_an_unknown_mode_is_refused_listing_the_modes(tmp_path):
    flow = fs.Dataflow("job")
    source(flow).sink(discard)

    with pytest.raises(fs.ConfigError, match=r"unknown mode 'twice': choose one of exactly_once, at_least_once, "
                                             r"unaligned, stop_the_world, none"):
        fs.run(flow, checkpoints=fs.CheckpointOptions(mode="twice", checkpoint_dir=tmp_path))


@pytest.mark.parametrize("mode", ["exactly_once", "at_least_once", "stop_the_world"])
def test_a_mode_that_takes_checkpoints_needs_a_checkpoint_directory(mode):
    flow = fs.Dataflow("job")
    source(flow).sink(discard)

    with pytest.raises(fs.ConfigError, match=rf"mode {mode} takes checkpoints and needs a checkpoint directory"):
        fs.run(flow, checkpoints=fs.CheckpointOptions(mode=mode))


# ---- chaining ------------------------------------------------------------------------------------


def test_forward_operators_after_a_source_are_chained_into_one_vertex():
    flow = fs.Dataflow("job", parallelism=2)
    (source(flow, uid="numbers")
        .flat_map(lambda s: [s, s], name="twice")
        .map(str.upper, name="upper")
        .sink(discard, name="out"))

    graph = build_job_graph(flow)

    assert [v.describe() for v in graph.vertices] == [
        "source(numbers) -> flat_map(twice) -> map(upper) -> sink(out)",
    ]
    assert graph.vertices[0].name == "numbers" and graph.vertices[0].parallelism == 2


def test_key_by_breaks_the_chain_with_a_hash_edge():
    flow = fs.Dataflow("job", parallelism=2)
    (source(flow, uid="numbers")
        .flat_map(lambda s: [s], name="words")
        .key_by(lambda w: w)
        .process(Count(), name="count", uid="count")
        .sink(discard, name="out"))

    graph = build_job_graph(flow)

    assert graph.describe() == (
        "numbers x2: source(numbers) -> flat_map(words)\n"
        "count x2: keyed_process(count) -> sink(out)  <- numbers [hash]"
    )


def test_an_operator_with_two_consumers_ends_its_chain():
    flow = fs.Dataflow("job")
    upper = source(flow, uid="numbers").map(str.upper, name="upper", uid="upper")
    upper.sink(discard, name="first", uid="first")
    upper.map(str.lower, name="lower", uid="lower").sink(discard, name="second", uid="second")

    graph = build_job_graph(flow)

    assert graph.describe() == (
        "numbers x1: source(numbers) -> map(upper)\n"
        "first x1: sink(first)  <- numbers [forward]\n"
        "lower x1: map(lower) -> sink(second)  <- numbers [forward]"
    )


# ---- stable key groups ---------------------------------------------------------------------------


KNOWN_KEY_GROUPS = [
    # key, its group of 128, its group of 32768: CRC-32 of the key's canonical bytes, mixed by the
    # 32-bit golden ratio and reduced by multiply-shift.
    ("alpha", 19, 5112),
    ("word", 31, 8054),
    (42, 94, 24121),
    (-7, 108, 27864),
    (3.5, 96, 24701),
    (None, 1, 478),
    (b"bytes", 120, 30883),
    (("a", 1), 123, 31586),
]


def test_the_key_group_formula_is_crc32_mixed_by_the_golden_ratio():
    for word in ("alpha", "word", "split-3"):
        mixed = (zlib.crc32(word.encode()) * 0x9E3779B1) & 0xFFFFFFFF
        assert key_group_of(word, 128) == mixed * 128 >> 32


def test_similar_keys_spread_over_both_halves_of_the_key_groups():
    halves = {key_group_of(f"split-{i}", 128) < 64 for i in range(10)}
    assert halves == {True, False}
    assert {key_group_of(i, 128) < 64 for i in range(20)} == {True, False}


_PROBE = """
import json
from flowstate.state.keygroups import key_group_of
keys = ["alpha", "word", 42, -7, 3.5, None, b"bytes", ("a", 1)]
print(json.dumps({
    "hash": hash("alpha"),
    "groups": [[key_group_of(k, 128), key_group_of(k, 32768)] for k in keys],
}))
"""


def _probe(hash_seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_key_groups_are_fixed_values_that_do_not_depend_on_the_salted_hash():
    one, two = _probe("1"), _probe("2")

    assert one["hash"] != two["hash"], "the two processes must salt str hashes differently"
    expected = [[small, large] for _, small, large in KNOWN_KEY_GROUPS]
    assert one["groups"] == expected
    assert two["groups"] == expected


@pytest.mark.parametrize("uid", ["_clicks", ".clicks"])
def test_a_source_uid_starting_with_an_underscore_or_a_dot_checkpoints_and_restores(uid, tmp_path):
    # Such a uid names the vertex its chain forms, and so the state file of each of its subtasks.
    def job() -> fs.Dataflow:
        flow = fs.Dataflow("uids")
        (flow.source(fs.GeneratorSource(lambda i: i, 3000, rate=6000.0), uid=uid).map(lambda x: x + 1)
             .sink(fs.FileSink(tmp_path / "out"), uid="out"))
        return flow

    failpoints = fs.Failpoints({"sink.before_commit": "raise@3"})
    result = fs.run(
        job(),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(2, 0.0)),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=failpoints,
    )
    assert failpoints.fired("sink.before_commit") == 1 and not result.failures[1:]
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < 3000
