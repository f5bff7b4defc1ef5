"""A sink that calls a function of the caller's process (``stream.sink(results.append)``,
``CallbackSink``, ``BatchCallbackSink``) runs where the caller sees what it collects: on the threads
executor, whatever the parallelism. Asking for worker processes or Ray with such a sink is refused
with one line, since their workers would call copies of the function and the caller's list would
stay empty."""

from __future__ import annotations

from collections import Counter

import pytest

import flowstate as fs

from .jobs import batch_reference, generator_source, lines, wordcount

LINES = 200


def test_a_callable_sink_at_parallelism_2_runs_in_this_process_and_the_caller_sees_every_record(dirs):
    results: list[tuple[str, int]] = []
    flow = wordcount(dirs.output, source=generator_source(LINES), parallelism=2, sink=results.append)

    result = fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval="50ms"))

    assert (result.executor, result.workers) == ("threads", 0)
    assert Counter(results) == batch_reference(lines(LINES))


def test_a_batch_callback_sink_at_parallelism_2_delivers_every_record_to_the_caller(dirs):
    batches: list[list[tuple[str, int]]] = []
    flow = wordcount(dirs.output, source=generator_source(LINES), parallelism=2, sink=fs.BatchCallbackSink(batches.append))

    fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval="50ms"))

    assert Counter(r for batch in batches for r in batch) == batch_reference(lines(LINES))


@pytest.mark.parametrize("settings", [{"executor": "processes"}, {"executor": "ray"}, {"workers": 2}],
                         ids=["processes", "ray", "workers"])
def test_a_callable_sink_is_refused_under_worker_processes_with_one_line_naming_it(settings, dirs):
    results: list[object] = []
    flow = wordcount(dirs.output, source=generator_source(LINES), parallelism=2, sink=fs.CallbackSink(results.append))

    with pytest.raises(fs.ConfigError) as refused:
        fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints),
               execution=fs.ExecutionOptions(**settings))

    message = str(refused.value)
    assert "\n" not in message
    assert "sink 'callback' calls a function of this process" in message
    assert "executor threads" in message
    assert results == []
