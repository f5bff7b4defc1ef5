"""Rescaling: a job crashes at one parallelism and resumes from its latest checkpoint at another.

Each test runs the word count (``jobs.wordcount``) until the coordinator fails right after the
metadata of its third checkpoint became durable, before any task heard of it (so checkpoint 3 is the
newest complete one, taken mid-input, with keyed state, source positions and pending sink files that
nobody committed yet), then runs the same job at another parallelism from the same checkpoint
directory. The committed output must equal the batch reference exactly (every ``(word,
n)`` once): keyed state moved to the subtasks that own its key groups now, every split resumed where
checkpoint 3 left it whichever reader has it now, every pending file committed once, and no file name
reused. Every test asserts that the second run restored checkpoint 3 rather than starting again.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs

from .jobs import (
    INPUT_LINES,
    INTERVAL,
    RATE,
    assert_resumed,
    batch_reference,
    committed_output,
    difference,
    generator_source,
    line,
    wordcount,
)


def crash_after_three_checkpoints(flow: fs.Dataflow, checkpoints: Path, *, mode: str = "exactly_once",
                                  batch_size: int = 2048) -> None:
    with pytest.raises(fs.JobFailedError, match="InjectedFailure"):
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(mode=mode, checkpoint_dir=checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
            execution=fs.ExecutionOptions(batch_size=batch_size),
            failpoints=fs.Failpoints({"coordinator.metadata_before_notify": "raise@3"}),
        )


def assert_exactly_the_reference(output: Path, expected: Counter) -> None:
    actual = committed_output(output)
    assert Counter(actual) == expected, difference(actual, expected)


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 3), (4, 1)], ids=["1-to-2", "2-to-3", "4-to-1"])
@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_a_checkpoint_restored_at_another_parallelism_gives_the_batch_result(dirs, expected, before, after, mode):
    source = generator_source(INPUT_LINES, splits=4, rate=RATE / before)
    crash_after_three_checkpoints(wordcount(dirs.output, source=source, parallelism=before), dirs.checkpoints, mode=mode)
    assert committed_output(dirs.output), "the first run committed some output before it crashed"

    result = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, splits=4), parallelism=after),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL, mode=mode),
    )

    assert result.restored_from == [3]
    assert_resumed(result, INPUT_LINES)
    assert_exactly_the_reference(dirs.output, expected)


def test_file_splits_are_reassigned_with_their_byte_offsets(dirs, tmp_path):
    files = []
    for k in range(5):
        path = tmp_path / "input" / f"part-{k}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(line(i) + "\n" for i in range(k, INPUT_LINES, 5)))
        files.append(str(path))
    expected = batch_reference(line(i) for i in range(INPUT_LINES))

    class Slow(fs.ProcessFunction):
        """Lets the run last long enough for two checkpoints before the end of the input."""

        def process(self, text, ctx):
            import time

            time.sleep(0.0005)
            yield text

    def flow(parallelism: int) -> fs.Dataflow:
        f = fs.Dataflow("wordcount", parallelism=parallelism)
        (f.source(fs.FileSource(files, chunk_size=64), uid="lines")
          .process(Slow(), uid="slow")
          .flat_map(str.split, uid="words")
          .key_by(lambda word: word)
          .process(Count(), uid="count")
          .sink(fs.FileSink(dirs.output), uid="counts"))
        return f

    crash_after_three_checkpoints(flow(2), dirs.checkpoints, batch_size=16)
    result = fs.run(
        flow(3),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(batch_size=16),
    )

    assert result.restored_from == [3]
    assert_exactly_the_reference(dirs.output, expected)


def test_byte_ranges_of_one_file_resume_where_the_checkpoint_left_them_at_another_parallelism(dirs, tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("".join(line(i) + "\n" for i in range(INPUT_LINES)))
    expected = batch_reference(line(i) for i in range(INPUT_LINES))
    split_size = path.stat().st_size // 5 + 1

    class Slow(fs.ProcessFunction):
        """Lets the run last long enough for three checkpoints before the end of the input."""

        def process(self, text, ctx):
            import time

            time.sleep(0.0005)
            yield text

    def flow(parallelism: int) -> fs.Dataflow:
        f = fs.Dataflow("wordcount", parallelism=parallelism)
        (f.source(fs.FileSource(str(path), chunk_size=64, split_size=split_size), uid="lines")
          .process(Slow(), uid="slow")
          .flat_map(str.split, uid="words")
          .key_by(lambda word: word)
          .process(Count(), uid="count")
          .sink(fs.FileSink(dirs.output), uid="counts"))
        return f

    assert len(fs.FileSource(str(path), split_size=split_size).splits()) == 5
    crash_after_three_checkpoints(flow(2), dirs.checkpoints, batch_size=16)
    result = fs.run(
        flow(3),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(batch_size=16),
    )

    assert result.restored_from == [3]
    assert_resumed(result, INPUT_LINES)
    assert_exactly_the_reference(dirs.output, expected)


def test_scaling_down_and_up_again_keeps_every_committed_file(dirs, expected):
    crash_after_three_checkpoints(
        wordcount(dirs.output, source=generator_source(INPUT_LINES * 2, splits=4, rate=RATE / 2), parallelism=2),
        dirs.checkpoints)
    crash_after_three_checkpoints(
        wordcount(dirs.output, source=generator_source(INPUT_LINES * 2, splits=4, rate=RATE), parallelism=1),
        dirs.checkpoints)
    result = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES * 2, splits=4), parallelism=2),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )

    assert result.restored_from == [6]
    assert_exactly_the_reference(dirs.output, batch_reference(line(i) for i in range(INPUT_LINES * 2)))


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)
