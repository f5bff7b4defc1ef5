"""Choosing an executor and placing tasks on workers; what a failure in a worker looks like from
the coordinator's side."""

from __future__ import annotations

import os

import pytest

import flowstate as fs
from flowstate.config import JobConfig, Mode
from flowstate.errors import ConfigError
from flowstate.executors.choice import choose_executor
from flowstate.executors.protocol import RemoteTaskError, place, portable
from flowstate.graph import build_job_graph


def job(parallelism: int, *, wide: int | None = None, sink: object = None) -> fs.Dataflow:
    flow = fs.Dataflow("job", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(lambda i: i, 10), uid="numbers")
         .map(lambda i: i * 2, uid="double", parallelism=wide)
         .sink(sink if sink is not None else fs.PrintSink(), uid="out"))
    return flow


def config(**settings) -> JobConfig:
    return JobConfig(mode=Mode.NONE, **settings)


def test_a_job_with_one_subtask_per_operator_runs_on_threads_and_a_wider_one_on_processes():
    assert choose_executor(config(), build_job_graph(job(1))) == ("threads", 0)
    assert choose_executor(config(), build_job_graph(job(2))) == ("processes", min(os.cpu_count() or 1, 2))
    assert choose_executor(config(executor="threads"), build_job_graph(job(2))) == ("threads", 0)


def test_workers_are_never_more_than_the_widest_operator_has_subtasks():
    assert choose_executor(config(workers=8), build_job_graph(job(1, wide=3))) == ("processes", 3)
    assert choose_executor(config(executor="processes", workers=2), build_job_graph(job(1))) == ("processes", 1)
    assert choose_executor(config(executor="ray"), build_job_graph(job(2, wide=4))) == ("ray", 4)


@pytest.mark.parametrize(("settings", "message"), [
    ({"executor": "cluster"}, "unknown executor 'cluster': choose one of threads, processes, ray"),
    ({"workers": 0}, "workers must be an integer ≥ 1, got 0"),
])
def test_an_unknown_executor_or_a_bad_number_of_workers_is_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        config(**settings)


def test_a_job_with_a_callable_sink_runs_on_threads_and_is_refused_under_processes_or_ray():
    seen: list[int] = []
    assert choose_executor(config(), build_job_graph(job(2, sink=seen.append))) == ("threads", 0)
    assert choose_executor(config(), build_job_graph(job(2, sink=fs.BatchCallbackSink(seen.extend)))) == ("threads", 0)
    for settings in ({"executor": "processes"}, {"executor": "ray"}, {"workers": 2}):
        with pytest.raises(ConfigError, match="calls a function of this process"):
            choose_executor(config(**settings), build_job_graph(job(2, sink=seen.append)))


def test_workers_for_the_threads_executor_are_refused():
    with pytest.raises(ConfigError, match="workers=2 needs the processes or ray executor"):
        choose_executor(config(executor="threads", workers=2), build_job_graph(job(2)))


def test_subtask_i_of_every_operator_runs_in_worker_i_modulo_the_workers():
    graph = build_job_graph(job(1, wide=3))

    placement = place(graph, 2)

    assert placement.count == 2
    assert list(zip(placement.tasks, placement.workers)) == [
        ("numbers#0", 0), ("double#0", 0), ("double#1", 1), ("double#2", 0), ("out#0", 0),
    ]
    assert placement.tasks_of(1) == ("double#1",)
    assert [placement.gate_of(t) for t in placement.tasks] == list(range(5))


def test_an_error_that_survives_pickling_is_sent_as_it_is_and_another_as_its_text():
    error = fs.UserFunctionError("halve", 137, ValueError("unlucky"))
    assert portable(error) is error

    class Local(Exception):
        pass

    sent = portable(Local("cannot be pickled: defined in a function"))
    assert type(sent) is RemoteTaskError
    assert (str(sent), sent.error_type) == ("cannot be pickled: defined in a function", "Local")


def test_a_function_failing_in_a_worker_fails_the_job_naming_operator_exception_and_record(tmp_path):
    def halve(i: int) -> int:
        if i == 7:
            raise ValueError("cannot halve the unlucky number")
        return i // 2

    flow = fs.Dataflow("halves", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: i, 40, splits=2), uid="numbers")
         .map(halve, name="halve", uid="halve")
         .sink(fs.FileSink(tmp_path / "out"), uid="out"))

    with pytest.raises(fs.JobFailedError) as failed:
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="processes"),
        )

    assert "operator 'halve' failed on record 7: ValueError: cannot halve the unlucky number" in str(failed.value)
    cause = failed.value.cause
    assert isinstance(cause, fs.UserFunctionError)
    assert (cause.operator, cause.record, type(cause.cause)) == ("halve", 7, ValueError)


def test_a_record_that_cannot_cross_processes_fails_the_job_saying_why(tmp_path):
    flow = fs.Dataflow("generators", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: i, 40, splits=2), uid="numbers")
         .map(lambda i: (i, (x for x in range(i))), uid="pairs")
         .key_by(lambda pair: pair[0])
         .map(lambda pair: pair[0], uid="firsts")
         .sink(fs.FileSink(tmp_path / "out"), uid="out"))

    with pytest.raises(fs.JobFailedError, match="cannot be pickled .*must be picklable, or run the job with executor threads"):
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(executor="processes"),
        )
