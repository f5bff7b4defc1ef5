"""Mistakes in user code fail loudly and name the right thing.

- ``process`` and ``flat_map`` emit what they yield or the list they return; a ``str``, ``bytes``,
  ``dict`` or ``tuple`` returned would be split into its elements, so it is refused, naming the
  operator and saying to ``yield`` or return a list.
- A key selector that raises, or returns a key that is not allowed, fails as ``key_by``, not as the
  operator after it, at every parallelism.
- State that cannot be pickled names the operator and the state; a function that cannot be copied
  for each subtask names the operator and says to create such objects in ``open()``; a record the
  ``FileSink`` cannot encode names the sink and the record; the job's failure keeps the cause.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import pytest

import flowstate as fs

from .conftest import Dirs
from .jobs import committed_values

WORDS = ["apple", "pear", "plum", "fig"]


def words(count: int = 40) -> fs.GeneratorSource:
    return fs.GeneratorSource(lambda i: WORDS[i % len(WORDS)], count=count, splits=1, name="words")


def run(flow: fs.Dataflow, dirs: Dirs, execution: fs.ExecutionOptions | None = None) -> fs.JobResult:
    return fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=dirs.checkpoints, interval="50ms"),
        recovery=fs.RecoveryOptions(restart=fs.NoRestart()),
        execution=execution,
    )


def failure(flow: fs.Dataflow, dirs: Dirs, execution: fs.ExecutionOptions | None = None) -> str:
    with pytest.raises(fs.JobFailedError) as failed:
        run(flow, dirs, execution)
    return str(failed.value)


class Returns(fs.KeyedProcessFunction):
    """Returns ``make(word)`` instead of yielding it."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def process(self, word: str, ctx: fs.RuntimeContext) -> Any:
        return self.make(word)


class Pairs(fs.ProcessFunction):
    def process(self, word: str, ctx: fs.RuntimeContext) -> Any:
        return (word, len(word))


# ---- process and flat_map: yield, or return a list ---------------------------------------------


class Pair(NamedTuple):
    word: str
    n: int


@pytest.mark.parametrize(("make", "kind"), [
    (lambda w: (w, 1), "tuple"),
    (lambda w: w, "str"),
    (lambda w: w.encode(), "bytes"),
    (lambda w: {w: 1}, "dict"),
    (lambda w: Pair(w, 1), "Pair"),
])
def test_a_keyed_process_returning_one_record_instead_of_yielding_it_is_refused(
        dirs: Dirs, make: Any, kind: str) -> None:
    flow = fs.Dataflow("returns")
    flow.source(words()).key_by(lambda w: w).process(Returns(make), name="counter").sink(fs.FileSink(dirs.output))

    message = failure(flow, dirs)

    assert "operator 'counter'" in message
    assert f"process returned the {kind}" in message
    assert "yield each output record" in message and "return a list" in message
    assert committed_values(dirs.output) == [], "nothing split into elements was committed"


def test_a_process_function_returning_a_tuple_is_refused_naming_the_operator(dirs: Dirs) -> None:
    flow = fs.Dataflow("pairs")
    flow.source(words()).process(Pairs(), name="pairs").sink(fs.FileSink(dirs.output))

    message = failure(flow, dirs)

    assert "operator 'pairs'" in message and "process returned the tuple ('apple', 5)" in message


def test_a_flat_map_returning_a_string_is_refused_instead_of_emitting_its_characters(dirs: Dirs) -> None:
    flow = fs.Dataflow("chars")
    flow.source(words()).flat_map(str.upper, name="shout").sink(fs.FileSink(dirs.output))

    message = failure(flow, dirs)

    assert "operator 'shout'" in message and "the flat_map function returned the str 'APPLE'" in message


def test_a_returned_list_a_generator_and_none_are_the_contract_and_are_emitted(dirs: Dirs) -> None:
    class Mixed(fs.KeyedProcessFunction):
        def process(self, word: str, ctx: fs.RuntimeContext) -> Any:
            if word == "apple":
                return [(word, 1)]
            if word == "pear":
                return None
            return ((word, n) for n in (1, 2))

    flow = fs.Dataflow("contract")
    flow.source(words(8)).key_by(lambda w: w).process(Mixed()).flat_map(lambda r: [r]).sink(fs.FileSink(dirs.output))

    run(flow, dirs)

    assert sorted(map(tuple, committed_values(dirs.output))) == sorted(
        [("apple", 1)] * 2 + [("plum", 1), ("plum", 2), ("fig", 1), ("fig", 2)] * 2)


