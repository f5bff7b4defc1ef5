"""PrintSink, CallbackSink and BatchCallbackSink: at-least-once sinks whose output is visible at once."""

from __future__ import annotations

import io
import sys

import pytest

from flowstate.connectors.print_sink import BatchCallbackSink, CallbackSink, PrintSink


def every_sink(collected, stream=None):
    stream = io.StringIO() if stream is None else stream
    return [PrintSink(stream), CallbackSink(collected.append), BatchCallbackSink(collected.append)]


def test_print_sink_writes_one_line_per_record_to_the_given_stream():
    stream = io.StringIO()
    writer = PrintSink(stream).build_writer(0, 1, None)
    writer.write_batch([("a", 1), "b", 3])
    writer.write_batch([])
    writer.write_batch([None])
    assert stream.getvalue() == "('a', 1)\nb\n3\nNone\n"


def test_print_sink_writes_to_stdout_as_it_is_when_records_are_written(capsys):
    writer = PrintSink().build_writer(0, 1, None)
    writer.write_batch(["hello", 2])
    assert capsys.readouterr().out == "hello\n2\n"


def test_print_sink_writes_each_batch_in_one_call():
    class CountingStream(io.StringIO):
        calls = 0

        def write(self, text):
            CountingStream.calls += 1
            return super().write(text)

    stream = CountingStream()
    PrintSink(stream).build_writer(0, 1, None).write_batch(list(range(100)))
    assert CountingStream.calls == 1
    assert stream.getvalue().count("\n") == 100


def test_callback_sink_calls_fn_once_per_record_in_order():
    seen = []
    writer = CallbackSink(seen.append).build_writer(0, 1, None)
    writer.write_batch([1, 2])
    writer.write_batch([3])
    assert seen == [1, 2, 3]


def test_batch_callback_sink_calls_fn_once_per_batch_with_a_list_it_may_keep():
    seen = []
    writer = BatchCallbackSink(seen.append).build_writer(0, 1, None)
    batch = [1, 2]
    writer.write_batch(batch)
    writer.write_batch([])
    writer.write_batch([3])
    batch.append("changed by the caller")
    assert seen == [[1, 2], [3]]


def test_these_sinks_are_not_transactional_and_keep_their_names():
    assert [s.transactional for s in every_sink([])] == [False, False, False]
    assert [s.name for s in every_sink([])] == ["print", "callback", "batch-callback"]
    assert PrintSink(name="out").name == "out"
    assert CallbackSink(print, name="cb").name == "cb"
    assert BatchCallbackSink(print, name="bcb").name == "bcb"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_two_phase_commit_calls_do_nothing_and_the_snapshot_is_none(index):
    collected, stream = [], io.StringIO()
    writer = every_sink(collected, stream)[index].build_writer(0, 1, None)
    writer.write_batch(["x"])
    output_before = (stream.getvalue(), list(collected))
    writer.pre_commit(1)
    assert writer.snapshot() is None
    writer.commit(1)
    writer.finish()
    writer.close()
    assert (stream.getvalue(), collected) == output_before
    assert output_before in (("x\n", []), ("", ["x"]), ("", [["x"]]))


def test_output_is_visible_before_any_checkpoint_completes():
    seen = []
    writer = CallbackSink(seen.append).build_writer(0, 1, None)
    writer.write_batch(["now"])
    assert seen == ["now"]


def test_a_callback_that_is_not_callable_is_rejected():
    with pytest.raises(TypeError, match="CallbackSink"):
        CallbackSink("print")
    with pytest.raises(TypeError, match="BatchCallbackSink"):
        BatchCallbackSink(None)


def test_the_default_stream_is_not_bound_when_the_sink_is_built(monkeypatch):
    writer = PrintSink().build_writer(0, 1, None)
    replacement = io.StringIO()
    monkeypatch.setattr(sys, "stdout", replacement)
    writer.write_batch(["late"])
    assert replacement.getvalue() == "late\n"


def test_discard_sink_drops_records_and_a_job_on_worker_processes_reaches_it(tmp_path):
    from flowstate import CheckpointOptions, Dataflow, DiscardSink, ExecutionOptions, GeneratorSource, run

    sink = DiscardSink()
    assert (sink.name, sink.transactional, DiscardSink(name="drop").name) == ("discard", False, "drop")
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([1, 2])
    assert writer.snapshot() is None
    flow = Dataflow("discarded", parallelism=2)
    flow.source(GeneratorSource(lambda i: i, count=1_000, splits=2)).key_by(lambda x: x % 7).sink(sink)
    result = run(flow, checkpoints=CheckpointOptions(checkpoint_dir=tmp_path), execution=ExecutionOptions(executor="processes"))
    assert (result.executor, result.records) == ("processes", 1_000)
