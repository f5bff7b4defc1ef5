"""The engine end to end: every mode and several shapes of dataflow give the batch result (keyed
reduce and list, map and reducing state also across a restore); failing user functions, restart
strategies, reruns on the same checkpoint directory, damaged checkpoints and non-replayable sources
behave as documented. The crash tests proper are in ``test_crash_recovery``."""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.graph import build_job_graph

from .jobs import (
    FAST_RESTART,
    INPUT_LINES,
    INTERVAL,
    RATE,
    VOCABULARY,
    Count,
    assert_restored_from_a_checkpoint,
    batch_reference,
    committed_output,
    committed_values,
    difference,
    generator_source,
    line,
    lines,
    wordcount,
)

CRASH_AFTER_TWO_CHECKPOINTS = "raise@9"
"""For ``task.before_snapshot`` in a job of 4 tasks (2 source and 2 keyed): checkpoint 3's first hit."""
SWITCHING = "exactly_once+alignment_timeout"
"""Not a mode of its own: ``exactly_once`` whose alignments turn unaligned after 1 ms."""


def mode_settings(mode: str) -> dict[str, str]:
    """The ``fs.CheckpointOptions`` of ``mode``."""
    if mode == SWITCHING:
        return {"mode": "exactly_once", "alignment_timeout": "1ms"}
    return {"mode": mode}


def checkpoint_dir_for(mode: str, dirs) -> Path | None:
    return None if mode == "none" else dirs.checkpoints


def files_of(directory: Path) -> dict[str, str]:
    """Name → content of every file in ``directory``, hidden ones included."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())}


# ---- modes and shapes of dataflow -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exactly_once", "stop_the_world", "at_least_once", "unaligned", SWITCHING, "none"])
def test_every_mode_gives_the_batch_result_when_nothing_fails(mode, dirs, expected):
    flow = wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE))

    result = fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=checkpoint_dir_for(mode, dirs),
                                                           interval=INTERVAL, **mode_settings(mode)))

    actual = committed_output(dirs.output)
    assert Counter(actual) == expected, difference(actual, expected)
    assert result.restarts == 0 and result.failures == []
    assert result.restored_from == [None]
    if mode == "none":
        assert result.checkpoints_completed == 0
    else:
        assert result.checkpoints_completed >= 1  # at least the final one, which commits the output


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_a_file_source_with_several_splits_gives_the_batch_result_at_every_parallelism(parallelism, tmp_path, dirs):
    text = lines(600)
    inputs = tmp_path / "input"
    inputs.mkdir()
    for k in range(4):
        (inputs / f"part-{k}.txt").write_text("".join(t + "\n" for t in text[k * 150:(k + 1) * 150]))
    flow = wordcount(dirs.output, source=fs.FileSource(str(inputs / "*.txt")), parallelism=parallelism)
    assert [v.parallelism for v in build_job_graph(flow).vertices] == [parallelism, parallelism]

    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )

    actual = committed_output(dirs.output)
    expected = batch_reference(text)
    assert Counter(actual) == expected, difference(actual, expected)
    written_by = {p.name.split("-")[1] for p in dirs.output.iterdir()}
    assert written_by == {str(i) for i in range(parallelism)}, "every sink subtask has keys to write"


def test_the_union_of_two_sources_gives_the_batch_result_of_both_inputs(dirs):
    flow = fs.Dataflow("union", parallelism=2)
    first = flow.source(fs.GeneratorSource(line, 300, splits=2, name="first"), uid="first")
    second = flow.source(fs.GeneratorSource(lambda i: line(300 + i), 200, splits=3, name="second"), uid="second")
    (first.union(second, uid="both")
          .flat_map(str.split, uid="words")
          .key_by(lambda word: word)
          .process(Count(), uid="count")
          .sink(fs.FileSink(dirs.output), uid="counts"))

    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )

    actual = committed_output(dirs.output)
    expected = batch_reference(lines(500))
    assert Counter(actual) == expected, difference(actual, expected)


def test_a_change_of_parallelism_without_key_by_rebalances_every_record_exactly_once(dirs):
    flow = fs.Dataflow("rebalance")
    (flow.source(generator_source(INPUT_LINES), parallelism=1, uid="lines")
         .map(str.upper, parallelism=3, uid="upper")
         .sink(fs.FileSink(dirs.output), parallelism=2, uid="out"))
    graph = build_job_graph(flow)
    assert [(v.name, v.parallelism, [e.partition for e in v.inputs]) for v in graph.vertices] == [
        ("lines", 1, []), ("upper", 3, ["rebalance"]), ("out", 2, ["rebalance"]),
    ]

    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(batch_size=16),
    )

    actual = committed_values(dirs.output)
    assert Counter(actual) == Counter(t.upper() for t in lines(INPUT_LINES))
    assert {p.name.split("-")[1] for p in dirs.output.iterdir()} == {"0", "1"}, "both sink subtasks got batches"


@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_a_keyed_reduce_emits_the_running_reduction_of_every_key_across_a_restore(mode, dirs, expected):
    flow = fs.Dataflow("reduce", parallelism=2)
    (flow.source(generator_source(INPUT_LINES, rate=RATE), uid="lines")
         .flat_map(str.split, uid="words")
         .map(lambda word: (word, 1), uid="ones")
         .key_by(lambda pair: pair[0])
         .reduce(lambda total, pair: (total[0], total[1] + pair[1]), uid="sum")
         .sink(fs.FileSink(dirs.output), uid="counts"))
    failpoints = fs.Failpoints({"task.before_snapshot": CRASH_AFTER_TWO_CHECKPOINTS})

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode=mode, checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        failpoints=failpoints,
    )

    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    actual = committed_output(dirs.output)
    assert Counter(actual) == expected, difference(actual, expected)


class Positions(fs.KeyedProcessFunction):
    """For every word: the line numbers it was seen on (list state), how many of them fall in each
    residue class modulo 3 (map state) and their sum (reducing state). Emits
    ``(word, n, sum, [[residue, count], …])`` where ``n`` is the length of the list."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.seen = ctx.list_state("seen")
        self.residues = ctx.map_state("residues")
        self.total = ctx.reducing_state("total", lambda a, b: a + b)

    def process(self, record, ctx):
        word, i = record
        self.seen.add(i)
        self.residues.put(i % 3, self.residues.get(i % 3, 0) + 1)
        self.total.add(i)
        yield (word, len(self.seen.get()), self.total.get(), sorted(self.residues.items()))


