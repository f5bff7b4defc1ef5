from datetime import timedelta

import pytest

from flowstate.time.duration import parse_duration


@pytest.mark.parametrize("given, seconds", [
    (5, 5.0), (0.25, 0.25), ("500ms", 0.5), ("30m", 1800.0), ("1h30m", 5400.0), ("2d", 172800.0),
    ("1.5s", 1.5), ("250us", 0.00025), ("12", 12.0), (timedelta(minutes=2), 120.0), (" 10 s ", 10.0),
])
def test_durations_read_as_seconds(given, seconds):
    assert parse_duration(given) == pytest.approx(seconds)


@pytest.mark.parametrize("given", ["", "ms", "5x", "5 m s", "1h-3m", True, None, [1], float("nan"), "inf"])
def test_unreadable_durations_are_refused_with_the_accepted_forms(given):
    with pytest.raises(ValueError, match="duration|finite"):
        parse_duration(given)


def test_negative_durations_only_where_allowed():
    with pytest.raises(ValueError, match="negative"):
        parse_duration("-5m")
    assert parse_duration("-5m", allow_negative=True) == -300.0
