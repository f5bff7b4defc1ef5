"""The word-count job the engine tests run, its committed output, and the batch reference.

The job: a source of lines → ``flat_map(str.split)`` → ``key_by(word)`` → ``Count`` (a
``KeyedProcessFunction`` keeping the running count of each word in value state and emitting
``(word, n)``) → ``FileSink`` (two-phase commit, JSON Lines).

The batch reference of a word count is the multiset of every ``(word, n)`` for ``n`` in
``1 .. count(word)``, each exactly once: whatever the order in which the stream saw the words, its
n-th occurrence of a word emits ``(word, n)``.

Inputs are small and rate-limited: a rate-limited source makes a run last long enough for several
periodic checkpoints, so that a failure injected on the N-th hit of a failpoint lands after a
checkpoint completed (a restart from scratch would also produce the right output, and proves
nothing).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flowstate as fs

INPUT_LINES = 800
"""Lines of the generated input: 2 400 words, 11 distinct."""
RATE = 1000.0
"""Lines per second and reader. With 2 readers, a run without failures lasts about 0.4 s: long
enough for several checkpoints at ``INTERVAL``."""
INTERVAL = "50ms"
FAST_RESTART = fs.FixedDelayRestart(5, 0.0)
"""Restart at once, up to 5 times."""

VOCABULARY = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda")
WORDS_PER_LINE = 3


def line(i: int) -> str:
    """Line ``i`` of the generated input: three words that depend on ``i`` only (a replay reads the
    same line again)."""
    n = len(VOCABULARY)
    return f"{VOCABULARY[i % n]} {VOCABULARY[(i * 7 + 3) % n]} {VOCABULARY[(i * i + 1) % n]}"


def lines(count: int) -> list[str]:
    return [line(i) for i in range(count)]


class Count(fs.KeyedProcessFunction):
    """Emits ``(word, how many times this word has been seen so far)``."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, word: str, ctx: fs.RuntimeContext) -> Iterable[tuple[str, int]]:
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


def generator_source(count: int, *, splits: int = 4, rate: float | None = None) -> fs.GeneratorSource:
    """``count`` lines in ``splits`` splits; with ``rate``, each reader emits at most ``rate`` lines a
    second."""
    return fs.GeneratorSource(line, count, splits=splits, rate=rate, name="lines")


def wordcount(
    output: Path, *, source: Any, parallelism: int = 2, name: str = "wordcount", sink: Any = None,
) -> fs.Dataflow:
    """The word-count dataflow from ``source`` into a ``FileSink`` in ``output`` (or into ``sink``)."""
    flow = fs.Dataflow(name, parallelism=parallelism)
    (flow.source(source, uid="lines")
         .flat_map(str.split, uid="words")
         .key_by(lambda word: word)
         .process(Count(), uid="count")
         .sink(sink if sink is not None else fs.FileSink(output), uid="counts"))
    return flow


def committed_values(directory: Path) -> list[Any]:
    """Every record of the committed files in ``directory``, decoded from JSON, in file order.
    Hidden files (names starting with ``.``: in progress, or pending until their checkpoint
    completes) are not output."""
    records: list[Any] = []
    if not directory.exists():
        return records
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        with open(path, encoding="utf-8") as file:
            records.extend(json.loads(text) for text in file)
    return records


def committed_output(directory: Path) -> list[tuple[str, int]]:
    """The committed ``(word, n)`` records of the word count in ``directory``."""
    return [tuple(record) for record in committed_values(directory)]


def batch_reference(input_lines: Iterable[str]) -> Counter[tuple[str, int]]:
    """Every ``(word, n)`` for ``n`` in ``1 .. count(word)``, exactly once."""
    counts: Counter[str] = Counter()
    for text in input_lines:
        counts.update(text.split())
    return Counter((word, n) for word, c in counts.items() for n in range(1, c + 1))


def assert_restored_from_a_checkpoint(result: fs.JobResult, input_records: int) -> None:
    """The job restarted, and its last attempt restored a checkpoint (id ≥ 1) and resumed from it:
    its sources read fewer records than the ``input_records`` of the input, and the records up to the
    checkpoint plus those it read are the input exactly. A restart from scratch, or tasks that ignore
    their resume state, also give the right output, and prove nothing about recovery."""
    assert result.restarts >= 1, f"the job never restarted: {result}"
    assert len(result.restored_from) == len(result.records_read) == result.restarts + 1, result
    assert (result.restored_from[-1] or 0) >= 1, (
        f"the last attempt restored no checkpoint: restored_from={result.restored_from}"
    )
    assert_resumed(result, input_records)


def assert_resumed(result: fs.JobResult, input_records: int) -> None:
    """The last attempt's sources resumed from the restored positions: they read fewer records than
    the input, and what they read completes the records up to the restored checkpoint to the input."""
    assert result.records < input_records, (
        f"the last attempt read {result.records} records of {input_records}: it did not resume from "
        f"checkpoint {result.restored_from[-1]} (records read per attempt: {result.records_read})"
    )
    assert result.records_total == input_records, (
        f"{result.records_restored[-1]} records up to checkpoint {result.restored_from[-1]} and "
        f"{result.records} read since give {result.records_total}, not the input's {input_records}"
    )


def difference(actual: Iterable[tuple[str, int]], expected: Counter[tuple[str, int]]) -> str:
    """A short account of how ``actual`` differs from ``expected`` (for assertion messages)."""
    got = Counter(actual)
    missing = expected - got
    extra = got - expected
    return (f"{sum(missing.values())} missing (e.g. {sorted(missing)[:5]}), "
            f"{sum(extra.values())} unexpected or duplicated (e.g. {sorted(extra)[:5]})")
