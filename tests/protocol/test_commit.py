"""Two-phase-commit decisions (``flowstate.checkpoint.commit``): what a transactional sink commits,
when, and what it deletes after a restore.

Committables are named after the checkpoint whose barrier closed them: ``"part-2a"`` was produced
before barrier 2.
"""

from __future__ import annotations

import pytest

from flowstate.checkpoint.commit import CommitLog, stray_outputs
from flowstate.checkpoint.ids import CheckpointId

ONE, TWO, THREE = CheckpointId(1), CheckpointId(2), CheckpointId(3)
EMPTY: CommitLog[str] = CommitLog()


def test_pre_commit_records_the_committables_under_the_checkpoint_of_the_barrier() -> None:
    log = EMPTY.pre_commit(ONE, ["part-1a", "part-1b"])

    assert log.pending == ((1, "part-1a"), (1, "part-1b"))
    assert log.snapshot() == [(1, "part-1a"), (1, "part-1b")]


def test_pre_commit_leaves_the_previous_log_unchanged() -> None:
    before = EMPTY.pre_commit(ONE, ["part-1a"])

    before.pre_commit(TWO, ["part-2a"])

    assert before.pending == ((1, "part-1a"),)


def test_completing_a_checkpoint_commits_what_was_recorded_up_to_it_in_order() -> None:
    log = EMPTY.pre_commit(ONE, ["part-1a", "part-1b"]).pre_commit(TWO, ["part-2a"])

    log, commit = log.complete(ONE)

    assert commit == ["part-1a", "part-1b"]
    assert log.pending == ((2, "part-2a"),)


def test_committables_of_a_newer_checkpoint_wait_for_it() -> None:
    log = EMPTY.pre_commit(TWO, ["part-2a"]).pre_commit(THREE, ["part-3a"])

    log, commit = log.complete(TWO)
    assert commit == ["part-2a"]
    log, commit = log.complete(THREE)
    assert commit == ["part-3a"]
    assert log.pending == ()


def test_the_committables_of_an_aborted_checkpoint_are_committed_with_the_next_completed_one() -> None:
    # Checkpoint 1 is aborted: nothing is committed for it, and its committables stay in the log...
    log = EMPTY.pre_commit(ONE, ["part-1a"])
    log = log.pre_commit(TWO, ["part-2a"])

    # ...so the snapshot of checkpoint 2 names them too, and completing 2 commits them first.
    assert log.snapshot() == [(1, "part-1a"), (2, "part-2a")]
    log, commit = log.complete(TWO)
    assert commit == ["part-1a", "part-2a"]
    assert log.pending == ()


def test_completing_a_checkpoint_with_nothing_recorded_commits_nothing() -> None:
    log = EMPTY.pre_commit(TWO, ["part-2a"])

    after, commit = log.complete(ONE)

    assert commit == []
    assert after == log


def test_a_checkpoint_may_pre_commit_nothing() -> None:
    log = EMPTY.pre_commit(ONE, []).pre_commit(TWO, ["part-2a"])

    assert log.snapshot() == [(2, "part-2a")]


@pytest.mark.parametrize("n", [1, 2], ids=["an older checkpoint", "the same checkpoint"])
def test_a_pre_commit_out_of_checkpoint_order_raises(n: int) -> None:
    log = EMPTY.pre_commit(TWO, ["part-2a"])

    with pytest.raises(ValueError):
        log.pre_commit(CheckpointId(n), ["part-x"])
    assert log.pending == ((2, "part-2a"),)


def test_a_restore_commits_everything_the_snapshot_names_and_starts_an_empty_log() -> None:
    snapshot = EMPTY.pre_commit(ONE, ["part-1a"]).pre_commit(TWO, ["part-2a", "part-2b"]).snapshot()

    log, commit = CommitLog[str].restore(snapshot)

    assert commit == ["part-1a", "part-2a", "part-2b"]
    assert log.pending == ()
    assert log.pre_commit(THREE, ["part-3a"]).snapshot() == [(3, "part-3a")]


def test_a_restore_from_an_empty_snapshot_commits_nothing() -> None:
    log, commit = CommitLog[str].restore([])

    assert commit == []
    assert log == CommitLog()


def test_stray_outputs_are_those_found_on_restore_that_the_snapshot_does_not_name() -> None:
    existing = ["part-3a.inprogress", "part-2a", "part-3b", "part-1a"]
    referenced = ["part-1a", "part-2a"]

    assert stray_outputs(existing, referenced) == ["part-3a.inprogress", "part-3b"]


def test_an_output_named_by_the_snapshot_but_already_gone_is_not_stray() -> None:
    assert stray_outputs(["part-2a"], ["part-1a", "part-2a"]) == []


def test_with_nothing_referenced_every_output_found_is_stray_in_name_order() -> None:
    assert stray_outputs(iter(["b", "a", "c"]), iter([])) == ["a", "b", "c"]


def test_an_older_pre_commit_is_refused_even_after_the_log_emptied():
    log = CommitLog().pre_commit(CheckpointId(3), [])
    with pytest.raises(ValueError, match="after checkpoint 3"):
        log.pre_commit(CheckpointId(2), ["late"])
    log, _ = CommitLog().pre_commit(CheckpointId(4), ["a"]).complete(CheckpointId(4))
    with pytest.raises(ValueError, match="after checkpoint 4"):
        log.pre_commit(CheckpointId(4), ["again"])
