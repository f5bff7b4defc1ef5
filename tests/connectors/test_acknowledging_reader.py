"""The engine's side of ``AcknowledgingReader``: a source task calls ``snapshot_for(n)`` on the barrier
of checkpoint n (instead of ``snapshot()``) and ``notify_complete(n)`` only after n completed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flowstate as fs


class Recording:
    """A generator source whose readers log the calls the task makes (threads executor: one process)."""

    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.inner = fs.GeneratorSource(lambda i: i, count=20_000, rate=40_000)
        self.log = log
        self.name, self.replayable = "recording", True

    def splits(self) -> list[str]:
        return self.inner.splits()

    def build_reader(self, splits: Any, resume_state: Any) -> Any:
        return RecordingReader(self.inner.build_reader(splits, resume_state), self.log)


class RecordingReader:
    def __init__(self, inner: Any, log: list[tuple[str, int]]) -> None:
        self.inner, self.log = inner, log

    def poll(self, n: int) -> Any:
        return self.inner.poll(n)

    def snapshot(self) -> Any:
        self.log.append(("snapshot", -1))
        return self.inner.snapshot()

    def snapshot_for(self, checkpoint_id: int) -> Any:
        self.log.append(("snapshot_for", checkpoint_id))
        return self.inner.snapshot()

    def notify_complete(self, checkpoint_id: int) -> None:
        self.log.append(("complete", checkpoint_id))

    def notify_aborted(self, checkpoint_id: int) -> None:
        self.log.append(("aborted", checkpoint_id))

    def close(self) -> None:
        self.inner.close()


def test_a_source_task_tells_an_acknowledging_reader_of_each_barrier_and_each_completion(tmp_path: Path) -> None:
    log: list[tuple[str, int]] = []
    flow = fs.Dataflow("ack", parallelism=1)
    flow.source(Recording(log), uid="in").sink(fs.BatchCallbackSink(lambda records: None, name="drop"), uid="out")
    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )

    assert ("snapshot", -1) not in log, "snapshot() was called instead of snapshot_for()"
    barriers = [cid for kind, cid in log if kind == "snapshot_for"]
    completions = [cid for kind, cid in log if kind == "complete"]
    assert len(barriers) >= 2 and completions, log
    assert barriers == sorted(barriers)
    for cid in completions:
        assert log.index(("snapshot_for", cid)) < log.index(("complete", cid)), f"completion of {cid} before its barrier"
    assert completions[-1] == result.last_checkpoint
