"""Small jobs the observability tests run, and a runner whose observer the tests can reach."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import flowstate as fs
from flowstate.checkpoint.coordinator import CheckpointConfig
from flowstate.config import JobConfig, Mode, NoRestart
from flowstate.runner.job import JobRunner
from flowstate.runner.result import JobResult


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, record: Any, ctx: fs.RuntimeContext) -> Any:
        n = self.count.value() + 1
        self.count.update(n)
        yield (record, n)


class SlowSink:
    """Sleeps ``seconds`` per batch: back-pressure for everything upstream."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, record: Any) -> None:
        time.sleep(self.seconds)


def keyed_count(records: int, rate: float, *, parallelism: int = 2, sink: Any = None) -> fs.Dataflow:
    flow = fs.Dataflow("observed", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(lambda i: i % 97, count=records, splits=parallelism, rate=rate))
         .key_by(lambda k: k).process(Count()).sink(sink or fs.DiscardSink()))
    return flow


class Running:
    """A job running on a thread of the test, with its metrics and dashboard server on a free port."""

    def __init__(self, flow: fs.Dataflow, directory: Path, *, control: bool = True, failpoints: fs.Failpoints | None = None,
                 **settings: Any) -> None:
        checkpoint = CheckpointConfig(interval=settings.pop("interval", 0.3), timeout=settings.pop("timeout", 30.0),
                                      tolerable_failures=settings.pop("tolerable_failures", 1000))
        config = JobConfig(mode=Mode.parse(settings.pop("mode", "exactly_once")), checkpoint_dir=directory,
                           checkpoint=checkpoint, restart=settings.pop("restart", NoRestart()), metrics_port=0,
                           control_endpoint=control, **settings)
        self.control = fs.JobControl()
        self.runner = JobRunner(flow, config, control=self.control, failpoints=failpoints)
        self.result: JobResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.runner.observer.server is None:
            assert time.monotonic() < deadline and self._thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.url = self.runner.observer.server.url

    def _run(self) -> None:
        try:
            self.result = self.runner.run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc

    def join(self, timeout: float = 60) -> JobResult:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the job did not end"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def stop(self) -> JobResult:
        if self._thread.is_alive():
            try:
                self.control.stop().result(timeout=60)
            except fs.ControlError:
                pass  # it ended first
        return self.join()
