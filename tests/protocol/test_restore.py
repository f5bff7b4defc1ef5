"""The restore decision (``flowstate.checkpoint.restore``): ``choose`` finds the newest valid
candidate, reporting every newer one passed over with its reason; ``plan_restore`` turns that and
what the sinks have committed into ``RestoreFrom``, ``StartFresh`` or ``Refuse``. Scripted: no
files, no threads.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import (
    CandidateStatus,
    Chosen,
    CommittedOutput,
    Discard,
    Invalid,
    NoneValid,
    RefusalReason,
    Refuse,
    RestoreFacts,
    RestoreFrom,
    StartFresh,
    Valid,
    choose,
    plan_restore,
)


def valid(n: int) -> Valid[str]:
    return Valid(CheckpointId(n), f"metadata of {n}")


def invalid(n: int, reason: str = "a file failed its checksum") -> Invalid:
    return Invalid(CheckpointId(n), reason)


def incomplete(n: int) -> Invalid:
    return Invalid(CheckpointId(n), "no metadata", CandidateStatus.INCOMPLETE)


def test_the_newest_candidate_is_chosen_when_it_is_valid() -> None:
    assert choose([valid(3), valid(2), valid(1)]) == Chosen(CheckpointId(3), "metadata of 3", ())


def test_the_newest_valid_candidate_is_chosen_and_the_newer_invalid_ones_are_reported() -> None:
    candidates = [invalid(5, "metadata missing"), invalid(4, "part-4 truncated"), valid(3), invalid(2), valid(1)]

    assert choose(candidates) == Chosen(
        CheckpointId(3),
        "metadata of 3",
        (invalid(5, "metadata missing"), invalid(4, "part-4 truncated")),
    )


def test_candidates_older_than_the_chosen_one_are_not_validated() -> None:
    def lazily() -> Iterator[Valid[str] | Invalid]:
        yield invalid(4)
        yield valid(3)
        raise AssertionError("candidate 2 was validated although 3 is valid")

    assert choose(lazily()) == Chosen(CheckpointId(3), "metadata of 3", (invalid(4),))


def test_with_no_valid_candidate_the_job_starts_fresh_and_says_why_each_was_refused() -> None:
    candidates = [invalid(2, "metadata missing"), invalid(1, "part-1 truncated")]

    assert choose(candidates) == NoneValid((invalid(2, "metadata missing"), invalid(1, "part-1 truncated")))


def test_with_no_candidate_the_job_starts_fresh() -> None:
    assert choose([]) == NoneValid(())


@pytest.mark.parametrize(
    "candidates",
    [
        [invalid(1), invalid(2)],
        [invalid(2), invalid(2)],
        [invalid(2), valid(2)],
        [invalid(3), invalid(1), valid(2)],
    ],
    ids=["ascending", "repeated", "repeated then valid", "ascending later"],
)
def test_candidates_not_newest_first_raise(candidates: list[Valid[str] | Invalid]) -> None:
    with pytest.raises(ValueError):
        choose(candidates)


# ---- plan_restore -------------------------------------------------------------------------------------

OUTPUT = CommittedOutput("out", "/data/out", ("part-0-0.1a2b3c4d5e6f.jsonl", "part-0-1.1a2b3c4d5e6f.jsonl"))
NOTHING = RestoreFacts("/chk")
COMMITTED = RestoreFacts("/chk", committed=(OUTPUT,))


def discard(n: int, reason: str = "a file failed its checksum") -> Discard:
    return Discard(CheckpointId(n), reason)


def test_the_newest_valid_checkpoint_is_restored_whatever_the_sinks_hold() -> None:
    for facts in (NOTHING, COMMITTED):
        assert plan_restore([valid(3), valid(2)], facts) == RestoreFrom(CheckpointId(3), "metadata of 3", ())


def test_incomplete_checkpoints_newer_than_the_restored_one_are_discarded_even_with_committed_output() -> None:
    decision = plan_restore([incomplete(4), valid(3)], COMMITTED)

    assert decision == RestoreFrom(CheckpointId(3), "metadata of 3", (discard(4, "no metadata"),))


def test_falling_back_past_a_corrupt_checkpoint_without_committed_output_discards_it() -> None:
    decision = plan_restore([invalid(4, "chk-4/_metadata: truncated"), valid(3)], NOTHING)

    assert decision == RestoreFrom(CheckpointId(3), "metadata of 3", (discard(4, "chk-4/_metadata: truncated"),))


def test_falling_back_past_a_corrupt_checkpoint_while_a_sink_holds_committed_output_is_refused() -> None:
    decision = plan_restore([incomplete(5), invalid(4, "chk-4/count#0.state: missing"), valid(3)], COMMITTED)

    assert isinstance(decision, Refuse)
    assert decision.reason is RefusalReason.FALLBACK_PAST_COMMITTED
    for named in ("/chk", "restorable checkpoint is 3", "checkpoint 4: chk-4/count#0.state: missing",
                  "sink 'out' holds 2 committed files in /data/out", "part-0-0.1a2b3c4d5e6f.jsonl",
                  "flowstate checkpoints verify /chk", "--fresh"):
        assert named in decision.message, (named, decision.message)
    assert "checkpoint 5" not in decision.message, "an incomplete checkpoint committed nothing"


def test_a_directory_of_completed_checkpoints_none_restorable_is_refused_whatever_the_sinks_hold() -> None:
    for facts in (NOTHING, COMMITTED, RestoreFacts("/chk", first_attempt=False)):
        decision = plan_restore([invalid(2, "truncated"), incomplete(1)], facts)

        assert isinstance(decision, Refuse)
        assert decision.reason is RefusalReason.NONE_RESTORABLE
        assert "/chk holds 1 completed checkpoint and none can be restored (checkpoint 2: truncated)" in decision.message
        assert "--fresh" in decision.message
    assert "lose the job's state" in plan_restore([invalid(1)], NOTHING).message  # type: ignore[union-attr]
    assert "/data/out" in plan_restore([invalid(1)], COMMITTED).message  # type: ignore[union-attr]


def test_only_incomplete_checkpoints_start_fresh_and_are_discarded() -> None:
    decision = plan_restore([incomplete(2), incomplete(1)], NOTHING)

    assert decision == StartFresh((discard(2, "no metadata"), discard(1, "no metadata")))


def test_no_checkpoint_and_committed_output_of_an_earlier_run_is_refused() -> None:
    for candidates in ([], [incomplete(1)]):
        decision = plan_restore(candidates, COMMITTED)

        assert isinstance(decision, Refuse)
        assert decision.reason is RefusalReason.EARLIER_OUTPUT
        assert "/chk holds no checkpoint to restore from" in decision.message
        assert "sink 'out' holds 2 committed files in /data/out" in decision.message


def test_a_later_attempt_of_the_run_starts_fresh_beside_its_own_output() -> None:
    facts = RestoreFacts("/chk", committed=(OUTPUT,), first_attempt=False)

    assert plan_restore([incomplete(1)], facts) == StartFresh((discard(1, "no metadata"),))


def test_fresh_discards_every_checkpoint_valid_or_not_without_validating_a_choice() -> None:
    decision = plan_restore([valid(3), invalid(2), incomplete(1)], RestoreFacts("/chk", fresh=True))

    assert decision == StartFresh((discard(3, "--fresh"), discard(2, "--fresh"), discard(1, "--fresh")))


def test_fresh_with_committed_output_of_an_earlier_run_is_refused_and_discards_nothing() -> None:
    decision = plan_restore([valid(3)], RestoreFacts("/chk", committed=(OUTPUT,), fresh=True))

    assert isinstance(decision, Refuse)
    assert decision.reason is RefusalReason.EARLIER_OUTPUT
    assert decision.message.startswith("cannot start from scratch (--fresh)")
    for named in ("sink 'out' holds 2 committed files in /data/out", "move the committed output away",
                  "nothing was discarded", "run without --fresh"):
        assert named in decision.message, (named, decision.message)


def test_a_savepoint_continues_the_output_its_run_committed() -> None:
    for fresh in (False, True):
        facts = RestoreFacts("/chk", committed=(OUTPUT,), fresh=fresh, savepoint="/sp/chk-7")
        assert plan_restore([incomplete(1)], facts) == StartFresh((discard(1, "--fresh" if fresh else "no metadata"),))


def test_a_savepoint_does_not_hide_completed_checkpoints_that_cannot_be_restored() -> None:
    decision = plan_restore([invalid(2)], RestoreFacts("/chk", savepoint="/sp/chk-7"))

    assert isinstance(decision, Refuse) and decision.reason is RefusalReason.NONE_RESTORABLE
    assert "/sp/chk-7" in decision.message


def test_the_plan_reads_no_candidate_older_than_the_restored_one() -> None:
    def lazily() -> Iterator[Valid[str] | Invalid]:
        yield incomplete(4)
        yield valid(3)
        raise AssertionError("candidate 2 was validated although 3 is valid")

    assert plan_restore(lazily(), COMMITTED) == RestoreFrom(CheckpointId(3), "metadata of 3", (discard(4, "no metadata"),))


@pytest.mark.parametrize("facts", [NOTHING, RestoreFacts("/chk", fresh=True)], ids=["resume", "fresh"])
def test_the_plan_refuses_candidates_out_of_order(facts: RestoreFacts) -> None:
    with pytest.raises(ValueError):
        plan_restore([invalid(1), valid(2)], facts)


# ---- the rules as properties ----------------------------------------------------------------------------


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[Valid[str] | Invalid], RestoreFacts]:
    ids = sorted(draw(st.sets(st.integers(1, 30), max_size=6)), reverse=True)
    kinds = [draw(st.sampled_from(["valid", "corrupt", "incomplete"])) for _ in ids]
    candidates: list[Valid[str] | Invalid] = [
        valid(n) if kind == "valid" else invalid(n) if kind == "corrupt" else incomplete(n)
        for n, kind in zip(ids, kinds, strict=True)
    ]
    facts = RestoreFacts(
        "/chk", committed=(OUTPUT,) if draw(st.booleans()) else (), fresh=draw(st.booleans()),
        savepoint="/sp" if draw(st.booleans()) else None, first_attempt=draw(st.booleans()),
    )
    return candidates, facts


@given(situations())
def test_no_decision_ever_writes_committed_output_again(situation: tuple[list[Valid[str] | Invalid], RestoreFacts]) -> None:
    candidates, facts = situation
    decision = plan_restore(candidates, facts)
    completed = [c.checkpoint_id for c in candidates if isinstance(c, Valid) or c.status is CandidateStatus.CORRUPT]
    earlier_output = bool(facts.committed) and facts.first_attempt and facts.savepoint is None
    match decision:
        case RestoreFrom(checkpoint_id=cid, discards=discards):
            assert not facts.fresh
            assert cid == max(c.checkpoint_id for c in candidates if isinstance(c, Valid))
            assert [d.checkpoint_id for d in discards] == [c.checkpoint_id for c in candidates if c.checkpoint_id > cid]
            assert not (facts.committed and any(c > cid for c in completed)), "went back past committed output"
        case StartFresh(discards=discards):
            assert not earlier_output, "a start from scratch beside an earlier run's output"
            assert facts.fresh or not completed, "completed checkpoints silently dropped"
            assert [d.checkpoint_id for d in discards] == [c.checkpoint_id for c in candidates]
        case Refuse(reason=reason, message=message):
            assert message.startswith("cannot ")
            if reason is RefusalReason.EARLIER_OUTPUT:
                assert earlier_output
            else:
                assert not facts.fresh and completed
        case _:
            raise AssertionError(decision)


def test_a_run_without_a_checkpoint_directory_beside_an_earlier_runs_output_is_refused_saying_so() -> None:
    decision = plan_restore([], RestoreFacts("", committed=(OUTPUT,)))

    assert isinstance(decision, Refuse) and decision.reason is RefusalReason.EARLIER_OUTPUT
    assert decision.message.startswith("cannot start from scratch: the run has no checkpoint directory")
