"""The file connectors and the generator pass the conformance kit, and the kit fails connectors that
break its rules (a kit that cannot fail proves nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import flowstate as fs
from flowstate.testing.conformance import (
    SINK_CHECKS,
    SOURCE_CHECKS,
    ConformanceFailure,
    SinkCase,
    SinkTarget,
    SourceCase,
    check_sink,
    check_source,
)

RECORDS = [["w", i] for i in range(10)]


def read_committed(directory: Path) -> list[Any]:
    if not directory.exists():
        return []
    out = []
    for path in sorted(directory.iterdir(), key=lambda p: (p.name.count("-"), [int(x) if x.isdigit() else x for x in p.stem.split("-")])):
        if not path.name.startswith("."):
            out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def file_sink_case(tmp_path: Path) -> SinkCase:
    counter = iter(range(10_000))

    def make_target() -> SinkTarget:
        directory = tmp_path / f"out-{next(counter)}"
        return SinkTarget(fs.FileSink(directory), lambda: read_committed(directory))

    return SinkCase(make_target, RECORDS)


@pytest.mark.parametrize("check", list(SINK_CHECKS))
def test_the_file_sink_passes_every_sink_check(check: str, tmp_path: Path) -> None:
    SINK_CHECKS[check](file_sink_case(tmp_path))


@pytest.mark.parametrize("check", list(SOURCE_CHECKS))
def test_the_file_source_passes_every_source_check(check: str, tmp_path: Path) -> None:
    lines = [f"line {i}" for i in range(9)]
    (tmp_path / "a.txt").write_text("".join(f"{x}\n" for x in lines[:5]))
    (tmp_path / "b.txt").write_text("".join(f"{x}\n" for x in lines[5:]))
    SOURCE_CHECKS[check](SourceCase(lambda: fs.FileSource(str(tmp_path / "*.txt")), lines))


def test_the_generator_passes_every_source_check() -> None:
    assert check_source(SourceCase(lambda: fs.GeneratorSource(lambda i: i * i, count=11, splits=3),
                                   [i * i for i in range(11)])) == list(SOURCE_CHECKS)


class _OffByOne:
    """A generator whose snapshot names the last record read instead of the next one."""

    def __init__(self) -> None:
        self.inner = fs.GeneratorSource(lambda i: i, count=6)
        self.name, self.replayable = "off-by-one", True

    def splits(self) -> list[str]:
        return self.inner.splits()

    def build_reader(self, splits: Any, resume_state: Any) -> Any:
        reader = self.inner.build_reader(splits, resume_state)
        snapshot = reader.snapshot
        reader_type = type("R", (), {
            "poll": lambda _, n: reader.poll(n),
            "snapshot": lambda _: {k: max(0, v - 1) for k, v in snapshot().items()},
            "close": lambda _: reader.close(),
        })
        return reader_type()


def test_the_kit_fails_a_source_whose_snapshot_names_the_last_record_read() -> None:
    with pytest.raises(ConformanceFailure, match="recovery_symmetry at cut 1"):
        check_source(SourceCase(_OffByOne, list(range(6))))


class _PublishAtPreCommit:
    """A file sink that also commits on the barrier: output visible before the checkpoint completes."""

    def __init__(self, sink: fs.FileSink) -> None:
        self.sink, self.name, self.transactional = sink, sink.name, True

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any) -> Any:
        return _EagerWriter(self.sink.build_writer(subtask, parallelism, resume_state))


class _EagerWriter:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def pre_commit(self, checkpoint_id: int) -> None:
        self.inner.pre_commit(checkpoint_id)
        self.inner.commit(checkpoint_id)


def test_the_kit_fails_a_sink_that_publishes_before_completion(tmp_path: Path) -> None:
    counter = iter(range(1000))

    def make_target() -> SinkTarget:
        directory = tmp_path / f"eager-{next(counter)}"
        return SinkTarget(_PublishAtPreCommit(fs.FileSink(directory)), lambda: read_committed(directory))

    with pytest.raises(ConformanceFailure, match="visible before commit"):
        check_sink(SinkCase(make_target, RECORDS))