@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_list_map_and_reducing_state_survive_a_restore(mode, dirs):
    flow = fs.Dataflow("positions", parallelism=2)
    (flow.source(fs.GeneratorSource(lambda i: (line(i), i), INPUT_LINES, splits=4, rate=RATE), uid="lines")
         .flat_map(lambda pair: [(word, pair[1]) for word in pair[0].split()], uid="words")
         .key_by(lambda pair: pair[0])
         .process(Positions(), uid="positions")
         .sink(fs.FileSink(dirs.output), uid="out"))
    failpoints = fs.Failpoints({"task.before_snapshot": CRASH_AFTER_TWO_CHECKPOINTS})

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode=mode, checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        failpoints=failpoints,
    )

    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    seen: dict[str, list[int]] = {}
    for i in range(INPUT_LINES):
        for word in line(i).split():
            seen.setdefault(word, []).append(i)
    records = [tuple(r) for r in committed_values(dirs.output)]
    # Exactly once: the n-th record of a word says n, for n = 1 .. count(word).
    assert Counter((word, n) for word, n, _, _ in records) == Counter(
        (word, n) for word, found in seen.items() for n in range(1, len(found) + 1)
    )
    final = {word: (total, residues) for word, n, total, residues in records if n == len(seen[word])}
    assert final == {
        word: (sum(found), [[r, c] for r, c in sorted(Counter(i % 3 for i in found).items())])
        for word, found in seen.items()
    }


# ---- failing user functions and restart strategies -------------------------------------------------


BAD_RECORD = 137


def _fails_on_one_record(calls: list[int]):
    def halve(i: int) -> int:
        if i == BAD_RECORD:
            calls.append(i)
            raise ValueError("cannot halve the unlucky number")
        return i // 2

    return halve


