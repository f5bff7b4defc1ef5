"""Committed output is never written twice: an unrestorable checkpoint, a fall-back past a completed
checkpoint and ``--fresh`` over an earlier run's output are refused (``ConfigError``: exit 2 from the
command line), naming what was found and the ways forward, and change nothing; the ways forward work.

The jobs run on the threads executor: what is tested is the restore decision, not where tasks run.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

import flowstate as fs

from .jobs import INPUT_LINES, INTERVAL, RATE, Count, committed_output, difference, generator_source, wordcount


def run(dirs, *, retained: int = 1, fresh: bool = False) -> fs.JobResult:
    flow = wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE))
    return fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL,
                                         retained=retained),
        recovery=fs.RecoveryOptions(fresh=fresh),
        execution=fs.ExecutionOptions(executor="threads"),
    )


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its content, but the lock and the run history (a log that
    records the refused run too)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in ("_lock", "_history.jsonl")}


def truncate_metadata(checkpoint: Path) -> str:
    metadata = checkpoint / "_metadata"
    metadata.write_bytes(metadata.read_bytes()[: metadata.stat().st_size // 2])
    return "_metadata"


def delete_a_state_file(checkpoint: Path) -> str:
    victim = sorted(p for p in checkpoint.iterdir() if p.name.endswith(".state"))[0]
    victim.unlink()
    return victim.name


DAMAGE = {"truncated metadata": truncate_metadata, "deleted state file": delete_a_state_file}


def checkpoints(dirs) -> list[Path]:
    return sorted(dirs.checkpoints.glob("chk-*"))


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_an_unrestorable_only_checkpoint_is_refused_not_replaced_by_a_run_from_scratch(dirs, expected, damage):
    first = run(dirs)  # --retained 1, the default
    [only] = checkpoints(dirs)
    assert only.name == f"chk-{first.last_checkpoint:06d}"
    DAMAGE[damage](only)
    before = tree(dirs.output), tree(dirs.checkpoints)

    with pytest.raises(fs.ConfigError) as refused:
        run(dirs)

    message = str(refused.value)
    for named in (f"{dirs.checkpoints} holds 1 completed checkpoint and none can be restored",
                  f"checkpoint {first.last_checkpoint}: ", str(dirs.output), "committed file",
                  "flowstate checkpoints verify", "--fresh"):
        assert named in message, (named, message)
    assert (tree(dirs.output), tree(dirs.checkpoints)) == before, "a refusal changes nothing"
    assert Counter(committed_output(dirs.output)) == expected


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_falling_back_past_a_completed_checkpoint_whose_output_is_committed_is_refused(dirs, expected, damage):
    first = run(dirs, retained=2)
    older, newest = checkpoints(dirs)
    assert newest.name == f"chk-{first.last_checkpoint:06d}"
    DAMAGE[damage](newest)
    before = tree(dirs.output), tree(dirs.checkpoints)

    with pytest.raises(fs.ConfigError) as refused:
        run(dirs, retained=2)

    message = str(refused.value)
    older_id = int(older.name.removeprefix("chk-"))
    for named in (f"the newest restorable checkpoint is {older_id}", f"checkpoint {first.last_checkpoint}: ",
                  "would write that output again", str(dirs.output), "--fresh"):
        assert named in message, (named, message)
    assert (tree(dirs.output), tree(dirs.checkpoints)) == before, "a refusal changes nothing"
    assert Counter(committed_output(dirs.output)) == expected


def test_the_way_forward_moving_the_output_away_then_fresh_gives_the_batch_result(dirs, expected, tmp_path):
    run(dirs)
    truncate_metadata(checkpoints(dirs)[0])
    with pytest.raises(fs.ConfigError):
        run(dirs)
    dirs.output.rename(tmp_path / "moved-away")

    again = run(dirs, fresh=True)

    assert again.restored_from == [None]
    actual = committed_output(dirs.output)
    assert Counter(actual) == expected, difference(actual, expected)


def test_a_newest_checkpoint_that_never_completed_is_skipped_and_the_previous_one_restored(dirs, expected, caplog):
    first = run(dirs)
    newest = first.last_checkpoint
    assert newest is not None
    incomplete = dirs.checkpoints / f"chk-{newest + 1:06d}"
    incomplete.mkdir()  # a crash while a checkpoint was in flight: no metadata, nothing committed
    (incomplete / "lines#0.state").write_bytes(b"partial")

    with caplog.at_level(logging.WARNING, logger="flowstate"):
        second = run(dirs)

    assert second.restored_from == [newest]
    warnings = [r.getMessage() for r in caplog.records if r.name == "flowstate" and r.levelno == logging.WARNING]
    assert any(w.startswith(f"skipping checkpoint {newest + 1}:") for w in warnings), warnings
    assert b"partial" not in tree(dirs.checkpoints).values(), "the leftover was deleted"
    assert Counter(committed_output(dirs.output)) == expected


def test_fresh_over_the_committed_output_of_an_earlier_run_is_refused_and_discards_nothing(dirs, expected):
    run(dirs)
    before = tree(dirs.output), tree(dirs.checkpoints)

    with pytest.raises(fs.ConfigError) as refused:
        run(dirs, fresh=True)

    message = str(refused.value)
    for named in ("cannot start from scratch (--fresh)", "committed output of an earlier run", str(dirs.output),
                  "move the committed output away", "run without --fresh"):
        assert named in message, (named, message)
    assert (tree(dirs.output), tree(dirs.checkpoints)) == before
    assert Counter(committed_output(dirs.output)) == expected


def test_a_run_from_scratch_beside_an_earlier_runs_output_is_refused(dirs, expected, tmp_path):
    run(dirs)
    dirs.checkpoints.rename(tmp_path / "lost")  # the checkpoints are gone, the output is not

    with pytest.raises(fs.ConfigError, match="holds no checkpoint to restore from.*committed output of an earlier run"):
        run(dirs)

    assert Counter(committed_output(dirs.output)) == expected


def renamed_job(dirs, *, suffix: str) -> fs.Dataflow:
    """The word count with ``suffix`` added to the uid of every stateful operator."""
    flow = fs.Dataflow("wordcount", parallelism=2)
    (flow.source(generator_source(INPUT_LINES, rate=RATE), uid="lines" + suffix)
         .flat_map(str.split, uid="words")
         .key_by(lambda word: word)
         .process(Count(), uid="count" + suffix)
         .sink(fs.FileSink(dirs.output), uid="counts" + suffix))
    return flow


def test_allow_non_restored_state_drops_a_sinks_state_only_when_told_and_never_replaces_committed_files(dirs, expected):
    def run_renamed(*, drop_sink_state: bool = False) -> fs.JobResult:
        flow = renamed_job(dirs, suffix="-v2")
        return fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=dirs.checkpoints, interval=INTERVAL),
            recovery=fs.RecoveryOptions(allow_non_restored_state=True, drop_sink_state=drop_sink_state),
            execution=fs.ExecutionOptions(executor="threads"),
        )

    run(dirs)
    committed = tree(dirs.output)

    with pytest.raises(fs.ConfigError, match=r"sink writers' state .*(uid 'counts').*--drop-sink-state"):
        run_renamed()
    assert tree(dirs.output) == committed

    # Told to: every operator starts without state, the source at the beginning of its input.
    run_renamed(drop_sink_state=True)

    after = tree(dirs.output)
    assert {name: after.get(name) for name in committed} == committed, "a committed file was replaced"
    actual = committed_output(dirs.output)
    assert Counter(actual) == expected + expected, difference(actual, expected + expected)
