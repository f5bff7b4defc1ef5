"""The choice of a restore point (``flowstate.checkpoint.restore``): newest valid candidate first,
with every newer candidate that was passed over reported with its reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import Invalid, RestoreFrom, StartFresh, Valid, choose


def valid(n: int) -> Valid[str]:
    return Valid(CheckpointId(n), f"metadata of {n}")


def invalid(n: int, reason: str = "a file failed its checksum") -> Invalid:
    return Invalid(CheckpointId(n), reason)


def test_the_newest_candidate_is_chosen_when_it_is_valid() -> None:
    assert choose([valid(3), valid(2), valid(1)]) == RestoreFrom(CheckpointId(3), "metadata of 3", ())


def test_the_newest_valid_candidate_is_chosen_and_the_newer_invalid_ones_are_reported() -> None:
    candidates = [invalid(5, "metadata missing"), invalid(4, "part-4 truncated"), valid(3), invalid(2), valid(1)]

    assert choose(candidates) == RestoreFrom(
        CheckpointId(3),
        "metadata of 3",
        (invalid(5, "metadata missing"), invalid(4, "part-4 truncated")),
    )


def test_candidates_older_than_the_chosen_one_are_not_validated() -> None:
    def lazily() -> Iterator[Valid[str] | Invalid]:
        yield invalid(4)
        yield valid(3)
        raise AssertionError("candidate 2 was validated although 3 is valid")

    assert choose(lazily()) == RestoreFrom(CheckpointId(3), "metadata of 3", (invalid(4),))


def test_with_no_valid_candidate_the_job_starts_fresh_and_says_why_each_was_refused() -> None:
    candidates = [invalid(2, "metadata missing"), invalid(1, "part-1 truncated")]

    assert choose(candidates) == StartFresh((invalid(2, "metadata missing"), invalid(1, "part-1 truncated")))


def test_with_no_candidate_the_job_starts_fresh() -> None:
    assert choose([]) == StartFresh(())


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