# ---- key_by -----------------------------------------------------------------------------------------


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, word: Any, ctx: fs.RuntimeContext) -> Any:
        self.count.update(self.count.value() + 1)
        yield word


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize(("key_fn", "cause"), [
    (lambda w: [w], "UnsupportedKeyError: keys of type list are not supported"),
    (lambda w: {"apple": 1}[w], "KeyError: 'pear'"),
])
def test_a_bad_key_fails_as_key_by_not_as_the_operator_after_it(
        dirs: Dirs, parallelism: int, key_fn: Any, cause: str) -> None:
    flow = fs.Dataflow("keys", parallelism=parallelism)
    flow.source(words(), parallelism=1).key_by(key_fn).process(Count(), name="counter").sink(fs.FileSink(dirs.output))

    message = failure(flow, dirs, fs.ExecutionOptions(executor="threads"))

    assert "operator 'key_by'" in message and cause in message, message
    assert "'counter'" not in message


# ---- state, copies, sinks --------------------------------------------------------------------------


class KeepsLocks(fs.KeyedProcessFunction):
    def open(self, ctx: fs.RuntimeContext) -> None:
        self.guard = ctx.value_state("guards")

    def process(self, word: str, ctx: fs.RuntimeContext) -> Any:
        self.guard.update(threading.Lock())
        yield word


def test_state_that_cannot_be_pickled_names_the_operator_and_the_state(dirs: Dirs) -> None:
    flow = fs.Dataflow("locks")
    flow.source(words()).key_by(lambda w: w).process(KeepsLocks(), name="guarded").sink(fs.FileSink(dirs.output))

    message = failure(flow, dirs)

    assert "operator 'guarded'" in message and "state 'guards'" in message, message
    assert "cannot be pickled" in message and "_thread.lock" in message


class HoldsAConnection(fs.ProcessFunction):
    def __init__(self) -> None:
        self.connection = threading.Lock()  # stands for a client, a socket, an open file

    def process(self, word: str, ctx: fs.RuntimeContext) -> Any:
        yield word


def test_a_function_that_cannot_be_copied_per_subtask_is_refused_when_the_job_is_built() -> None:
    flow = fs.Dataflow("uncopyable")

    with pytest.raises(fs.GraphError) as refused:
        flow.source(words()).process(HoldsAConnection(), name="enrich")

    message = str(refused.value)
    assert "process 'enrich'" in message and "cannot be copied for each subtask" in message
    assert "in open(ctx)" in message


def test_a_record_the_file_sink_cannot_encode_names_the_sink_and_the_record(dirs: Dirs) -> None:
    flow = fs.Dataflow("sets")
    flow.source(words()).map(lambda w: {w} if w == "plum" else w).sink(fs.FileSink(dirs.output, name="bag"))

    message = failure(flow, dirs)

    assert "operator 'bag'" in message and "record {'plum'}" in message
    assert "TypeError: Object of type set is not JSON serializable" in message


def test_the_failure_of_a_job_keeps_the_type_of_its_cause(dirs: Dirs) -> None:
    class Disk:
        """A sink whose writes fail as a full disk does."""

        name = "disk"

        def build_writer(self, subtask: int, parallelism: int, resume: Any) -> Any:
            return self

        transactional = False

        def write_batch(self, records: list[Any]) -> None:
            raise OSError(28, "No space left on device")

        def pre_commit(self, checkpoint_id: int) -> None:
            pass

        def snapshot(self) -> None:
            return None

        def commit(self, checkpoint_id: int) -> None:
            pass

        def finish(self) -> None:
            pass

        def close(self) -> None:
            pass

    flow = fs.Dataflow("full")
    flow.source(words()).sink(Disk())

    message = failure(flow, dirs)

    assert "OSError: [Errno 28] No space left on device" in message, message