@pytest.mark.parametrize(("restart", "restarts"), [(fs.NoRestart(), 0), (fs.FixedDelayRestart(2, 0.0), 2)])
def test_a_function_that_always_fails_on_one_record_fails_the_job_naming_operator_exception_and_record(
    restart, restarts, dirs,
):
    calls: list[int] = []
    flow = fs.Dataflow("halves")
    (flow.source(fs.GeneratorSource(lambda i: i, 400), uid="numbers")
         .map(_fails_on_one_record(calls), name="halve", uid="halve")
         .sink(fs.FileSink(dirs.output), uid="out"))

    with pytest.raises(fs.JobFailedError) as failed:
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(restart=restart),
        )

    message = str(failed.value)
    assert "'halve'" in message
    assert "ValueError: cannot halve the unlucky number" in message
    assert f"on record {BAD_RECORD}" in message
    assert f"after {restarts} restart(s)" in message
    assert calls == [BAD_RECORD] * (restarts + 1), "one attempt per restart, each failing on the record"
    cause = failed.value.cause
    assert isinstance(cause, fs.UserFunctionError)
    assert (cause.operator, cause.record, type(cause.cause)) == ("halve", BAD_RECORD, ValueError)


def test_exponential_backoff_doubles_the_delay_up_to_the_maximum_and_then_gives_up():
    strategy = fs.ExponentialBackoffRestart(attempts=6, initial=0.1, maximum=0.5, multiplier=2.0)

    delays = [strategy.delay(n) for n in range(1, 8)]

    assert delays[:6] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert delays[6] is None


@pytest.mark.parametrize("settings", [
    {"attempts": -1},
    {"initial": -0.1},
    {"initial": 2.0, "maximum": 1.0},
    {"multiplier": 0.5},
])
def test_exponential_backoff_refuses_settings_that_make_no_sense(settings):
    with pytest.raises(fs.ConfigError):
        fs.ExponentialBackoffRestart(**settings)


def test_fixed_delay_and_no_restart_give_up_after_their_attempts():
    assert [fs.FixedDelayRestart(2, 0.25).delay(n) for n in (1, 2, 3)] == [0.25, 0.25, None]
    assert fs.NoRestart().delay(1) is None


# ---- runs on the same checkpoint directory --------------------------------------------------------


def test_a_rerun_of_a_finished_job_restores_its_last_checkpoint_and_leaves_the_output_unchanged(dirs, expected):
    first = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE)),
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )
    before = files_of(dirs.output)

    second = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE)),
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )

    assert second.restored_from == [first.last_checkpoint]
    assert files_of(dirs.output) == before
    assert Counter(committed_output(dirs.output)) == expected


def test_progress_counts_the_records_of_the_restored_checkpoint_and_those_read_since_and_says_so(dirs, capsys):
    failpoints = fs.Failpoints({"task.before_snapshot": CRASH_AFTER_TWO_CHECKPOINTS})
    crashed = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE)),
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(progress=True),
        failpoints=failpoints,
    )
    crashed_lines = capsys.readouterr().err.splitlines()
    rerun = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE)),
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(progress=True),
    )
    rerun_lines = capsys.readouterr().err.splitlines()

    restored, read = crashed.records_restored[-1], crashed.records
    assert crashed.restored_from[0] is None and crashed.records_restored[0] == 0
    assert crashed.records_read[-1] == read and 0 < read < INPUT_LINES and restored + read == INPUT_LINES, crashed
    assert (f"[wordcount] {INPUT_LINES:,} records processed in total ({restored:,} up to checkpoint "
            f"{crashed.restored_from[-1]}, {read:,} read since its restore)") in crashed_lines[-1]
    # A rerun of the finished job restores its final checkpoint and reads nothing more.
    assert (rerun.records_read, rerun.records_restored, rerun.records_total) == ([0], [INPUT_LINES], INPUT_LINES)
    assert (f"[wordcount] {INPUT_LINES:,} records processed in total ({INPUT_LINES:,} up to checkpoint "
            f"{crashed.last_checkpoint}, 0 read since its restore)") in rerun_lines[-1]
    assert rerun.records_summary() in rerun_lines[-1]


def test_a_run_from_scratch_counts_the_records_it_read(dirs, capsys):
    result = fs.run(
        wordcount(dirs.output, source=generator_source(200)),
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        execution=fs.ExecutionOptions(progress=True),
    )

    assert (result.records_read, result.records_restored, result.records_total) == ([200], [0], 200)
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "[wordcount] 200 records read · ━━━━━━━━━━━━━━━━━━━━ 100% of the input · ")


