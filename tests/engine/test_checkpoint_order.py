"""Orders that exactly-once depends on, observed from a job's own source and sink while it runs:

- a sink commits the output of checkpoint *n* only once *n*'s metadata is durable (a commit before
  it, followed by a crash, would restore an older checkpoint and write that output again);
- in ``stop_the_world`` a source reads nothing from the moment it snapshots its offsets for a
  checkpoint until that checkpoint completed.

The job runs on the threads executor so that the checks can report into this process's memory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import flowstate as fs

from .jobs import (
    INPUT_LINES,
    INTERVAL,
    RATE,
    committed_output,
    generator_source,
    wordcount,
)


def newest_completed(chk: Path) -> int:
    ids = [int(d.name.split("-")[1]) for d in chk.glob("chk-*") if (d / "_metadata").exists()]
    return max(ids, default=0)


class CheckingSink:
    """A ``FileSink`` whose writers note every commit that precedes its checkpoint's metadata."""

    def __init__(self, inner: fs.FileSink, chk: Path, early: list[int]) -> None:
        self.inner, self.chk, self.early = inner, chk, early

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def transactional(self) -> bool:
        return True

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any) -> Any:
        return CheckingWriter(self.inner.build_writer(subtask, parallelism, resume_state), self)


class CheckingWriter:
    def __init__(self, inner: Any, sink: CheckingSink) -> None:
        self.inner, self.sink = inner, sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, checkpoint_id: int) -> None:
        if not (self.sink.chk / f"chk-{checkpoint_id:06d}" / "_metadata").exists():
            self.sink.early.append(checkpoint_id)
        self.inner.commit(checkpoint_id)


class CheckingSource:
    """A source whose readers note every poll between a snapshot and that checkpoint's completion."""

    def __init__(self, inner: Any, chk: Path, reads: list[int]) -> None:
        self.inner, self.chk, self.reads = inner, chk, reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def build_reader(self, splits: Any, resume_state: Any) -> Any:
        return CheckingReader(self.inner.build_reader(splits, resume_state), self)


class CheckingReader:
    def __init__(self, inner: Any, source: CheckingSource) -> None:
        self.inner, self.source = inner, source
        self.paused_after: int | None = None

    def snapshot(self) -> Any:
        self.paused_after = newest_completed(self.source.chk)
        return self.inner.snapshot()

    def poll(self, max_records: int) -> Any:
        if self.paused_after is not None:
            if newest_completed(self.source.chk) <= self.paused_after:
                self.source.reads.append(self.paused_after + 1)
            else:
                self.paused_after = None
        return self.inner.poll(max_records)

    def close(self) -> None:
        self.inner.close()


def test_sinks_commit_a_checkpoint_only_after_its_metadata_is_durable(dirs, expected):
    early: list[int] = []
    sink = CheckingSink(fs.FileSink(str(dirs.output)), dirs.checkpoints, early)
    flow = wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE), parallelism=2, sink=sink)
    # A pause between the last acknowledgement and the metadata write leaves time for a task to
    # act on a notification that came too early.
    failpoints = fs.Failpoints({"coordinator.all_acks_before_metadata": "stall(0.05)"})

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=failpoints,
    )

    assert result.checkpoints_completed >= 3
    assert early == [], f"commits before the metadata of checkpoints {sorted(set(early))}"
    assert Counter(committed_output(dirs.output)) == expected


def test_stop_the_world_sources_read_nothing_until_the_checkpoint_completed(dirs, expected):
    reads: list[int] = []
    source = CheckingSource(generator_source(INPUT_LINES, rate=RATE), dirs.checkpoints, reads)
    flow = wordcount(dirs.output, source=source, parallelism=2)

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, mode="stop_the_world"),
        execution=fs.ExecutionOptions(executor="threads"),
    )

    assert result.checkpoints_completed >= 3
    assert reads == [], f"sources read during checkpoints {sorted(set(reads))}"
    assert Counter(committed_output(dirs.output)) == expected