def test_checkpoint_ids_keep_increasing_across_runs_on_one_directory(dirs):
    last_ids = []
    for _ in range(3):
        result = fs.run(
            wordcount(dirs.output, source=generator_source(200)),
            checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        )
        assert result.last_checkpoint is not None
        if last_ids:
            assert result.restored_from == [last_ids[-1]]
        last_ids.append(result.last_checkpoint)

    assert last_ids == sorted(set(last_ids)), f"ids went backwards or repeated: {last_ids}"


def test_fresh_discards_the_old_checkpoints_and_starts_from_scratch(tmp_path, dirs, expected):
    first = fs.run(
        wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE)),
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
    )
    assert first.last_checkpoint is not None
    old = {p.parent.name: p.read_bytes() for p in dirs.checkpoints.glob("chk-*/_metadata")}
    assert old, "the first run left its last checkpoint"
    again = tmp_path / "again"

    second = fs.run(
        wordcount(again, source=generator_source(INPUT_LINES, rate=RATE)),
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
        recovery=fs.RecoveryOptions(fresh=True),
    )

    assert second.restored_from == [None]
    left = {p.parent.name: p.read_bytes() for p in dirs.checkpoints.glob("chk-*/_metadata")}
    assert not [name for name, data in left.items() if old.get(name) == data], "a checkpoint of the first run is left"
    # A restore of the finished run would have read nothing and written nothing here.
    assert Counter(committed_output(again)) == expected


def test_two_concurrent_runs_on_one_checkpoint_directory_are_refused(dirs):
    started, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def hold(text: str) -> str:
        started.set()
        release.wait(timeout=10)
        return text

    def first_run() -> None:
        flow = fs.Dataflow("first")
        flow.source(generator_source(50), uid="lines").map(hold, uid="hold").sink(fs.FileSink(dirs.output), uid="out")
        try:
            outcome.append(fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(
                    mode="exactly_once",
                    checkpoint_dir=dirs.checkpoints,
                    interval=INTERVAL,
                ),
            ))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    runner = threading.Thread(target=first_run)
    runner.start()
    try:
        assert started.wait(timeout=10), "the first run never processed a record"
        second = wordcount(dirs.output / "second", source=generator_source(50))
        with pytest.raises(fs.ConfigError, match="another flowstate run is using the checkpoint directory"):
            fs.run(
                second,
                checkpoints=fs.CheckpointOptions(
                    mode="exactly_once",
                    checkpoint_dir=dirs.checkpoints,
                    interval=INTERVAL,
                ),
            )
    finally:
        release.set()
        runner.join(timeout=30)

    assert len(outcome) == 1 and isinstance(outcome[0], fs.JobResult), outcome
    assert Counter(committed_values(dirs.output)) == Counter(lines(50))


# ---- a source that cannot replay ------------------------------------------------------------------


class LineServer:
    """A TCP server on 127.0.0.1 that sends ``text`` to its first client and closes the connection."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LineServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(timeout=5)

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        with client:
            client.sendall(self.text.encode())


def socket_job(port: int, output: Path) -> fs.Dataflow:
    flow = fs.Dataflow("socket")
    flow.source(fs.SocketSource("127.0.0.1", port), uid="socket").sink(fs.FileSink(output), uid="out")
    return flow


@pytest.mark.parametrize("mode", ["exactly_once", "stop_the_world"])
def test_an_exactly_once_mode_refuses_a_source_that_cannot_replay(mode, dirs):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(fs.ConfigError, match="allow_non_replayable") as refused:
            fs.run(
                socket_job(port, dirs.output),
                checkpoints=fs.CheckpointOptions(mode=mode, checkpoint_dir=dirs.checkpoints),
            )

    assert f"socket:127.0.0.1:{port}" in str(refused.value)
    assert not dirs.output.exists(), "nothing ran"


def test_a_source_that_cannot_replay_runs_when_allowed_and_its_lines_are_output(dirs, caplog):
    text = [f"{word} {n}" for n, word in enumerate(VOCABULARY)]

    with LineServer("".join(t + "\n" for t in text)) as server, caplog.at_level(logging.WARNING, logger="flowstate"):
        result = fs.run(
            socket_job(server.port, dirs.output),
            checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(allow_non_replayable=True),
        )

    assert result.failures == []
    assert committed_values(dirs.output) == text
    assert any("cannot replay" in r.getMessage() for r in caplog.records if r.name == "flowstate")
